"""Offline batch scoring of a video archive: every clip's prediction, scores, p-value and verdict.

Results go to ``scores.jsonl`` (one record per clip) as each video finishes, so an interrupted run resumes
where it stopped: videos that already have records are skipped, and a torn last line is cut off. At the end
``scores.csv`` and ``summary.json`` / ``summary.md`` (counts per verdict; accuracy and the in-distribution
flag rate when labels are known) are written from the JSONL.

``bundle.sha256`` names the bundle the records come from: resuming with another bundle is refused (its records
would be mixed with the old ones) unless ``overwrite`` replaces the folder's score files. Videos of any resolutions
are batched together (clips are preprocessed per frame size); an input that cannot be scored (unreadable, shorter
than one clip, frames too small or too extreme to resize) is named with its reason and counted in the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from pipeline.data import UCF101
from pipeline.data.ucf101 import DatasetError
from pipeline.detect import Detector
from pipeline.detect.bundle import bundle_digest
from pipeline.detect.features import model_input_problem
from pipeline.errors import ClipwatchError
from pipeline.video import ClipSplitter, VideoError, iter_file_clips, open_video, scan_videos
from pipeline.video.preprocess import MIN_FRAME_SIDE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
RECORDS, TABLE, SUMMARY_JSON, SUMMARY_MD = "scores.jsonl", "scores.csv", "summary.json", "summary.md"
BUNDLE_DIGEST = "bundle.sha256"
"""SHA-256 of the bundle (`bundle_digest`) that wrote the folder's records, then its path, on one line."""
OUTPUTS = (RECORDS, TABLE, SUMMARY_JSON, SUMMARY_MD, BUNDLE_DIGEST)
"""Every file scoring writes; ``overwrite`` removes these and nothing else."""


@dataclass(frozen=True)
class VideoItem:
    path: Path
    label: int | None = None


def list_videos(data: str | Path, split: str | None = None) -> tuple[list[VideoItem], list[str] | None, list]:
    """Videos to score: a UCF101 root with ``split`` like ``test1``/``train2`` (``1``: ``test1``), a directory, or a
    text file list.

    Returns ``(videos, class names or None, [(path, reason) skipped while scanning])``.
    """
    data = Path(data)
    if split:
        split = f"test{split}" if str(split).isdigit() else str(split)  # "2" is the test list of split 2, as elsewhere
        subset, number = split.rstrip("0123456789"), split[len(split.rstrip("0123456789")):]
        if subset not in ("train", "test") or number not in ("1", "2", "3"):
            raise DatasetError(f"split must be train1..3 or test1..3, got {split!r}")
        dataset = UCF101(data, split=int(number), subset=subset, missing="skip")
        skipped = [(str(path), "listed but missing") for path in dataset.skipped]
        return [VideoItem(s.path, s.label) for s in dataset.samples], list(dataset.classes), skipped
    if data.is_file():
        lines = [line.strip() for line in data.read_text().splitlines() if line.strip()]
        return [VideoItem((data.parent / line).resolve() if not Path(line).is_absolute() else Path(line))
                for line in lines], None, []
    if data.is_dir():
        scan = scan_videos(data)
        return [VideoItem(Path(p)) for p in scan.paths], None, [(str(b.path), b.reason) for b in scan.bad]
    raise DatasetError(f"{data}: no such dataset, directory or file list")


def _done_videos(path: Path) -> set[str]:
    """Videos whose every clip is in ``scores.jsonl`` (each record names its video's ``clips_in_video``).

    An interrupted run can only have left its last video's block short or torn (a cut line, NUL padding): such a
    tail is truncated away and the video is scored again. Records of older versions, without the count, are kept.
    """
    if not path.exists():
        return set()
    raw = path.read_bytes()
    lines, records = raw.splitlines(keepends=True), []
    for line in lines:
        try:
            record = json.loads(line) if line.endswith(b"\n") and line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if line.strip() and record is None:
            break  # the torn last line
        records.append(record)
    videos = [r["video"] if r else None for r in records]
    keep = len(records)
    last = next((r for r in reversed(records) if r), None)
    if last is not None:
        block = [r for r in records if r and r["video"] == last["video"]]
        if "clips_in_video" in last and len(block) < last["clips_in_video"]:
            while keep and videos[keep - 1] in (last["video"], None):
                keep -= 1
    size = sum(len(line) for line in lines[:keep])
    if size != len(raw):
        with open(path, "r+b") as handle:
            handle.truncate(size)
    return {video for video in videos[:keep] if video is not None}


def claim_output(out: Path, bundle_dir: str | Path, *, overwrite: bool = False) -> str:
    """Check that ``out`` holds no records of another bundle, record this bundle's digest there, return it.

    ValueError (one line) if it does, or if it holds records of an unknown bundle (written before digests were
    recorded), unless ``overwrite``: then the folder's score files (`OUTPUTS`) are removed, and nothing else.
    """
    digest = bundle_digest(bundle_dir)
    stamp = out / BUNDLE_DIGEST
    if stamp.is_file():
        previous, _, previous_path = stamp.read_text().strip().partition(" ")
    else:
        previous, previous_path = "", ""
    records = out / RECORDS
    stale = previous != digest if previous else records.is_file() and records.stat().st_size > 0
    if stale and not overwrite:
        what = f"bundle {previous[:12]}… ({previous_path})" if previous else "an unrecorded bundle"
        raise ClipwatchError(f"{out}: holds scores from {what}, not from {bundle_dir} ({digest[:12]}…); choose a new "
                         f"--out, or pass --overwrite to replace the score files there ({', '.join(OUTPUTS)})")
    if stale:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{digest} {bundle_dir}\n")
    return digest


def score_archive(bundle_dir: str | Path, videos: Sequence[VideoItem], out: str | Path, *,
                  class_names: list[str] | None = None, batch_size: int = 16, progress: bool = True,
                  skipped: Sequence[tuple[str, str]] = (), overwrite: bool = False,
                  device: str | torch.device = "cpu", precision: str | None = None) -> dict:
    """Score every clip of ``videos`` with the bundle; resumable; returns the summary.

    ``skipped`` are inputs already found unusable (``(path, reason)``, e.g. from `list_videos`): printed and
    counted with the ones found here. ``overwrite`` replaces the scores of another bundle (see `claim_output`).
    The model runs on ``device`` at ``precision`` (see `Detector.load`); the densities on the CPU.
    """
    out = Path(out)
    detector = Detector.load(bundle_dir, device=device, precision=precision)
    if class_names is not None and list(class_names) != detector.class_names:
        raise DatasetError(f"dataset classes {class_names} differ from the bundle's {detector.class_names}")
    digest = claim_output(out, bundle_dir, overwrite=overwrite)
    records_path = out / RECORDS
    done = _done_videos(records_path)
    todo = [v for v in videos if str(v.path) not in done]
    log.info("%d videos, %d already scored", len(videos), len(videos) - len(todo))
    errors: list[tuple[str, str]] = list(skipped)
    started = time.perf_counter()
    with open(records_path, "a", encoding="utf-8") as sink:
        for _video, records in tqdm(_score_videos(detector, todo, batch_size, errors),
                                   total=len(todo), desc="scoring", unit="video", disable=not progress):
            sink.write("".join(json.dumps({**r, "clips_in_video": len(records)}) + "\n" for r in records))
            sink.flush()
            os.fsync(sink.fileno())
    for path, reason in errors:
        print(f"skipped {path}: {reason}")
    summary = summarise(records_path, detector.alpha, errors, time.perf_counter() - started)
    summary["bundle_sha256"] = digest
    write_table(records_path, out / TABLE)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out / SUMMARY_MD).write_text(summary_markdown(summary))
    return summary


def _clips(todo: Sequence[VideoItem], splitter: ClipSplitter, prep,
           errors: list) -> Iterator[tuple[int, object, int]]:
    """``(video index, clip, clips in that video so far)``; ``clip`` is None once a video is exhausted.

    A video that cannot give one usable clip is added to ``errors`` with its reason before any frame is decoded.
    """
    for index, video in enumerate(todo):
        count = 0
        try:
            with open_video(video.path, access="sequential", min_side=MIN_FRAME_SIDE) as reader:
                problem = _unusable(reader, splitter, prep)
                if problem:
                    errors.append((str(video.path), problem))
                else:
                    for clip in iter_file_clips(reader, splitter, short_side=prep.short_side):
                        count += 1
                        yield index, clip, count
        except VideoError as exc:
            errors.append((str(video.path), exc.reason))
        yield index, None, count


def _unusable(reader, splitter: ClipSplitter, prep) -> str | None:
    """Why a video gives no clip the model can take (too short, frames too extreme to resize), or None."""
    if not splitter.plan(reader.num_frames):
        return f"{reader.num_frames} frames, shorter than one clip ({splitter.span} frames)"
    return model_input_problem((prep.clip_len, reader.height, reader.width, 3), prep)


def _score_videos(detector: Detector, todo, batch_size, errors) -> Iterator[tuple[VideoItem, list[dict]]]:
    """Batches clips across videos through the model; yields each video's records once all its clips are scored."""
    prep = detector.manifest.preprocessing
    splitter = ClipSplitter(prep.clip_len, prep.clip_len, prep.frame_step)
    pending: dict[int, list[dict]] = {}
    finished: dict[int, int] = {}
    batch: list[tuple[int, object]] = []

    def flush() -> Iterator[tuple[VideoItem, list[dict]]]:
        if batch:
            pending_batch = list(batch)
            batch.clear()
            for (index, _), record in zip(pending_batch, _score_batch(detector, pending_batch, todo), strict=True):
                pending.setdefault(index, []).append(record)
        for index in [i for i, total in finished.items() if len(pending.get(i, [])) == total]:
            del finished[index]
            records = pending.pop(index, [])
            if records:
                yield todo[index], records

    for index, clip, count in _clips(todo, splitter, prep, errors):
        if clip is None:
            finished[index] = count
        else:
            batch.append((index, clip))
        if len(batch) >= batch_size or (clip is None and not batch):
            yield from flush()
    yield from flush()


def _score_batch(detector: Detector, batch, todo) -> list[dict]:
    features, scores = detector.score_clips([clip.frames for _, clip in batch])
    softmax = features.softmax
    records = []
    for i, (index, clip) in enumerate(batch):
        video = todo[index]
        prediction = int(np.argmax(features.logits[i]))
        records.append({
            "video": str(video.path), "clip_key": clip.key, "seq": clip.seq, "first_frame": clip.first_frame,
            "last_frame": clip.last_frame, "start_s": float(clip.pts[0]), "end_s": float(clip.pts[-1]),
            "label": video.label, "prediction": prediction, "class_name": detector.class_names[prediction],
            "softmax": float(softmax[i].max()), "scores": {k: float(v[i]) for k, v in scores.loglik.items()},
            "fused": float(scores.fused[i]), "p_value": float(scores.p_value[i]), "verdict": scores.verdicts[i],
            "reasons": scores.reasons[i],
        })
    return records


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(records_path: Path, alpha: float, errors, seconds: float) -> dict:
    """Counts per verdict of the records (accuracy and flag rate when labelled); ``alpha``: the false-alarm rate."""
    records = _read_records(records_path)
    verdicts = [r["verdict"] for r in records]
    summary = {
        "clips": len(records), "videos": len({r["video"] for r in records}),
        "verdicts": {v: verdicts.count(v) for v in ("normal", "novel", "adversarial")},
        "skipped": [{"path": p, "reason": r} for p, r in errors], "seconds_this_run": round(seconds, 1),
        "requested_false_alarm": alpha,
    }
    labelled = [r for r in records if r["label"] is not None]
    if labelled:
        summary["accuracy"] = float(np.mean([r["prediction"] == r["label"] for r in labelled]))
        summary["flag_rate_labelled"] = float(np.mean([r["verdict"] != "normal" for r in labelled]))
    return summary


def write_table(records_path: Path, table_path: Path) -> None:
    records = _read_records(records_path)
    score_keys = sorted({k for r in records for k in r["scores"]})
    columns = ["video", "clip_key", "seq", "first_frame", "last_frame", "start_s", "end_s", "label", "prediction",
               "class_name", "softmax", "fused", "p_value", "verdict", "reasons"]
    with open(table_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + score_keys)
        for r in records:
            writer.writerow([("; ".join(r[c]) if c == "reasons" else r[c]) for c in columns]
                            + [r["scores"].get(k) for k in score_keys])


def summary_markdown(summary: dict) -> str:
    lines = ["# clipwatch batch scoring", "", f"{summary['clips']} clips from {summary['videos']} videos", "",
             "| verdict | clips |", "|---|---|"]
    lines += [f"| {v} | {n} |" for v, n in summary["verdicts"].items()]
    if "accuracy" in summary:
        lines += ["", f"Accuracy on labelled clips: {summary['accuracy']:.3f}; flagged: "
                      f"{summary['flag_rate_labelled']:.3f} (requested false-alarm rate "
                      f"{summary['requested_false_alarm']})"]
    if summary["skipped"]:
        lines += ["", "Skipped:"] + [f"- {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines) + "\n"
