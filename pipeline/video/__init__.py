"""Video input: exact-frame file reading (OpenCV for sequential sweeps, decord for random access, PyAV fallback),
live streams with reconnects and health events, clip splitting, and the standard 3D-CNN preprocessing.

    reader = open_video("cam1.mp4", access="sequential")  # validated; VideoError names the file and the reason
    for clip in iter_file_clips(reader, ClipSplitter(16, 16)):
        batch = preprocess(clip.frames)               # (1, 3, 16, 112, 112) float32

    with open_source("rtsp://cam2/stream", on_event=publish_health) as source:
        for clip in ClipSplitter().clips(source):     # clip.key == "rtsp://cam2/stream:0", ...
            ...
"""

from pipeline.video.clips import Clip, ClipSplitter, iter_file_clips
from pipeline.video.errors import VideoError
from pipeline.video.events import Health, StreamEvent
from pipeline.video.preprocess import preprocess
from pipeline.video.reader import VideoReader, open_video
from pipeline.video.scan import scan_videos
from pipeline.video.sources import open_source

__all__ = [
    "Clip",
    "ClipSplitter",
    "Health",
    "StreamEvent",
    "VideoError",
    "VideoReader",
    "iter_file_clips",
    "open_source",
    "open_video",
    "preprocess",
    "scan_videos",
]
