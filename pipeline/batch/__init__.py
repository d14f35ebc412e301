"""Offline batch scoring of video archives (UCF101 splits, directories, file lists) to JSONL / CSV / summaries."""

from pipeline.batch.score import VideoItem, list_videos, score_archive

__all__ = ["VideoItem", "list_videos", "score_archive"]
