"""Datasets: the official UCF101 layout and a synthetic motion-defined action dataset written in that layout."""

from .motions import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES
from .synth import SynthReport, synthesize
from .ucf101 import UCF101, DatasetError, VideoSample, labelled_videos, write_annotations

__all__ = [
    "UCF101", "VideoSample", "DatasetError", "labelled_videos", "write_annotations",
    "synthesize", "SynthReport", "SYNTH_CLASSES", "SYNTH_NOVEL_CLASSES",
]
