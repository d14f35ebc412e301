"""Synthetic action dataset in the UCF101 layout: real imagery, motion-defined classes, held-out novel classes.

``synthesize(out)`` writes ``OUT/<Class>/v_<Class>_gXX_cYY.avi`` (MPEG-4 Part 2 with the XVID tag, as UCF101 itself)
with ``OUT/ucfTrainTestlist/`` (three splits over 25 groups), the novel classes in the same layout under
``OUT/novel/``, and ``OUT/synth.json`` recording every parameter and every video's `VideoSpec`, so any video can be
rebuilt exactly with `render_video`. Each video's randomness comes from (seed, class, group, clip) alone: the same
video comes out whatever else is generated alongside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from .motions import ALL_CLASSES, SYNTH_CLASSES, SYNTH_NOVEL_CLASSES, sample_spec
from .render import SourceImagery, render_video
from .ucf101 import NUM_GROUPS, DatasetError, video_name, write_annotations

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
MANIFEST = "synth.json"
NOVEL_DIR = "novel"
DEFAULT_VIDEOS_PER_CLASS = 50
DEFAULT_NUM_FRAMES = 48

# Groups in the order videos fill them: one from each split's test block in turn, so that even a few videos per
# class give every split both train and test videos.
_GROUP_ORDER = tuple(block * 7 + offset + 1 for offset in range(7) for block in range(4)
                     if block * 7 + offset + 1 <= NUM_GROUPS)


@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote: the two dataset roots, their classes and video counts, bytes and wall time."""

    root: Path
    novel_root: Path | None
    classes: tuple[str, ...]
    novel_classes: tuple[str, ...]
    num_videos: int
    num_novel_videos: int
    total_bytes: int
    seconds: float

    @property
    def seconds_per_video(self) -> float:
        return self.seconds / max(1, self.num_videos + self.num_novel_videos)


def group_and_clip(index: int) -> tuple[int, int]:
    """UCF101 group (1-25) and clip (1-based) of a class's ``index``-th video."""
    return _GROUP_ORDER[index % NUM_GROUPS], index // NUM_GROUPS + 1


def video_rng(seed: int, class_name: str, group: int, clip: int) -> np.random.Generator:
    """The random source of one video, a function of (seed, class, group, clip) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, ALL_CLASSES.index(class_name), group, clip]))


def synthesize(out: str | Path, *, videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS, seed: int = 0,
               width: int = 320, height: int = 240, fps: float = 25.0, num_frames: int = DEFAULT_NUM_FRAMES,
               classes: Sequence[str] | None = None, novel_classes: Sequence[str] | None = None,
               novel_videos_per_class: int | None = None, actor_scale: float = 1.0, overwrite: bool = False,
               progress: bool = True) -> SynthReport:
    """Write the synthetic dataset to ``out`` (see the module docstring); ``novel_classes=()`` skips ``out/novel``;
    ``actor_scale`` < 1 makes the actors smaller (same paths, backgrounds and nuisances).

    Raises `DatasetError` for bad settings, or when ``out`` already holds files and ``overwrite`` is false.
    """
    started = time.perf_counter()
    classes = tuple(SYNTH_CLASSES if classes is None else classes)
    novel_classes = tuple(SYNTH_NOVEL_CLASSES if novel_classes is None else novel_classes)
    novel_count = videos_per_class if novel_videos_per_class is None else novel_videos_per_class
    _check_settings(classes, novel_classes, videos_per_class, novel_count, seed, width, height, fps, num_frames)
    if not 0 < actor_scale <= 1:
        raise DatasetError(f"actor scale must be in (0, 1] (larger actors would leave the frame), got {actor_scale}")
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DatasetError(f"synthetic dataset output {root} is not empty (pass overwrite to write over it)")

    trees = [(root, classes, videos_per_class)]
    if novel_classes:
        trees.append((root / NOVEL_DIR, novel_classes, novel_count))
    jobs = [(tree, name, *group_and_clip(index)) for tree, names, count in trees
            for name in names for index in range(count)]
    imagery = SourceImagery(height)
    records: dict[Path, list[dict]] = {tree: [] for tree, _, _ in trees}
    total_bytes = 0
    for tree, name, group, clip in tqdm(jobs, desc="synth videos", unit="video", disable=not progress):
        spec = sample_spec(name, video_rng(seed, name, group, clip), width, height, num_frames,
                           actor_scale=actor_scale)
        frames, _ = render_video(spec, imagery)
        relative = video_name(name, group, clip)
        total_bytes += write_video(tree / relative, frames, fps, spec.quality)
        records[tree].append({"path": relative, "group": group, "clip": clip, "spec": spec.to_json()})

    settings = {"seed": seed, "width": width, "height": height, "fps": fps, "num_frames": num_frames,
                "actor_scale": actor_scale}
    for tree, names, count in trees:
        write_annotations(tree, names, [(r["spec"]["class_name"], r["group"], r["clip"]) for r in records[tree]])
        manifest = {"generator": "clipwatch.synth", "generator_version": GENERATOR_VERSION, **settings,
                    "videos_per_class": count, "classes": list(names),
                    "novel": tree != root, "videos": records[tree]}
        if tree == root:
            manifest["novel_classes"] = list(novel_classes)
            manifest["novel_dir"] = NOVEL_DIR if novel_classes else None
        (tree / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

    report = SynthReport(root=root, novel_root=root / NOVEL_DIR if novel_classes else None, classes=classes,
                         novel_classes=novel_classes, num_videos=len(records[root]),
                         num_novel_videos=len(jobs) - len(records[root]), total_bytes=total_bytes,
                         seconds=time.perf_counter() - started)
    log.info("wrote %d + %d novel videos (%.1f MB) to %s in %.1f s (%.3f s/video)", report.num_videos,
             report.num_novel_videos, total_bytes / 1e6, root, report.seconds, report.seconds_per_video)
    return report


def write_world(out: str | Path, classes: Sequence[str], videos_per_class: int,
                make_video: Callable[[str, int, int], tuple[np.ndarray, int, dict]], *, fps: float,
                manifest: dict, overwrite: bool, progress: bool, desc: str) -> SynthReport:
    """Write a world other than the default one in the UCF101 layout: `videos_per_class` videos per class, each
    ``make_video(class, group, clip) -> (frames, quantiser, record)``, with the annotations and `manifest` (plus
    every video's record) as ``<name>.json`` where ``manifest["file"]`` names it."""
    started = time.perf_counter()
    if videos_per_class < 1:
        raise DatasetError("videos per class must be >= 1")
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DatasetError(f"synthetic dataset output {root} is not empty (pass overwrite to write over it)")
    records, total = [], 0
    jobs = [(name, *group_and_clip(index)) for name in classes for index in range(videos_per_class)]
    for name, group, clip in tqdm(jobs, desc=desc, unit="video", disable=not progress):
        frames, quality, record = make_video(name, group, clip)
        total += write_video(root / video_name(name, group, clip), frames, fps, quality)
        records.append({"path": video_name(name, group, clip), "group": group, "clip": clip, "class_name": name,
                        **record})
    write_annotations(root, classes, [(r["class_name"], r["group"], r["clip"]) for r in records])
    body = {**manifest, "fps": fps, "videos_per_class": videos_per_class, "classes": list(classes),
            "videos": records}
    (root / manifest["file"]).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return SynthReport(root=root, novel_root=None, classes=tuple(classes), novel_classes=(), num_videos=len(records),
                       num_novel_videos=0, total_bytes=total, seconds=time.perf_counter() - started)


def write_video(path: Path, frames: np.ndarray, fps: float, quality: int) -> int:
    """Encode (T, H, W, 3) uint8 RGB frames as MPEG-4 Part 2 (XVID tag) AVI at quantiser ``quality`` (2 = best).

    Single-threaded and bit-exact, so equal frames give byte-identical files. Returns the file size in bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    options = {"qmin": str(quality), "qmax": str(quality), "flags": "+bitexact", "g": "12"}
    try:
        with av.open(str(path), mode="w", format="avi", options={"fflags": "+bitexact"}) as container:
            stream = container.add_stream("mpeg4", rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.codec_tag = "XVID"
            stream.thread_count = 1
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except (av.FFmpegError, OSError) as exc:
        raise DatasetError(f"cannot write video {path}: {exc}") from None
    return path.stat().st_size


def _check_settings(classes: tuple[str, ...], novel_classes: tuple[str, ...], videos_per_class: int,
                    novel_count: int, seed: int, width: int, height: int, fps: float, num_frames: int) -> None:
    unknown = [name for name in classes + novel_classes if name not in ALL_CLASSES]
    if unknown:
        raise DatasetError(f"unknown synthetic classes {unknown}; known: {', '.join(ALL_CLASSES)}")
    if not classes:
        raise DatasetError("at least one in-distribution class is needed")
    if len(set(classes + novel_classes)) != len(classes) + len(novel_classes):
        raise DatasetError(f"classes must be distinct and not also novel: {classes} / {novel_classes}")
    if videos_per_class < 1 or novel_count < 1:
        raise DatasetError(f"videos per class must be >= 1 (skip novel classes with novel_classes=()), "
                           f"got {videos_per_class} / {novel_count}")
    if seed < 0:
        raise DatasetError(f"seed must be >= 0, got {seed}")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise DatasetError(f"frame size must be even and at least 16x16, got {width}x{height}")
    if not fps > 0 or num_frames < 2:
        raise DatasetError(f"need fps > 0 and at least 2 frames, got fps={fps}, frames={num_frames}")
