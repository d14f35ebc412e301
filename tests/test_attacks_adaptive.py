"""Attacks that know the detector: the differentiable bundle scores, adaptive PGD and framing, and their CLI runs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pipeline_helpers import first_test_clips

from pipeline.attacks import (
    AttackError,
    FramingAttack,
    Normalize,
    framing_adaptive,
    framing_adaptive_universal,
    from_uint8,
    load_attacked_clips,
    pgd,
    pgd_adaptive,
    to_uint8,
)
from pipeline.attacks.frame import border_mask
from pipeline.cli import main
from pipeline.detect import Detector
from pipeline.detect.features import model_inputs
from pipeline.detect.torch_scoring import TorchBundleScorer

EPS = 8 / 255


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.load(tiny_bundle)


@pytest.fixture(scope="module")
def test_clips(detector, tiny_dataset):
    """Up to 8 real uint8 test clips ``(N, T, S, S, 3)`` of the tiny dataset, and their labels."""
    return first_test_clips(tiny_dataset, detector.manifest.preprocessing)


@pytest.fixture
def scorer(detector):
    with TorchBundleScorer(detector.bundle, detector.model,
                           Normalize.from_preprocessing(detector.manifest.preprocessing)) as scorer:
        yield scorer


def stored_fused(detector, adversarial: torch.Tensor) -> np.ndarray:
    """The numpy bundle's fused scores of pixel clips once stored as uint8 (what evaluate scores)."""
    features = detector.features(to_uint8(adversarial))
    return detector.score_features(features.layers, features.softmax).fused


def test_torch_scores_equal_the_bundle_on_real_clips(detector, test_clips):
    clips, _ = test_clips
    features = detector.features(clips)
    default = detector.score_features(features.layers, features.softmax)
    exact_bundle = copy.deepcopy(detector.bundle)
    for density in exact_bundle.densities.values():
        density.scoring_dtype = "float64"  # the bundle's exact kernel
    exact = exact_bundle.score(features.layers, features.softmax.max(axis=1))
    with TorchBundleScorer(detector.bundle, detector.model) as scorer, torch.no_grad():
        scores = scorer(model_inputs(clips, detector.manifest.preprocessing))  # the input Detector.features uses
    assert set(scores.loglik) == set(detector.bundle.calibration.keys)
    for key, values in scores.loglik.items():
        assert values.dtype == torch.float64
        np.testing.assert_allclose(values.numpy(), exact.loglik[key], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(values.numpy(), default.loglik[key], rtol=1e-4, atol=1e-4)  # float32 kernel
    np.testing.assert_allclose(scores.fused.numpy(), exact.fused, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scores.fused.numpy(), default.fused, rtol=1e-6, atol=1e-5)
    for name, values in detector.bundle.calibration.group_scores(exact.loglik).items():
        np.testing.assert_allclose(scores.groups[name].numpy(), values, rtol=1e-6, atol=1e-9)


def test_gradients_reach_every_clip_and_the_tap_leaves_no_hook(detector, test_clips):
    clips, _ = test_clips
    pixels = from_uint8(clips).requires_grad_(True)
    model = detector.model
    with TorchBundleScorer(detector.bundle, model, Normalize.from_preprocessing(detector.manifest.preprocessing),
                           keys=detector.bundle.calibration.fused_keys) as scorer:
        scores = scorer(pixels)
        np.testing.assert_allclose(scores.fused.detach().numpy(), detector.score_clips(clips)[1].fused, atol=1e-4)
        scores.fused.sum().backward()
    gradient = pixels.grad
    assert bool(torch.isfinite(gradient).all())
    assert bool((gradient.flatten(1).abs().sum(1) > 0).all())
    assert not any(module._forward_hooks for module in model.modules())
    with pytest.raises(Exception, match="not scores of the bundle"):
        TorchBundleScorer(detector.bundle, model, keys=["layer4/nope"])


def test_lambda_zero_is_the_plain_attack(detector, test_clips, scorer):
    clips, labels = test_clips
    pixels, targets = from_uint8(clips[:4]), torch.as_tensor(labels[:4])
    normalize = scorer.normalize
    plain = pgd(detector.model, pixels, targets, normalize, steps=3, seed=5)
    assert torch.equal(pgd_adaptive(scorer, pixels, targets, lam=0, steps=3, seed=5), plain)
    attack = FramingAttack(width=2, steps=3, seed=5)
    assert torch.equal(framing_adaptive(scorer, pixels, targets, lam=0.0, attack=attack),
                       attack.attack_batch(detector.model, pixels, targets, normalize))
    with pytest.raises(AttackError, match="lambda must be non-negative"):
        pgd_adaptive(scorer, pixels, targets, lam=-1.0, steps=1)


def test_adaptive_pgd_looks_more_in_distribution_within_the_budget(detector, test_clips, scorer):
    clips, labels = test_clips
    pixels, targets = from_uint8(clips), torch.as_tensor(labels)
    plain = pgd_adaptive(scorer, pixels, targets, lam=0.0, steps=5, seed=1)
    adaptive = pgd_adaptive(scorer, pixels, targets, lam=1.0, steps=5, seed=1)
    for attacked in (plain, adaptive):
        assert float((attacked - pixels).abs().max()) <= EPS + 1e-6
        assert float(attacked.min()) >= 0.0 and float(attacked.max()) <= 1.0
        assert torch.equal(attacked, torch.round(attacked * 255) / 255)  # on the 8-bit grid
    plain_fused, adaptive_fused = stored_fused(detector, plain), stored_fused(detector, adaptive)
    assert adaptive_fused.mean() > plain_fused.mean() + 1.0, (plain_fused, adaptive_fused)


def test_adaptive_framing_only_paints_the_border(detector, test_clips, scorer):
    clips, labels = test_clips
    pixels, targets = from_uint8(clips[:4]), torch.as_tensor(labels[:4])
    attack = FramingAttack(width=2, steps=6, seed=0)
    interior = ~border_mask(pixels.shape[-2], pixels.shape[-1], 2)
    framed = {lam: framing_adaptive(scorer, pixels, targets, lam=lam, attack=attack) for lam in (0.0, 3.0)}
    for attacked in framed.values():
        assert torch.equal(attacked[..., interior], pixels[..., interior])
        assert not torch.equal(attacked, pixels)
    assert stored_fused(detector, framed[3.0]).mean() > stored_fused(detector, framed[0.0]).mean()
    frame = framing_adaptive_universal(scorer, pixels, targets, lam=1.0, attack=attack, epochs=1, batch_size=2,
                                       progress=False)
    assert frame.info["attack"] == "adaptive_framing" and frame.info["lambda"] == 1.0
    universal = frame.apply(pixels)
    assert torch.equal(universal[..., interior], pixels[..., interior])


def test_attack_command_runs_the_adaptive_attacks(tiny_bundle, tiny_dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "pgd.npz"
    assert main(["attack", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--attack", "pgd-adaptive",
                 "--lambda", "2", "--steps", "2", "--max-clips-per-video", "1", "--out", str(out),
                 "--no-progress"]) == 0
    stored = load_attacked_clips(out)
    assert stored.attack == "pgd-adaptive" and stored.params["lambda"] == 2.0 and stored.params["steps"] == 2
    capsys.readouterr()
    common = ["attack", "--data", str(tiny_dataset), "--attack", "framing-adaptive", "--out", str(tmp_path / "x")]
    for extra in ([], ["--bundle", str(tiny_bundle), "--model", str(tiny_model)]):
        assert main([*common, *extra]) == 2
        assert "give --bundle, not --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--attack", "pgd-adaptive",
              "--lambda", "-1", "--out", str(tmp_path / "y")])


def test_evaluate_sweeps_lambda_and_writes_the_adaptive_block(tiny_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "results"
    assert main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(out),
                 "--surrogate", "none", "--attacks", "pgd_adaptive", "--lambdas", "0", "1", "--pgd-steps", "2",
                 "--detectors", "msp,energy", "--max-clips-per-video", "1", "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    block = report["adaptive"]
    assert block["lambdas"] == [0.0, 1.0] and [r["set"] for r in block["rows"]] == ["pgd_adaptive@0", "pgd_adaptive@1"]
    for row in block["rows"]:
        assert row["clips"] == report["counts"]["clean"] and 0.0 <= row["flagged"] <= 1.0
        assert 0.0 <= row["fused_auroc"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert (row["fused_auroc_succeeded"] is None) == (not row["attack_success"])  # over the clips it fooled
        assert row["fused_auroc_succeeded"] is None or 0.0 <= row["fused_auroc_succeeded"] <= 1.0
        assert {"all/fused", "output/softmax", "layer3/sep", "fc/gmm"} <= set(row["auroc"])
        assert any(key.endswith("/msp") for key in row["auroc"]) and any(k.endswith("/energy") for k in row["auroc"])
    assert "adaptive.png" in report["figures"] and (out / "adaptive.png").stat().st_size > 0
    assert not (out / "hist_pgd_adaptive@0.png").exists()
    markdown = (out / "results.md").read_text()
    assert "## Adaptive attacks (the attacker knows the detector)" in markdown and "| pgd_adaptive | 1 |" in markdown


def test_the_margin_loss_is_carlini_and_wagners_and_drives_misclassification(detector, test_clips, scorer):
    from pipeline.attacks.adaptive import margin_objective

    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, 1.0]])
    labels = torch.tensor([0, 0])
    assert torch.allclose(margin_objective(logits, labels, False, 10.0), torch.tensor([0.5, -4.0]))
    assert torch.allclose(margin_objective(logits, labels, False, 1.0), torch.tensor([0.5, -1.0]))  # capped at -kappa
    assert torch.allclose(margin_objective(logits, torch.tensor([2, 2]), True, 10.0), torch.tensor([0.5, 3.0]))
    clips, labels = test_clips
    pixels, targets = from_uint8(clips), torch.as_tensor(labels)
    attacked = pgd_adaptive(scorer, pixels, targets, lam=0.0, steps=5, seed=1, loss="margin", kappa=5.0)
    assert float((attacked - pixels).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        before = detector.model(scorer.normalize(pixels)).argmax(1)
        after = detector.model(scorer.normalize(attacked)).argmax(1)
    assert (after != targets).float().mean() >= (before != targets).float().mean()
    with pytest.raises(AttackError, match="attack loss must be one of ce, margin"):
        pgd_adaptive(scorer, pixels, targets, lam=1.0, steps=1, loss="hinge")
