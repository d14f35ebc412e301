"""Do a backbone's features tell novel clips from the known class they are mistaken for? Measured per layer.

The shipped model takes almost every novel clip for one class (``StandStill``), so a plain AUROC rewards any score
that flags that class. Here each layer's features of ``--backbone`` (any model: the classifier itself, or a frozen
pretrained backbone such as ``base``) get PCA + a class-conditional Gaussian on the training clips' true labels;
each clip is scored by the log-likelihood of the class the ``--predictor`` model assigns it, standardised within
that class on the calibration clips. Printed per test set: the AUROC of all novel clips, its class-matched value
(`pipeline.metrics.class_matched_auroc`) and the AUROC of each novel class; and the same for the predictor's
logits' energy. Nothing here is fitted on a test set or a novel class.

    .venv/bin/python benchmarks/class_conditional_novelty.py --backbone base --layers layer2 layer3 \
        --train data/synth --calibration-data data/synth-calibration --data SEED7 [SEED8 ...] \
        [--predictor default] [--frame-step N] [--max-clips-per-video 1]

Both models must cut a video into the same clips (same clip length and frame step, which ``--frame-step`` can set
for the backbone); clips are taken every 16 frames, as ``clipwatch evaluate`` takes them.
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

from pipeline.data import UCF101, labelled_videos
from pipeline.density import PCAReducer, SeparateGaussian
from pipeline.detect import load_clips
from pipeline.detect.features import extract_from_tensors, model_inputs
from pipeline.metrics import auroc, class_matched_auroc
from pipeline.models import load_model
from pipeline.training.transfer import head_name


class Reader:
    """A model and its preprocessing: tapped features and logits of a list of videos' clips."""

    def __init__(self, name: str, frame_step: int | None, limit: int | None) -> None:
        self.model, manifest = load_model(name)
        self.model.eval()
        self.prep = manifest.preprocessing
        if frame_step is not None:
            self.prep = self.prep.model_copy(update={"frame_step": frame_step})
        self.limit = limit

    def read(self, items: list[tuple[Path, int]], layers: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        clips, labels, _, _ = load_clips(items, self.prep, max_clips_per_video=self.limit, progress=False)
        batches = (model_inputs(clips[i:i + 32], self.prep) for i in range(0, len(clips), 32))
        with torch.no_grad():
            features, logits, _ = extract_from_tensors(self.model, batches, layers, pool_factor=4)
        return features, logits, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="base", help="model whose layers are read (name or folder)")
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--predictor", default="default", help="model whose predicted class conditions the scores")
    parser.add_argument("--frame-step", type=int, help="the backbone's frame step (default: its own)")
    parser.add_argument("--train", type=Path, required=True, help="the predictor's training data (split-1 train list)")
    parser.add_argument("--calibration-data", type=Path, required=True, help="fresh in-distribution videos")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="test datasets with a novel/ folder")
    parser.add_argument("--max-clips-per-video", type=int)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    backbone = Reader(args.backbone, args.frame_step, args.max_clips_per_video)
    predictor = Reader(args.predictor, None, args.max_clips_per_video)

    def read(items: list[tuple[Path, int]]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        features, _, labels = backbone.read(items, args.layers)
        _, logits, predicted_labels = predictor.read(items, [head_name(predictor.model)])
        if len(predicted_labels) != len(labels):
            raise SystemExit(f"the backbone cuts {len(labels)} clips and the predictor {len(predicted_labels)}: "
                             "give --frame-step so that both take the same clips")
        energy = torch.logsumexp(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
        return features, labels, (np.argmax(logits, axis=1), energy)

    features, labels, _ = read(labelled_videos(args.train, 1, ("train",)))
    densities = {}
    for layer in args.layers:
        reducer = PCAReducer(0.995).fit(features[layer])
        densities[layer] = (reducer, SeparateGaussian().fit(reducer.transform(features[layer]), labels))

    def scores(items: list[tuple[Path, int]]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        features, labels, (predicted, energy) = read(items)
        out = {"energy (predictor)": energy}
        for layer, (reducer, density) in densities.items():
            out[f"{layer} (backbone)"] = density.class_log_likelihood(reducer.transform(features[layer]))[
                np.arange(len(predicted)), predicted]
        return out, labels, predicted

    calibration, _, calibration_predicted = scores(labelled_videos(args.calibration_data))
    classes = np.unique(calibration_predicted)

    def standardise(values: np.ndarray, predicted: np.ndarray, key: str) -> np.ndarray:
        out = np.full(values.shape, np.nan)
        for c in classes:
            reference = calibration[key][calibration_predicted == c]
            out[predicted == c] = (values[predicted == c] - reference.mean()) / max(reference.std(), 1e-9)
        return out

    for root in args.data:
        novel_classes = UCF101(root / "novel", split=1, subset="test", missing="skip").classes
        clean, _, clean_predicted = scores(labelled_videos(root, 1, ("test",)))
        novel, novel_labels, novel_predicted = scores(labelled_videos(root / "novel"))
        known_clean, known_novel = np.isin(clean_predicted, classes), np.isin(novel_predicted, classes)
        print(f"{root}: {known_clean.sum()} clean and {known_novel.sum()} novel clips (of {len(known_clean)} and "
              f"{len(known_novel)}: the rest are predicted as a class no calibration clip is)")
        print(f"  {'score, standardised within the predicted class':48s} {'all':>6s} {'matched':>8s} "
              + " ".join(f"{name[:8]:>8s}" for name in novel_classes))
        for key in clean:
            a = standardise(clean[key], clean_predicted, key)[known_clean]
            b = standardise(novel[key], novel_predicted, key)[known_novel]
            labels_b = novel_labels[known_novel]
            per_class = [auroc(a, b[labels_b == c]) if np.any(labels_b == c) else float("nan")
                         for c in range(len(novel_classes))]
            matched = class_matched_auroc(a, b, clean_predicted[known_clean], novel_predicted[known_novel])
            print(f"  {key:48s} {auroc(a, b):6.3f} {matched:8.3f} " + " ".join(f"{v:8.3f}" for v in per_class))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
