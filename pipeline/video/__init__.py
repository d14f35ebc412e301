"""Video input: exact-frame file reading (OpenCV for sequential sweeps, decord for random access, PyAV fallback),
live streams with reconnects and health events, clip splitting, and the standard 3D-CNN preprocessing.

    reader = open_video("cam1.mp4", access="sequential")  # validated; VideoError names the file and the reason
    for clip in iter_file_clips(reader, ClipSplitter(16, 16)):
        batch = preprocess(clip.frames)               # (1, 3, 16, 112, 112) float32

    with open_source("rtsp://cam2/stream", on_event=publish_health) as source:
        for clip in ClipSplitter().clips(source):     # clip.key == "rtsp://cam2/stream:0", ...
            ...
"""

from pipeline.video.clips import Clip, ClipAssembler, ClipSplitter, iter_file_clips
from pipeline.video.errors import VideoError
from pipeline.video.events import Frame, Health, StreamEvent
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD, preprocess
from pipeline.video.reader import VideoInfo, VideoReader, open_video
from pipeline.video.scan import BadVideo, ScanResult, scan_videos
from pipeline.video.sources import FileSource, FrameSource, open_source
from pipeline.video.stream import StreamReader

__all__ = [
    "BadVideo",
    "Clip",
    "ClipAssembler",
    "ClipSplitter",
    "FileSource",
    "Frame",
    "FrameSource",
    "Health",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "ScanResult",
    "StreamEvent",
    "StreamReader",
    "VideoError",
    "VideoInfo",
    "VideoReader",
    "iter_file_clips",
    "open_source",
    "open_video",
    "preprocess",
    "scan_videos",
]
