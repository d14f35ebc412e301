"""End-to-end pipeline speed, measured side by side in one run.

1. Throughput: ``clipwatch run`` (its own process, in-process bus, all four stages) over N video files, against
   the bare model forward pass over the same clips at the same batch size (already decoded and preprocessed), and
   against decoding + preprocessing alone: with a small model the decoder, not the model, bounds the pipeline. The bare
   forward and the run alternate for ``--rounds`` rounds (this machine's speed drifts by 10-20 % between minutes);
   the run's rate is given over the whole run and in steady state (after its first tenth of verdicts).
2. Latency: p50 / p95 from the end of a clip (when its last frame was due on its camera's real-time schedule) to
   its verdict.
3. Real time: how many 25-fps 320x240 camera streams (clips back to back) the pipeline keeps up with: streams are
   replayed at real time, in growing numbers, until the p95 latency passes ``--max-latency`` or clips go missing.
4. The same throughput table for a full-width ``r3d-18`` (16x112x112, random weights, its bundle fitted on the
   benchmark files): the regime the 0.9 target is about, where the model and not the decoder is the bottleneck,
   and the number of streams it sustains.

Every throughput table is measured for each ``--precisions`` entry (default fp32 and auto: bf16 + channels-last-3d
on CPUs with AMX or AVX-512-BF16), then the end-to-end ratio of each to fp32; the real-time streams use the last.

    python benchmarks/pipeline.py [--bundle pipeline/assets/bundles/default] [--files 24] [--batch 8] [--rounds 3]
        [--streams 40 80 120 150] [--baseline OTHER_CHECKOUT] [--baseline-bundle BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file would shadow the `pipeline` package it measures: look in the repository root first.
REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPOSITORY)

import numpy as np
import torch
import yaml

from pipeline.cli.fit import model_reference
from pipeline.data import SYNTH_CLASSES
from pipeline.data.motions import sample_spec
from pipeline.data.render import SourceImagery, render_video
from pipeline.data.synth import write_video
from pipeline.demo.run import DEFAULT_BUNDLE
from pipeline.detect import Detector, DetectorBundle, extract_video_features, model_input
from pipeline.models import build_model, default_layers, load_model, save_model
from pipeline.video import ClipSplitter, iter_file_clips
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD

FPS = 25.0


def write_files(folder: Path, count: int, frames: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    imagery = SourceImagery(240)
    paths = []
    for index in range(count):
        name = SYNTH_CLASSES[index % len(SYNTH_CLASSES)]
        video, _ = render_video(sample_spec(name, rng, 320, 240, frames), imagery)
        path = folder / f"cam{index:02d}.avi"
        write_video(path, video, FPS, quality=3)
        paths.append(path)
    return paths


def forward_inputs(prep, files: list[Path], batch: int, stride: int) -> list[torch.Tensor]:
    """Every clip of ``files`` decoded and preprocessed beforehand, in model batches."""
    splitter = ClipSplitter(prep.clip_len, stride, prep.frame_step)
    clips = np.stack([clip.frames for path in files
                      for clip in iter_file_clips(path, splitter, short_side=prep.short_side)])
    return [model_input(clips[i : i + batch], prep) for i in range(0, len(clips), batch)]


def bare_forward(model, inputs: list[torch.Tensor]) -> float:
    """Clips/s of one pass of the model alone over ``inputs``."""
    with torch.inference_mode():
        start = time.perf_counter()
        for x in inputs:
            model(x)
        return sum(len(x) for x in inputs) / (time.perf_counter() - start)


def bare_decode(prep, files: list[Path], batch: int, stride: int) -> float:
    """Clips/s of decoding and preprocessing alone (no model), one thread, as the decoder and classifier stages do
    it: frames scaled to the model's short side as they are decoded, then cropped and normalised."""
    splitter = ClipSplitter(prep.clip_len, stride, prep.frame_step)
    start, count = time.perf_counter(), 0
    for path in files:
        clips = [clip.frames for clip in iter_file_clips(path, splitter, short_side=prep.short_side)]
        for i in range(0, len(clips), batch):
            model_input(np.stack(clips[i : i + batch]), prep)
        count += len(clips)
    return count / (time.perf_counter() - start)


def run_files(bundle: Path, paths: list[Path], out: Path, batch: int, stride: int, pace: float | None,
              precision: str = "fp32", checkout: Path = REPOSITORY) -> list[dict]:
    """``clipwatch run --config`` (``python -m workers run``, this checkout) in its own process, as a user runs it,
    with one source per path (a directory's
    files are read one after another, so simulated cameras that run at the same time need a source each); returns
    the verdicts, whose timestamps time the run (process start-up is not counted). ``checkout``: the source tree
    whose ``workers`` and ``pipeline`` run (``python -m`` looks in its working directory first)."""
    pacing = {"pace": pace} if pace else {}
    config = {
        "sources": [{"id": path.stem, "path": str(path.absolute()), "stride": stride, **pacing} for path in paths],
        "bundle": str(Path(bundle).absolute()),
        "bus": {"url": "memory://", "max_backlog": 64},
        "classifier": {"max_batch": batch, "max_wait_ms": 20, "precision": precision},
        "alerts": {"verdicts_jsonl": str(out / "verdicts.jsonl"), "jsonl": str(out / "alerts.jsonl"),
                   "print": False},
        "ops": {"base_port": 0, "log_level": "ERROR"},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "workers", "run", "--config", str(out / "config.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=checkout)
    if done.returncode != 0:
        raise RuntimeError(f"clipwatch run failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]


def full_width_bundle(folder: Path, files: list[Path], class_names: list[str]) -> Path:
    """A bundle for a full-width r3d-18 at 16x112x112 (UCF101's input), fitted on the benchmark files' clips.

    Its weights are random (seeded): throughput depends on the architecture, not on what it learned, and no
    full-width model can be trained on this machine.
    """
    torch.manual_seed(0)
    preprocessing = {"clip_len": 16, "frame_step": 1, "short_side": 128, "crop": 112, "mean": list(KINETICS_MEAN),
                     "std": list(KINETICS_STD)}
    save_model(build_model("r3d-18", len(class_names)).eval(), folder / "model", architecture="r3d-18", options={},
               num_classes=len(class_names), class_names=class_names, preprocessing=preprocessing)
    model, manifest = load_model(folder / "model")
    layers = default_layers("r3d-18")
    videos = [(path, index % len(class_names)) for index, path in enumerate(files)]
    features = extract_video_features(model, manifest.preprocessing, videos, layers, batch_size=8, progress=False)
    calibration = np.arange(len(features)) % 4 == 0
    bundle = DetectorBundle.fit(features.subset(~calibration), features.subset(calibration),
                                model_ref=model_reference(str(folder / "model")), class_names=class_names,
                                low_level_layers=layers[:-2], progress=False,
                                false_alarm=0.05)  # throughput does not depend on the rate; few calibration clips
    return bundle.save(folder / "bundle")


def e2e_rates(verdicts: list[dict]) -> tuple[float, float]:
    """``(whole run, steady state)`` clips/s of one ``clipwatch run``.

    Whole run: all clips over first clip decoded to last verdict, pipeline fill and drain included. Steady state:
    the verdicts after the first tenth, over the time they took, as a camera feed that runs for hours sees it.
    """
    if len(verdicts) < 2:
        raise RuntimeError(f"clipwatch run gave {len(verdicts)} verdicts: too few to time")
    decoded = min(v["timestamps"]["decoder"] for v in verdicts)
    done = np.sort([v["timestamps"]["density"] for v in verdicts])
    skip = len(done) // 10
    return len(done) / (done[-1] - decoded), (len(done) - 1 - skip) / (done[-1] - done[skip])


def throughput(label: str, bundle_dir: Path, files: list[Path], out: Path, batch: int, rounds: int,
               precision: str = "fp32", baseline: Path | None = None, baseline_bundle: Path | None = None) -> float:
    """Print bare forward, bare decode and end-to-end clips/s of one bundle's model over ``files``.

    The bare forward and ``clipwatch run`` alternate for ``rounds`` rounds, so a machine whose speed drifts (a
    shared host) moves both alike; ratios are per round, and the median is reported with the range. With
    ``baseline`` (another checkout, e.g. ``git worktree add /tmp/before COMMIT``) its ``clipwatch run`` joins
    each round, and this checkout's end-to-end rate is given over the baseline's; ``baseline_bundle`` is the bundle
    it runs (default: the same; e.g. this checkout with a bundle that fuses no evidence, to price the evidence).
    """
    detector = Detector.load(bundle_dir, precision=precision)
    model, manifest = detector.model, detector.manifest
    prep = manifest.preprocessing
    stride = prep.clip_len * prep.frame_step
    inputs = forward_inputs(prep, files, batch, stride)
    n_clips = sum(len(x) for x in inputs)
    bare_forward(model, inputs[:2])
    forward, decode, whole, steady, before = [], [], [], [], []
    for index in range(rounds):
        forward.append(bare_forward(model, inputs))
        decode.append(bare_decode(prep, files, batch, stride))
        verdicts = run_files(bundle_dir, [files[0].parent], out / f"round{index}", batch, stride, pace=None,
                             precision=precision)
        rates = e2e_rates(verdicts)
        whole.append(rates[0])
        steady.append(rates[1])
        if baseline is not None:
            verdicts = run_files(baseline_bundle or bundle_dir, [files[0].parent], out / f"baseline{index}", batch,
                                 stride, pace=None, precision=precision, checkout=baseline)
            before.append(e2e_rates(verdicts)[1])
    forward, decode, whole, steady = np.array(forward), np.array(decode), np.array(whole), np.array(steady)

    def summary(rates: np.ndarray) -> str:
        ratio = rates / forward
        return (f"{np.median(rates):7.1f} clips/s   ratio to the bare forward {np.median(ratio):.2f} "
                f"(rounds {ratio.min():.2f}-{ratio.max():.2f})")

    print(f"throughput of {label} in {detector.precision} over {len(files)} files ({n_clips} clips of {prep.clip_len}x{prep.crop}x{prep.crop}, "
          f"batch {batch}, threads {torch.get_num_threads()}, {rounds} interleaved rounds, medians):")
    print(f"  bare model forward       {np.median(forward):7.1f} clips/s   (rounds {forward.min():.1f}-{forward.max():.1f})")
    print(f"  bare decode + preprocess {np.median(decode):7.1f} clips/s   (rounds {decode.min():.1f}-{decode.max():.1f}; "
          f"320x240 frames, no model, one thread)")
    print(f"  clipwatch run, whole run {summary(whole)}; first clip decoded to last verdict")
    print(f"  clipwatch run, steady    {summary(steady)} (target >= 0.9); after the first tenth of the verdicts")
    print(f"  steady / slowest bare stage {np.median(steady / np.minimum(forward, decode)):.2f}   (1.0: the pipeline "
          f"adds nothing to its bottleneck)")
    if before:
        before = np.array(before)
        print(f"  baseline {baseline} ({baseline_bundle or 'same bundle'}), steady {np.median(before):7.1f} clips/s; this checkout over it "
              f"{np.median(steady / before):.2f}x (rounds {(steady / before).min():.2f}-{(steady / before).max():.2f})")
    return float(np.median(steady))


def compare(label: str, bundle_dir: Path, files: list[Path], out: Path, args: argparse.Namespace) -> float:
    """``throughput`` in every precision of ``args.precisions``, then each one's steady end-to-end rate over fp32's;
    returns the last precision's steady rate."""
    steady = {}
    for precision in args.precisions:
        steady[precision] = throughput(label, bundle_dir, files, out / precision, args.batch, args.rounds, precision,
                                       args.baseline, args.baseline_bundle)
    if "fp32" in steady:
        print("  steady end-to-end over fp32: " + ", ".join(f"{name} {rate / steady['fp32']:.2f}x"
                                                          for name, rate in steady.items() if name != "fp32"))
    return steady[args.precisions[-1]]


def latencies(verdicts: list[dict]) -> np.ndarray:
    """Seconds from when each clip's last frame was due on its camera's schedule to its verdict.

    A stream's schedule starts at the earliest ``decoder time - clip end`` among its clips (its first clip that went
    out on time), so a decoder that falls behind its camera counts as latency instead of hiding in a longer run.
    """
    starts: dict[str, float] = {}
    for v in verdicts:
        start = v["timestamps"]["decoder"] - v["clip_end"]
        starts[v["stream_id"]] = min(start, starts.get(v["stream_id"], start))
    return np.array([v["timestamps"]["density"] - starts[v["stream_id"]] - v["clip_end"] for v in verdicts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--files", type=int, default=24, help="files for the throughput run")
    parser.add_argument("--frames", type=int, default=256, help="frames per file (25 fps)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--streams", type=int, nargs="+", default=[40, 80, 120, 150, 180, 210])
    parser.add_argument("--max-latency", type=float, default=1.0, help="p95 seconds still counted as real time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare-forward / clipwatch-run rounds")
    parser.add_argument("--baseline", type=Path, help="another checkout whose clipwatch run is measured in the same "
                                                       "rounds (git worktree add DIR COMMIT)")
    parser.add_argument("--baseline-bundle", type=Path, help="the bundle the baseline runs (default: --bundle)")
    parser.add_argument("--skip-full-width", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=("fp32", "bf16", "auto"),
                        help="precisions measured side by side (the streams use the last)")
    args = parser.parse_args()

    detector = Detector.load(args.bundle)
    bundle, manifest = detector.bundle, detector.manifest
    prep = manifest.preprocessing
    stride = prep.clip_len * prep.frame_step
    clip_rate = FPS / stride
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_files(tmp / "files", args.files, args.frames)
        compare(f"the bundle's model ({manifest.architecture})", args.bundle, files, tmp / "run", args)
        n_clips = sum(len(ClipSplitter(prep.clip_len, stride, prep.frame_step).plan(args.frames)) for _ in files)
        print(f"real-time streams: 25 fps, clips back to back (stride {stride} frames = {clip_rate:.2f} clips/s each)")
        sustained = 0
        for count in [] if args.skip_streams else args.streams:
            (tmp / "cameras").mkdir(exist_ok=True)
            cameras = [tmp / "cameras" / f"cam{i:03d}.avi" for i in range(count)]
            for i, camera in enumerate(cameras):
                if not camera.exists():
                    camera.symlink_to(files[i % len(files)])
            verdicts = run_files(args.bundle, cameras, tmp / f"live-run{count}", args.batch, stride, pace=1.0,
                                 precision=args.precisions[-1])
            lat = latencies(verdicts)
            expected = count * (n_clips // len(files))
            ok = len(verdicts) == expected and np.percentile(lat, 95) <= args.max_latency
            print(f"  {count:3d} streams: {len(verdicts)}/{expected} clips, latency clip end -> verdict "
                  f"p50 {np.percentile(lat, 50):.3f} s, p95 {np.percentile(lat, 95):.3f} s  "
                  f"{'real time' if ok else 'falls behind'}", flush=True)
            if not ok:
                break
            sustained = count
        if not args.skip_streams:
            print(f"  sustained: {sustained} streams with the bundle's model in {args.precisions[-1]} (target >= 150)")
        if not args.skip_full_width:
            few = files[: max(len(bundle.class_names), len(files) // 3)]
            full_dir = full_width_bundle(tmp / "full", few, list(bundle.class_names))
            (tmp / "full-files").mkdir()
            for path in few:
                (tmp / "full-files" / path.name).symlink_to(path)
            e2e = compare("a full-width r3d-18 (random weights)", full_dir, sorted((tmp / "full-files").iterdir()),
                          tmp / "full-run", args)
            print(f"  -> sustains at most {e2e / (FPS / 16):.1f} streams of 25 fps (16-frame clips back to back)")


if __name__ == "__main__":
    main()
