"""`scan_videos`: find the usable video files under a directory, and say why each of the others is not usable."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.video.errors import VideoError, error_reason
from pipeline.video.reader import VideoInfo, VideoReader

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts",
                              ".m2ts", ".flv", ".wmv", ".3gp", ".ogv"})


@dataclass(frozen=True)
class BadVideo:
    """A file that looked like a video but cannot be used, with the one-line reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ScanResult:
    """The good videos (validated, with their properties) and the skipped files, each in path order."""

    good: list[VideoInfo] = field(default_factory=list)
    bad: list[BadVideo] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [info.path for info in self.good]

    def report(self) -> str:
        """One line per skipped file, after a count line."""
        lines = [f"{len(self.good)} usable videos, {len(self.bad)} skipped"]
        lines += [f"skipped {bad}" for bad in self.bad]
        return "\n".join(lines)


def find_video_files(directory: str | os.PathLike, *, recursive: bool = True,
                     extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Files under `directory` whose suffix (any case) is a video extension, sorted; hidden files are skipped."""
    root = Path(directory)
    if not root.is_dir():
        raise VideoError(directory, "not a directory")
    wanted = {suffix.lower() for suffix in extensions}
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(path for path in candidates
                  if path.suffix.lower() in wanted and not path.name.startswith(".") and not path.is_dir())


def scan_videos(directory: str | os.PathLike, *, recursive: bool = True, extensions: Iterable[str] = VIDEO_EXTENSIONS,
                strict: bool = True, min_side: int = 1, progress: bool | None = None) -> ScanResult:
    """Open and validate every video file under `directory` (see VideoReader), skipping the unusable ones.

    Each skipped file is logged as a warning and listed in `ScanResult.bad` with its one-line reason (empty, not a
    video, truncated, corrupt, too small, unreadable...). `progress` shows a tqdm bar (None: only on a terminal).
    """
    result = ScanResult()
    files = find_video_files(directory, recursive=recursive, extensions=extensions)
    for path in tqdm(files, desc="scanning videos", unit="file", disable=None if progress is None else not progress):
        try:
            with VideoReader(path, num_threads=1, strict=strict, min_side=min_side) as reader:
                result.good.append(reader.info)
        except VideoError as error:
            result.bad.append(BadVideo(str(path), error.reason))
        except (OSError, RuntimeError) as error:
            result.bad.append(BadVideo(str(path), f"unreadable ({error_reason(error)})"))
        else:
            continue
        logger.warning("skipping %s", result.bad[-1])
    return result
