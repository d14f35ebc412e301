"""The official UCF101 layout: ``<root>/<Class>/v_<Class>_gXX_cYY.avi`` plus ``ucfTrainTestlist/``.

``ucfTrainTestlist/`` holds ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based), ``trainlist0{1,2,3}.txt``
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and ``testlist0{1,2,3}.txt`` (path only). The same module writes
these lists for generated datasets, so reading and writing share one definition of the format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ClipwatchError

log = logging.getLogger(__name__)

ANNOTATION_DIR = "ucfTrainTestlist"
SPLITS = (1, 2, 3)
NUM_GROUPS = 25
GROUPS_PER_TEST_SPLIT = 7
_VIDEO_NAME = re.compile(r"^v_(?P<cls>[A-Za-z0-9]+)_g(?P<group>\d+)_c(?P<clip>\d+)\.avi$")


class DatasetError(ClipwatchError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoSample:
    """One listed video: its file, 0-based label, class name, and UCF101 group (actor/scene) and clip numbers."""

    path: Path
    label: int
    class_name: str
    group: int
    clip: int


def split_test_groups(split: int) -> range:
    """The groups that split ``split`` (1-3) tests on: 7(k-1)+1 .. 7k, as in UCF101; all other groups train."""
    if split not in SPLITS:
        raise DatasetError(f"UCF101 split must be one of {SPLITS}, got {split!r}")
    return range(GROUPS_PER_TEST_SPLIT * (split - 1) + 1, GROUPS_PER_TEST_SPLIT * split + 1)


def video_name(class_name: str, group: int, clip: int) -> str:
    """The relative path ``<Class>/v_<Class>_gXX_cYY.avi`` of a video."""
    return f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def find_annotations(root: Path, annotations: Path | None = None) -> Path:
    """The ``ucfTrainTestlist`` folder: ``annotations`` if given, else ``<root>/ucfTrainTestlist`` or its sibling."""
    if annotations is not None:
        candidates = [Path(annotations)]
    else:
        candidates = [root / ANNOTATION_DIR, root.parent / ANNOTATION_DIR]
    for candidate in candidates:
        if (candidate / "classInd.txt").is_file():
            return candidate
    tried = " or ".join(str(c / "classInd.txt") for c in candidates)
    raise DatasetError(f"UCF101 annotations not found: no {tried}")


def read_class_index(path: Path) -> list[str]:
    """Class names ordered by their 1-based index in ``classInd.txt`` (indices must be 1..N, each once)."""
    by_index: dict[int, str] = {}
    for number, fields in _lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}:{number}: expected '<index> <ClassName>', got {' '.join(fields)!r}")
        index, name = int(fields[0]), fields[1]
        if index in by_index or name in by_index.values():
            raise DatasetError(f"{path}:{number}: duplicate class entry {' '.join(fields)!r}")
        by_index[index] = name
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{path}: class indices must run 1..{len(by_index)}, got {sorted(by_index)}")
    if not by_index:
        raise DatasetError(f"{path}: no classes listed")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


class UCF101:
    """Samples of one split/subset of a dataset in the official UCF101 layout.

    ``missing="error"`` raises on a listed video that does not exist; ``missing="skip"`` leaves it out, logs a
    warning and records its path in ``skipped``.
    """

    def __init__(self, root: str | Path, split: int = 1, subset: Literal["train", "test"] = "train", *,
                 annotations: str | Path | None = None, missing: Literal["error", "skip"] = "error") -> None:
        if subset not in ("train", "test"):
            raise DatasetError(f"UCF101 subset must be 'train' or 'test', got {subset!r}")
        if missing not in ("error", "skip"):
            raise DatasetError(f"missing must be 'error' or 'skip', got {missing!r}")
        split_test_groups(split)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"UCF101 root {self.root} is not a directory")
        self.split, self.subset = split, subset
        self.annotations = find_annotations(self.root, None if annotations is None else Path(annotations))
        self.classes = read_class_index(self.annotations / "classInd.txt")
        self.class_to_label = {name: label for label, name in enumerate(self.classes)}
        self.skipped: list[Path] = []
        list_path = self.annotations / f"{subset}list{split:02d}.txt"
        self.samples = self._read_list(list_path, with_label=subset == "train", missing=missing)
        if self.skipped:
            log.warning("%s: skipped %d listed videos that do not exist under %s (first: %s)",
                        list_path, len(self.skipped), self.root, self.skipped[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> VideoSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[VideoSample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (f"UCF101(root={str(self.root)!r}, split={self.split}, subset={self.subset!r}, "
                f"classes={self.num_classes}, samples={len(self)})")

    def _read_list(self, list_path: Path, *, with_label: bool, missing: str) -> list[VideoSample]:
        if not list_path.is_file():
            raise DatasetError(f"UCF101 list file {list_path} does not exist")
        samples = []
        for number, fields in _lines(list_path):
            where = f"{list_path}:{number}"
            if len(fields) != (2 if with_label else 1):
                expected = "'<Class>/<video>.avi <label>'" if with_label else "'<Class>/<video>.avi'"
                raise DatasetError(f"{where}: expected {expected}, got {' '.join(fields)!r}")
            sample = self._parse_entry(fields[0], where)
            if with_label:
                if not fields[1].isdigit():
                    raise DatasetError(f"{where}: label {fields[1]!r} is not a positive integer")
                if int(fields[1]) - 1 != sample.label:
                    raise DatasetError(f"{where}: label {fields[1]} does not match class {sample.class_name!r}, "
                                       f"which is {sample.label + 1} in classInd.txt")
            if not sample.path.is_file():
                if missing == "error":
                    raise DatasetError(f"{where}: listed video {sample.path} does not exist")
                self.skipped.append(sample.path)
                continue
            samples.append(sample)
        return samples

    def _parse_entry(self, relative: str, where: str) -> VideoSample:
        parts = relative.replace("\\", "/").split("/")
        match = _VIDEO_NAME.match(parts[-1])
        if len(parts) != 2 or match is None:
            raise DatasetError(f"{where}: {relative!r} is not of the form '<Class>/v_<Class>_gXX_cYY.avi'")
        class_name = parts[0]
        if class_name not in self.class_to_label:
            raise DatasetError(f"{where}: class {class_name!r} is not in classInd.txt")
        # Official UCF101 spells some file names in another case than the folder (HandStandPushups).
        if match["cls"].lower() != class_name.lower():
            raise DatasetError(f"{where}: file {parts[1]!r} does not belong to class folder {class_name!r}")
        return VideoSample(path=self.root / parts[0] / parts[1], label=self.class_to_label[class_name],
                           class_name=class_name, group=int(match["group"]), clip=int(match["clip"]))


def labelled_videos(root: str | Path, split: int = 1,
                    subsets: Sequence[Literal["train", "test"]] = ("train", "test")) -> list[tuple[Path, int]]:
    """``(path, label)`` of the listed videos of ``subsets``, in list order, each once; missing files skipped."""
    seen, videos = set(), []
    for subset in subsets:
        for sample in UCF101(root, split=split, subset=subset, missing="skip").samples:
            if sample.path not in seen:
                seen.add(sample.path)
                videos.append((sample.path, sample.label))
    return videos


def write_annotations(root: Path, classes: Sequence[str], videos: Iterable[tuple[str, int, int]]) -> Path:
    """Write ``<root>/ucfTrainTestlist`` for videos given as ``(class_name, group, clip)``; returns the folder.

    Splits follow UCF101: split k tests on groups 7(k-1)+1..7k and trains on the rest.
    """
    label = {name: index + 1 for index, name in enumerate(classes)}
    ordered = sorted(videos, key=lambda v: (label[v[0]], v[1], v[2]))
    folder = Path(root) / ANNOTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "classInd.txt", (f"{index} {name}" for name, index in label.items()))
    for split in SPLITS:
        tested = split_test_groups(split)
        _write_lines(folder / f"trainlist{split:02d}.txt",
                     (f"{video_name(c, g, k)} {label[c]}" for c, g, k in ordered if g not in tested))
        _write_lines(folder / f"testlist{split:02d}.txt",
                     (video_name(c, g, k) for c, g, k in ordered if g in tested))
    return folder


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-empty lines of a list file as ``(line number, whitespace-split fields)``; CRLF files are fine."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.split()


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
