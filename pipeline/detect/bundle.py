"""Detector bundles: everything the streaming pipeline needs to score a clip, in one pickle-free directory.

Layout::

    bundle.json              format + version, model reference (path + SHA-256), layers, class names, settings
    densities/               per-layer PCA reducers and Tied / Separate / GMM densities (pipeline.density.save)
    calibration.safetensors  sorted calibration scores, means and deviations
    heatmap/                 optional OOD heatmap decoder (``clipwatch fit --heatmap``; pipeline.detect.zoo.heatmap),
                             needed when ``settings["evidence"]`` fuses its score
    digests.json             SHA-256 of every other file (pipeline.fileio.seal_directory), checked on every load

Any edit, addition or removal after fitting (a calibration ``alpha`` set to 1e-12 lets every attack through) makes
:meth:`DetectorBundle.load` refuse the bundle; :func:`bundle_digest` names the exact bundle that scored something.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.special import logsumexp
from tqdm.auto import tqdm

from pipeline import density as dens
from pipeline.detect.calibration import Calibration
from pipeline.detect.evidence import BORDER_KEY, EVIDENCE_KEYS
from pipeline.detect.features import ClipFeatures
from pipeline.errors import ClipwatchError
from pipeline.fileio import IntegrityError, seal_directory, verify_directory
from pipeline.models import file_sha256, resolve_model_dir

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "clipwatch.bundle"
BUNDLE_VERSION = 3
"""Written when some groups are left out of the fused score (``Calibration.unfused_groups``): earlier readers
would fuse them all against a fused calibration computed without them, so they must refuse such a bundle."""
COMPATIBLE_VERSION = 2
"""Written otherwise, so that earlier releases keep reading bundles whose meaning they know."""
DENSITY_NAMES = ("gmm", "sep", "tied")
HEATMAP_DIR = "heatmap"
OUTPUT_SCORE = "energy"
"""The output-space score a bundle may fuse: the logits' energy, ``logsumexp`` (Liu et al. 2020); its key is
``"<logits layer>/logsumexp"`` (apart from the zoo's ``energy`` rows in `clipwatch evaluate`)."""


def logits_layer(features: ClipFeatures) -> str | None:
    """The last tapped layer whose features are the logits (to 1e-4 of their scale), or None."""
    logits = np.asarray(features.logits, dtype=np.float64)
    scale = max(float(np.abs(logits).max(initial=0.0)), 1.0)
    found = [layer for layer, values in features.layers.items()
             if np.shape(values) == logits.shape and np.abs(np.asarray(values, dtype=np.float64) - logits).max(
                 initial=0.0) <= 1e-4 * scale]
    return found[-1] if found else None
PROVENANCE_KEYS = ("dataset", "split", "calibration_data", "precision")
"""Settings that say where a bundle's clips came from (recorded by ``clipwatch fit``, absent from older bundles)."""


class BundleError(ClipwatchError, ValueError):
    """A bundle directory is missing, of another version, incomplete, edited, or does not match its model."""


def bundle_digest(directory: str | Path) -> str:
    """SHA-256 of the bundle's ``digests.json``, after verifying every file against it: names the exact bundle."""
    try:
        return verify_directory(directory, what="bundle")
    except IntegrityError as exc:
        raise BundleError(str(exc)) from None


@dataclass
class BundleScores:
    """Scores of a batch of clips: ``loglik["layer/density"]`` (N,), fused score, p-value, verdicts, reasons."""

    loglik: dict[str, np.ndarray]
    fused: np.ndarray
    p_value: np.ndarray
    verdicts: list[str]
    reasons: list[list[str]]


class DetectorBundle:
    """Per-layer reducers and densities of a tapped model, plus their calibration."""

    def __init__(self, model_ref: dict, layers: list[str], class_names: list[str], reducers: dict,
                 densities: dict, calibration: Calibration, settings: dict):
        self.model_ref = model_ref
        self.layers = layers
        self.class_names = class_names
        self.reducers = reducers
        self.densities = densities
        self.calibration = calibration
        self.settings = settings
        self.source: Path | None = None  # the directory it was loaded from: where a model kept inside it lives

    @classmethod
    def fit(cls, train: ClipFeatures, calibration: ClipFeatures, *, model_ref: dict, class_names: list[str],
            densities=DENSITY_NAMES, fused_density: str = "sep", variance: float = 0.995, pool_factor: int = 4,
            gmm_max_components: int = 4, false_alarm: float = 0.01, seed: int = 0, low_level_layers=(),
            output_score: str | None = OUTPUT_SCORE, provenance: Mapping[str, Any] | None = None,
            border: int = 0, unfused_groups: Sequence[str] = (), progress: bool = True) -> DetectorBundle:
        """Fit reducers and densities on ``train`` clips, calibrate on held-out in-distribution ``calibration`` clips.

        Evidence in ``calibration.evidence`` (:mod:`pipeline.detect.evidence`, computed in the same pass) is fused,
        one group per key, and scoring then needs it for every clip; ``border`` is the masked band the
        ``border/consistency`` evidence was computed with (see :meth:`calibrate`).

        ``low_level_layers`` (early convolutions) are fused apart from the others (see ``detect.calibration``).
        ``output_score`` ``"energy"`` adds the logits' ``logsumexp`` as a third group, read from the tapped layer
        whose features are the logits (``settings["output_layer"]``; none tapped: no output group); None leaves
        it out.
        ``unfused_groups`` are left out of the fused score (see :meth:`calibrate`).
        ``provenance`` (``dataset``, ``split``, ``calibration_data``: where the clips came from) is recorded in
        ``settings`` after the fitted values.
        """
        if output_score not in (None, OUTPUT_SCORE):
            raise BundleError(f"output_score must be {OUTPUT_SCORE!r} or None, got {output_score!r}")
        unknown = [d for d in densities if d not in dens.DENSITY_TYPES]
        if unknown or fused_density not in densities:
            raise BundleError(f"densities must be among {list(dens.DENSITY_TYPES)} and include {fused_density!r}")
        layers = list(train.layers)
        if [layer for layer in low_level_layers if layer not in layers]:
            raise BundleError(f"low-level layers {list(low_level_layers)} must be among the tapped layers {layers}")
        _check_rate(false_alarm, len(calibration))
        provenance = dict(provenance or {})
        if set(provenance) - set(PROVENANCE_KEYS):
            raise BundleError(f"provenance keys must be among {list(PROVENANCE_KEYS)}, got {sorted(provenance)}")
        reducers, models = {}, {}
        shrinkage_cache = dens.ShrinkageCache()  # Sep and GMM on one layer: one cross-validation
        steps = [(layer, name) for layer in layers for name in densities]
        bar = tqdm(steps, desc="fit densities", unit="density", disable=not progress)
        for layer, name in bar:
            bar.set_postfix_str(f"{layer}/{name}")
            if layer not in reducers:
                reducers[layer] = dens.PCAReducer(variance=variance, pool_factor=1).fit(train.layers[layer])
            reduced = reducers[layer].transform(train.layers[layer])
            params = {"max_components": gmm_max_components, "random_state": seed} if name == "gmm" else {}
            models[f"{layer}/{name}"] = dens.DENSITY_TYPES[name](**params).fit(reduced, train.labels,
                                                                              shrinkage_cache=shrinkage_cache)
        settings = {"densities": list(densities), "fused_density": fused_density, "variance": variance,
                    "pool_factor": pool_factor, "false_alarm": false_alarm, "seed": seed,
                    "low_level_layers": list(low_level_layers),
                    "train_clips": len(train), "calibration_clips": len(calibration),
                    "output_layer": logits_layer(train) if output_score else None, **provenance}
        if output_score and settings["output_layer"] is None:
            log.warning("no tapped layer holds the logits (tap the head, e.g. fc): the bundle has no output group")
        bundle = cls(model_ref, layers, list(class_names), reducers, models, None, settings)
        return bundle.calibrate(calibration, border=border, unfused_groups=unfused_groups)

    def calibrate(self, calibration: ClipFeatures, false_alarm: float | None = None, *,
                  border: int | None = None, unfused_groups: Sequence[str] | None = None) -> DetectorBundle:
        """(Re)calibrate on held-out in-distribution clips at ``false_alarm`` (default: the bundle's), keeping the
        densities; the evidence in ``calibration.evidence`` is fused (``settings["evidence"]``), and ``border`` (px;
        default: the bundle's) is recorded with ``border/consistency``, since scoring must mask the same band.
        ``unfused_groups`` (default: the bundle's) are calibrated but left out of the fused score
        (:meth:`Calibration.without_groups`, chosen by :func:`pipeline.detect.fusion.choose_fused_groups`).
        Returns self; the bundle is left as it was if this raises."""
        false_alarm = float(self.settings["false_alarm"] if false_alarm is None else false_alarm)
        border = self.border if border is None else int(border)
        _check_rate(false_alarm, len(calibration))
        evidence = [key for key in EVIDENCE_KEYS if key in calibration.evidence]
        stray = sorted(set(calibration.evidence) - set(EVIDENCE_KEYS))
        if stray:
            raise BundleError(f"unknown evidence {stray}; known: {list(EVIDENCE_KEYS)}")
        if BORDER_KEY in evidence and int(border) < 1:
            raise BundleError(f"{BORDER_KEY} evidence needs the masked border it was computed with (>= 1 px)")
        scores = self.loglik(calibration.layers, evidence=calibration.evidence, required=())
        fused_density = self.settings["fused_density"]
        fused_keys = [f"{layer}/{fused_density}" for layer in self.layers]
        low_level_keys = [f"{layer}/{fused_density}" for layer in self.settings.get("low_level_layers") or ()]
        output_keys = [self.output_key] if self.output_key else []
        fitted = Calibration.fit(scores, calibration.softmax.max(axis=1), fused_keys + output_keys + evidence,
                                 false_alarm, low_level_keys, output_keys, evidence)
        if unfused_groups is None:  # the bundle's choice, for the groups that still exist (one stays fused)
            previous = self.calibration.unfused_groups if self.calibration is not None else []
            unfused_groups = [name for name in previous if name in fitted.groups]
            if len(unfused_groups) == len(fitted.groups):
                unfused_groups = []
            if unfused_groups != previous:
                log.warning("recalibrated with groups %s: %s left out of the fused score (was %s)",
                            list(fitted.groups), unfused_groups or "none", previous)
        self.calibration = fitted.without_groups(unfused_groups, scores) if unfused_groups else fitted
        fusion = self.settings.get("fusion")
        if fusion is not None and list(fusion.get("dropped", [])) != list(self.calibration.unfused_groups):
            del self.settings["fusion"]  # the recorded choice is no longer the one applied
        self.settings.update(false_alarm=false_alarm, calibration_clips=len(calibration), evidence=evidence,
                             border=border if BORDER_KEY in evidence else 0)
        return self

    @property
    def output_key(self) -> str | None:
        """``"<logits layer>/logsumexp"`` when the bundle fuses the output score (bundles before it: None)."""
        layer = self.settings.get("output_layer")
        return f"{layer}/logsumexp" if layer else None

    @property
    def evidence_keys(self) -> list[str]:
        """The evidence the bundle fuses (:mod:`pipeline.detect.evidence`; bundles before it: none)."""
        return list(self.settings.get("evidence") or ())

    @property
    def border(self) -> int:
        """The masked band (px of model input) of the ``border/consistency`` evidence; 0 if not fused."""
        return int(self.settings.get("border") or 0)

    def loglik(self, layer_features: dict[str, np.ndarray], *, evidence: Mapping[str, np.ndarray] | None = None,
               required: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """``score_samples`` of every (layer, density) for a batch of tapped features, the output score, and the
        clips' ``evidence`` scores (the ``required`` keys, by default every one the bundle fuses, must be there)."""
        evidence = dict(evidence or {})
        missing = [key for key in (self.evidence_keys if required is None else required) if key not in evidence]
        if missing:
            raise BundleError(f"this bundle fuses {', '.join(missing)}: score clips through its Detector (which "
                              "computes it in the model's forward pass), or pass each clip's evidence")
        out = {}
        for layer in self.layers:
            reduced = self.reducers[layer].transform(layer_features[layer])
            for name in self.settings["densities"]:
                out[f"{layer}/{name}"] = self.densities[f"{layer}/{name}"].score_samples(reduced).astype(np.float64)
        if self.output_key:
            out[self.output_key] = logsumexp(np.asarray(layer_features[self.settings["output_layer"]],
                                                        dtype=np.float64), axis=1)
        out.update({key: np.asarray(values, dtype=np.float64).reshape(-1) for key, values in evidence.items()})
        return out

    def score(self, layer_features: dict[str, np.ndarray], softmax_max: np.ndarray, *,
              alpha: float | None = None, evidence: Mapping[str, np.ndarray] | None = None) -> BundleScores:
        """Scores and verdicts of a batch of clips (with their ``evidence``, see :meth:`loglik`); ``alpha`` flags at
        that false-alarm rate instead of the calibration's (the bundle is not changed)."""
        loglik = self.loglik(layer_features, evidence=evidence)
        calibration = self.calibration if alpha is None else self.calibration.with_alpha(alpha)
        fused, p, results = calibration.verdicts(loglik, np.asarray(softmax_max))
        return BundleScores(loglik, fused, p, [r[0] for r in results], [r[1] for r in results])

    def save(self, directory: str | Path) -> Path:
        """Write the bundle into ``directory`` and seal it (``digests.json`` over every file there)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._carry_model(directory)
        estimators = {f"{layer}/reducer": self.reducers[layer] for layer in self.layers}
        estimators.update(self.densities)
        dens.save(directory / "densities", estimators)
        arrays = self.calibration.arrays()
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(directory / "calibration.safetensors"))
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION if self.calibration.unfused_groups else COMPATIBLE_VERSION,
            "model": self.model_ref,
            "layers": self.layers, "class_names": self.class_names, "settings": self.settings,
            "calibration": self.calibration.settings(),
            "calibration_sha256": file_sha256(directory / "calibration.safetensors"),
        }
        (directory / "bundle.json").write_text(json.dumps(manifest, indent=2))
        seal_directory(directory)
        return directory

    def _carry_model(self, directory: Path) -> None:
        """A model kept inside the loaded bundle (a relative reference) is copied along when saving elsewhere."""
        ref = self.model_ref
        if self.source is None or not ref.get("relative_to_bundle") or Path(ref["path"]).is_absolute():
            return
        origin, target = self.source / ref["path"], directory / ref["path"]
        if origin.resolve() != target.resolve() and origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True)

    @staticmethod
    def read_manifest(directory: str | Path) -> dict:
        """``bundle.json`` of a bundle directory, after verifying every file against its digests and the format."""
        directory = Path(directory)
        manifest_path = directory / "bundle.json"
        if not manifest_path.is_file():
            raise BundleError(f"{directory}: not a detector bundle (no bundle.json)")
        bundle_digest(directory)
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{manifest_path}: invalid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT \
                or manifest.get("format_version") not in (COMPATIBLE_VERSION, BUNDLE_VERSION):
            found = manifest if isinstance(manifest, dict) else {}
            raise BundleError(
                f"{manifest_path}: unsupported bundle format {found.get('format')!r} "
                f"version {found.get('format_version')!r} (expected {BUNDLE_FORMAT!r} {COMPATIBLE_VERSION} or "
                f"{BUNDLE_VERSION})"
            )
        return manifest

    @classmethod
    def load(cls, directory: str | Path) -> DetectorBundle:
        directory = Path(directory)
        manifest = cls.read_manifest(directory)
        calibration_path = directory / "calibration.safetensors"
        if not calibration_path.is_file():
            raise BundleError(f"{calibration_path}: missing")
        if file_sha256(calibration_path) != manifest["calibration_sha256"]:
            raise BundleError(f"{calibration_path}: does not match its SHA-256 (tampered or corrupt)")
        try:
            estimators = dens.load(directory / "densities")
        except dens.PersistenceError as exc:
            raise BundleError(str(exc)) from None
        layers = manifest["layers"]
        reducers = {layer: estimators.pop(f"{layer}/reducer") for layer in layers}
        try:
            calibration = Calibration.from_saved(manifest["calibration"], load_file(str(calibration_path)))
        except (KeyError, ValueError) as exc:
            raise BundleError(f"{calibration_path}: calibration does not match bundle.json ({exc})") from None
        if calibration.unfused_groups and manifest["format_version"] != BUNDLE_VERSION:
            raise BundleError(f"{directory / 'bundle.json'}: leaves groups out of the fused score, which format "
                              f"version {manifest['format_version']} cannot express (expected {BUNDLE_VERSION})")
        bundle = cls(manifest["model"], layers, manifest["class_names"], reducers, estimators, calibration,
                     manifest["settings"])
        bundle.source = directory
        return bundle

    def resolve_model(self, bundle_dir: str | Path) -> Path:
        """Path of the bundle's model directory, after checking its weights' (and ``model.json``'s) SHA-256."""
        return resolve_model_ref(self.model_ref, bundle_dir)


def _check_rate(false_alarm: float, clips: int) -> None:
    """Refuse a false-alarm rate outside (0, 1), or one too few calibration clips can reach."""
    if not 0.0 < false_alarm < 1.0:
        raise BundleError(f"false-alarm rate must be in (0, 1), got {false_alarm:g}")
    if 1 / (clips + 1) > false_alarm:  # conformal p-values are at least 1/(n+1)
        raise BundleError(f"{clips} calibration clips cannot flag anything at a false-alarm rate of "
                          f"{false_alarm:g}: the smallest p-value is 1/(n+1) = {1 / (clips + 1):.3g}; "
                          f"give at least {math.ceil(1 / false_alarm) - 1} calibration clips or a higher rate")


def resolve_model_ref(ref: dict, bundle_dir: str | Path) -> Path:
    """Path of the model directory a bundle's ``model`` reference names, after checking its weights' (and
    ``model.json``'s) SHA-256.

    Bundles fitted before ``manifest_sha256`` was recorded check the weights only; a shipped model's own
    ``digests.json`` still covers its ``model.json``.
    """
    candidate = Path(ref["path"])
    if not candidate.is_absolute() and ref.get("relative_to_bundle"):
        candidate = Path(bundle_dir) / candidate
    model_dir = resolve_model_dir(str(candidate) if ref.get("name") is None else ref["name"])
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise BundleError(f"{weights}: model weights of the bundle are missing")
    actual = file_sha256(weights)
    if actual != ref["sha256"]:
        raise BundleError(
            f"{weights}: SHA-256 {actual[:12]}… does not match the bundle's model {ref['sha256'][:12]}… "
            "(the bundle was fitted on other weights: refit it with `clipwatch fit`)"
        )
    manifest_sha = ref.get("manifest_sha256")
    if manifest_sha is not None and file_sha256(model_dir / "model.json") != manifest_sha:
        raise BundleError(f"{model_dir / 'model.json'}: SHA-256 mismatch with the bundle's model reference "
                          "(model.json edited after the bundle was fitted?)")
    return model_dir
