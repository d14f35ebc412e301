"""Per-camera normal models on simulated cameras whose normal differs from the training set's.

Each camera (`pipeline.data.cameras`) has a fixed scene and three usual activities among the known classes. Its
normal model (`pipeline.detect.camera.CameraNormal`, default settings) learns from its warm-up clips; then its usual
test clips (negatives), known classes it never shows, novel classes and tampered copies of its usual clips are
scored by the bundle alone, by the camera model alone (and each of its views) and by both combined as the density
step combines them (weighted Bonferroni, half of the false-alarm rate each). The table gives AUROC against the usual
test clips and the share flagged at the false-alarm rate; the `usual` row gives the false alarms. Seeds 100 and 101
were used to look at the calibration, 200 and 300 are the held-out ones reported in `pipeline/assets/README.md`;
report a new seed's numbers beside them. Memory holds one camera's clips at a time (about 2 GB at the defaults).

    .venv/bin/python benchmarks/camera_normal.py --seed 200 [--cameras 8] [--bundle pipeline/assets/bundles/default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPOSITORY)  # run as a script, this file's folder would shadow the `pipeline` package

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.cameras import camera_scenario
from pipeline.demo.run import DEFAULT_BUNDLE
from pipeline.detect import Detector
from pipeline.detect.camera import CameraNormal, combined_p_value, scene_statistics
from pipeline.detect.features import model_inputs
from pipeline.metrics import ood_metrics

COLUMNS = {"bundle": "bundle", "camera": "camera", "scene": "scene view", "activity": "activity view",
           "combined": "combined"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=128)
    parser.add_argument("--test", type=int, default=40, help="clips per test set and camera")
    parser.add_argument("--size", type=int, default=160, help="frame width (height 3/4 of it)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--share", type=float, default=0.5, help="the camera model's share of the rate")
    args = parser.parse_args()

    started = time.time()
    detector = Detector.load(args.bundle)
    preprocessing = detector.manifest.preprocessing
    frames = preprocessing.clip_len * preprocessing.frame_step
    total = args.cameras * (args.warmup + 3 * args.test)
    activity_layer = detector.bundle.layers[-1]
    results: dict[str, dict[str, list[np.ndarray]]] = {}
    bar = tqdm(total=total, desc="rendering clips", unit="clip")
    for camera in camera_scenario(args.seed, cameras=args.cameras, warmup=args.warmup, test=args.test,
                                  frames=frames, width=args.size, height=args.size * 3 // 4, progress=bar.update):
        views, bundle_p = {}, {}
        for name, clips in camera.sets.items():
            clips = [clip[::preprocessing.frame_step] for clip in clips]
            features, scores = detector.score_clips(clips, batch_size=32)
            views[name] = {"scene": scene_statistics(model_inputs(clips, preprocessing), preprocessing.mean,
                                                     preprocessing.std),
                           "activity": features.layers[activity_layer]}
            bundle_p[name] = np.asarray(scores.p_value)
        model = CameraNormal(warmup=args.warmup).partial_fit(views["warmup"])
        for name in camera.sets:
            if name == "warmup":
                continue
            p = model.p_values(views[name])
            row = {"bundle": bundle_p[name], "camera": p["camera"], "scene": p["scene"], "activity": p["activity"],
                   "combined": combined_p_value(bundle_p[name], p["camera"], args.share)}
            for key, values in row.items():
                results.setdefault(name, {}).setdefault(key, []).append(values)
    bar.close()

    def joined(name: str, key: str) -> np.ndarray:
        return np.concatenate(results[name][key])

    print(f"\nseed {args.seed}: {args.cameras} cameras, warm-up {args.warmup} clips, {args.test} clips per set and "
          f"camera, {args.size}x{args.size * 3 // 4}, bundle {args.bundle}, alpha {args.alpha}, camera share "
          f"{args.share}; {time.time() - started:.0f} s")
    print("AUROC against the usual test clips / share flagged at alpha (usual row: false alarms)\n")
    print("| set | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in results:
        cells = []
        for key in COLUMNS:
            negatives, positives = joined("usual", key), joined(name, key)
            if name == "usual":
                cells.append(f"{np.mean(negatives <= args.alpha):.3f}")
                continue
            # a p-value is higher = more normal, as the metrics' in-distribution scores
            auroc = ood_metrics(np.log(negatives + 1e-300), np.log(positives + 1e-300))["auroc"]
            cells.append(f"{auroc:.3f} / {np.mean(positives <= args.alpha):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
