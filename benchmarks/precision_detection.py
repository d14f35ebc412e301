"""Does bf16 inference change what the detector finds? The same clips scored by the same bundle in fp32 and bf16.

Clean test clips, novel-class clips, clips framed with the shipped universal frame and FGSM clips (made once, in
fp32) are scored twice by the bundle's model, once per precision; the table gives every detection row's AUROC in
each precision (every (layer, density) of the bundle, fused, and the output-space baselines), the false alarms at
the bundle's rate, the verdicts that differ and both forward speeds. A dataset the bundle never saw belongs here
(`clipwatch synth DATA --seed 7`).

    .venv/bin/python benchmarks/precision_detection.py DATA [--bundle pipeline/assets/bundles/default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPOSITORY)  # run as a script, this file's folder would shadow the `pipeline` package

import numpy as np
import torch
from scipy.special import logsumexp

from pipeline.attacks import AdversarialFrame, Normalize, fgsm, from_uint8, to_uint8
from pipeline.data import UCF101
from pipeline.demo.run import DEFAULT_BUNDLE
from pipeline.detect import Detector, load_clips
from pipeline.metrics import ood_metrics

FRAME = REPOSITORY / "pipeline" / "assets" / "frames" / "default"


def clip_sets(detector: Detector, data: Path, batch: int) -> dict[str, np.ndarray]:
    prep = detector.manifest.preprocessing
    test = [(s.path, s.label) for s in UCF101(data, split=1, subset="test").samples]
    clips, labels, _, _ = load_clips(test, prep, progress=False)
    sets = {"clean": clips}
    if (data / "novel").is_dir():
        novel = [(s.path, 0) for subset in ("train", "test") for s in UCF101(data / "novel", split=1, subset=subset).samples]
        sets["novel"] = load_clips(novel, prep, progress=False)[0]
    sets["framing"] = to_uint8(AdversarialFrame.load(FRAME).apply(from_uint8(clips)))
    normalize = Normalize.from_preprocessing(prep)
    sets["fgsm"] = to_uint8(torch.cat([fgsm(detector.model, from_uint8(clips[i:i + batch]),
                                            torch.as_tensor(labels[i:i + batch]), normalize)
                                       for i in range(0, len(clips), batch)]))
    return sets


def score(detector: Detector, sets: dict[str, np.ndarray], batch: int) -> tuple[dict, float]:
    """``{set: {row: scores}}`` plus verdicts, and the forward pass's clips/s over all sets."""
    out, started, count = {}, time.perf_counter(), 0
    for name, clips in sets.items():
        features, scores = detector.score_clips(clips, batch_size=batch)
        count += len(clips)
        logits = features.logits.astype(np.float64)
        rows = {**scores.loglik, "fused": scores.fused, "msp": features.softmax.max(axis=1),
                "energy": logsumexp(logits, axis=1), "max_logit": logits.max(axis=1)}
        out[name] = {"rows": rows, "verdicts": np.array(scores.verdicts)}
    return out, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    reference = Detector.load(args.bundle, precision="fp32")
    sets = clip_sets(reference, args.data, args.batch)
    results = {"fp32": score(reference, sets, args.batch)}
    results["bf16"] = score(Detector.load(args.bundle, precision="bf16"), sets, args.batch)
    (fp32, fp32_rate), (bf16, bf16_rate) = results["fp32"], results["bf16"]
    print(f"{', '.join(f'{n} {len(c)}' for n, c in sets.items())} clips; forward + scoring: fp32 {fp32_rate:.1f} "
          f"clips/s, bf16 {bf16_rate:.1f} clips/s ({bf16_rate / fp32_rate:.2f}x)")
    print(f"{'OOD set':<9}{'row':<18}{'AUROC fp32':>11}{'AUROC bf16':>11}{'diff':>9}")
    worst = 0.0
    for ood in (name for name in sets if name != "clean"):
        for row in fp32["clean"]["rows"]:
            a = ood_metrics(fp32["clean"]["rows"][row], fp32[ood]["rows"][row])["auroc"]
            b = ood_metrics(bf16["clean"]["rows"][row], bf16[ood]["rows"][row])["auroc"]
            worst = max(worst, abs(a - b))
            print(f"{ood:<9}{row:<18}{a:>11.4f}{b:>11.4f}{b - a:>+9.4f}")
    for name in sets:
        flagged = [float(np.mean(r[name]["verdicts"] != "normal")) for r in (fp32, bf16)]
        changed = int(np.sum(fp32[name]["verdicts"] != bf16[name]["verdicts"]))
        print(f"{name:<9} flagged fp32 {flagged[0]:.4f}  bf16 {flagged[1]:.4f}  verdicts changed {changed}/{len(sets[name])}")
    print(f"largest AUROC difference {worst:.4f}")


if __name__ == "__main__":
    main()
