"""The OOD baseline zoo: each detector against an independent reference on toy data, the estimator contract, and
its rows in ``clipwatch evaluate``."""

import json
import time

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

from pipeline.cli import main
from pipeline.detect import ClipFeatures
from pipeline.detect.zoo import (
    DETECTORS,
    KNN,
    MSP,
    ODIN,
    Energy,
    FeatureNorm,
    GradientDetector,
    GradNorm,
    LinearHead,
    Mahalanobis,
    MaxLogit,
    ViM,
    ZooError,
    build_zoo,
    feature_space,
    feeding_layer,
    linear_head,
    parse_detectors,
)
from pipeline.metrics import auroc
from pipeline.models import FeatureTap
from pipeline.models.precision import prepare_for_inference

D, C = 16, 3


def gaussian_clips(n_per_class: int, seed: int, *, shifted: bool = False) -> ClipFeatures:
    """Penultimate features ``pen`` drawn around class means ``7 e_k`` (or around the origin, away from every class,
    when ``shifted``), logits through a fixed linear head, and a second noisier layer ``early``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n_per_class)
    means = 7.0 * np.eye(C, D)
    h = rng.normal(size=(labels.size, D)) + (0.0 if shifted else means[labels])
    projection = np.random.default_rng(98).normal(size=(D + 4, 12)) * 0.1
    early = np.c_[h, rng.normal(size=(labels.size, 4))] @ projection
    head = toy_head()
    return ClipFeatures({"early": early.astype(np.float32), "pen": h.astype(np.float32)},
                        head.logits(h).astype(np.float32), labels)


def toy_head() -> LinearHead:
    rng = np.random.default_rng(99)
    return LinearHead(np.eye(C, D) + 0.05 * rng.normal(size=(C, D)), np.array([0.3, -0.2, 0.1]), "fc")


def feature_detectors():
    head = toy_head()
    return [MSP(), MaxLogit(), Energy(temperature=2.0), Mahalanobis(), KNN(layer="pen", k=10),
            ViM(layer="pen", head=head), ViM(layer="pen", dim=5), GradNorm(layer="pen", head=head)]


def test_logit_baselines_match_their_formulas():
    features = gaussian_clips(20, 0)
    z = features.logits.astype(np.float64)
    train = gaussian_clips(10, 1)
    for temperature in (1.0, 0.5, 1000.0):
        expected = temperature * np.log(np.exp(z / temperature - (z / temperature).max(1, keepdims=True)).sum(1)) \
            + z.max(1)
        np.testing.assert_allclose(Energy(temperature=temperature).fit(train).score(features), expected, rtol=1e-12)
    probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(MSP().fit(train).score(features), probabilities.max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(MaxLogit().fit(train).score(features), z.max(axis=1))
    np.testing.assert_allclose(FeatureNorm(layer="pen").fit(train).score(features),
                               np.sqrt((features.layers["pen"].astype(np.float64) ** 2).sum(axis=1)), rtol=1e-12)


def test_knn_matches_a_brute_force_search(monkeypatch):
    train, test = gaussian_clips(30, 2), gaussian_clips(7, 3, shifted=True)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distances = np.sort(cdist(unit(test.layers["pen"].astype(np.float64)),
                              unit(train.layers["pen"].astype(np.float64))), axis=1)
    monkeypatch.setattr(feature_space, "_CHUNK_BYTES", 8 * 90 * 2)  # two test clips per chunk
    for k in (1, 5, 50):
        knn = KNN(layer="pen", k=k).fit(train)
        np.testing.assert_allclose(knn.score(test), -distances[:, k - 1], rtol=1e-9, atol=1e-9)
    assert KNN(layer="pen", k=500).fit(train).k_ == len(train)  # capped by the training clips
    np.testing.assert_allclose(KNN(layer="pen", k=500).fit(train).score(test), -distances[:, -1], rtol=1e-9)


def test_vim_matches_a_direct_numpy_computation():
    train, test = gaussian_clips(40, 4), gaussian_clips(10, 5, shifted=True)
    head = toy_head()
    h, z = train.layers["pen"].astype(np.float64), train.logits.astype(np.float64)
    u = -np.linalg.pinv(head.weight) @ head.bias
    values, vectors = np.linalg.eig(np.cov((h - u).T, bias=True, ddof=None) + np.outer(h.mean(0) - u, h.mean(0) - u))
    null_space = np.real(vectors[:, np.argsort(-np.real(values))[D // 2:]])  # the paper's code: eig, sorted
    alpha = z.max(axis=1).mean() / np.linalg.norm((h - u) @ null_space, axis=1).mean()
    ht, zt = test.layers["pen"].astype(np.float64), test.logits.astype(np.float64)
    expected = np.log(np.exp(zt).sum(axis=1)) - alpha * np.linalg.norm((ht - u) @ null_space, axis=1)
    vim = ViM(layer="pen", head=head).fit(train)
    assert vim.dim_ == D // 2 and vim.alpha_ == pytest.approx(alpha, rel=1e-9)
    np.testing.assert_allclose(vim.score(test), expected, rtol=1e-8)
    np.testing.assert_allclose(vim.origin_, u)


def test_mahalanobis_matches_the_direct_formula():
    train, test = gaussian_clips(60, 6), gaussian_clips(5, 7)
    reference = {}
    for layer in ("early", "pen"):
        X, labels = train.layers[layer].astype(np.float64), train.labels
        means = np.stack([X[labels == k].mean(axis=0) for k in range(C)])
        residual = X - means[labels]
        precision = np.linalg.inv(residual.T @ residual / len(X))
        diff = test.layers[layer].astype(np.float64)[:, None, :] - means[None]
        reference[layer] = -np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)
        train_diff = X[:, None, :] - means[None]
        train_score = -np.einsum("nkd,de,nke->nk", train_diff, precision, train_diff).min(axis=1)
        reference[layer] = (reference[layer], train_score.mean(), train_score.std())
    detector = Mahalanobis().fit(train)
    scores = detector.layer_scores(test)
    for layer, (expected, _, _) in reference.items():
        np.testing.assert_allclose(scores[layer], expected, rtol=1e-7)
    combined = sum((value - mean) / std for value, mean, std in reference.values())
    np.testing.assert_allclose(detector.score(test), combined, rtol=1e-7)
    assert detector.layer_used == "all" and not any(r.regularised for r in detector.fit_report_)
    narrow = Mahalanobis(layers=("early",), max_features=8).fit(train)  # PCA to 8 dims first
    assert narrow.reducers_["early"].n_components_ == 8 and narrow.score(test).shape == (len(test),)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 6, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(clips))).flatten(1))


def tiny_clips(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def tapped(model: nn.Module, clips: torch.Tensor) -> ClipFeatures:
    with FeatureTap(model.eval(), ["conv", "pool"]) as tap:
        logits, features = tap(clips)
    return ClipFeatures({k: v.numpy() for k, v in features.items()}, logits.numpy(), np.zeros(len(clips), dtype=int))


def test_gradnorm_matches_a_manual_autograd_computation():
    model, clips, temperature = TinyNet().eval(), tiny_clips(), 2.0
    features = tapped(model, clips)
    head = linear_head(model)
    assert head.name == "fc" and feeding_layer(features, head) == "pool"
    expected = []
    for clip in clips:
        model.zero_grad()
        log_probs = torch.log_softmax(model(clip[None]) / temperature, dim=1)
        kl = (1.0 / 4 * (np.log(1.0 / 4) - log_probs)).sum()  # KL(uniform || softmax)
        kl.backward()
        expected.append(model.fc.weight.grad.abs().sum().item())
    gradnorm = GradNorm(layer="pool", temperature=temperature, head=head).fit(features)
    np.testing.assert_allclose(gradnorm.score(features), expected, rtol=1e-5)
    with pytest.raises(ZooError, match="does not reproduce the logits"):
        GradNorm(layer="conv", head=head).fit(features)


def test_odin_perturbs_toward_a_higher_max_softmax():
    model, clips, normalize = TinyNet().eval(), tiny_clips(), lambda x: (x - 0.5) / 0.25
    odin = ODIN(temperature=10.0, epsilon=0.002, batch_size=2).fit(tapped(model, clips))
    x = clips.clone().requires_grad_(True)
    confidence = torch.log_softmax(model(normalize(x)) / 10.0, dim=1).max(dim=1).values
    (gradient,) = torch.autograd.grad(confidence.sum(), x)
    perturbed = odin.perturb(model, clips, normalize)
    torch.testing.assert_close(perturbed - clips, 0.002 * gradient.sign())
    with torch.no_grad():
        before = torch.softmax(model(normalize(clips)) / 10.0, dim=1).max(dim=1).values
    scores = odin.score_clips(model, clips, normalize)
    assert scores.shape == (len(clips),) and np.all(scores > before.double().numpy())
    with torch.no_grad():
        sign_flipped = torch.softmax(model(normalize(clips - 0.002 * gradient.sign())) / 10.0, dim=1).max(1).values
    assert torch.all(sign_flipped < before)
    assert torch.equal(clips, tiny_clips())  # the caller's clips are not modified
    with pytest.raises(ZooError, match="scores pixels"):
        odin.score(tapped(model, clips))
    with pytest.raises(ZooError, match="eval"):
        odin.score_clips(model.train(), clips, normalize)


def manual_gradients(model: nn.Module, clips: torch.Tensor, normalize, target: str) -> dict[str, np.ndarray]:
    """Per-clip gradients of the conv and fc weights, one plain backward pass each, as float64 rows."""
    rows = {"conv.weight": [], "fc.weight": []}
    for clip in clips:
        model.zero_grad()
        log_probs = torch.log_softmax(model(normalize(clip[None])).double(), dim=1)[0]
        loss = -log_probs[log_probs.argmax()] if target == "prediction" else -log_probs.mean()
        loss.backward()
        rows["conv.weight"].append(model.conv.weight.grad.double().flatten().numpy().copy())
        rows["fc.weight"].append(model.fc.weight.grad.double().flatten().numpy().copy())
    return {name: np.array(values) for name, values in rows.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("target", ["prediction", "uniform"])
@pytest.mark.parametrize("per_sample", ["vmap", "loop"])
def test_gradient_detector_matches_a_manual_autograd_computation(target, per_sample):
    model, normalize = TinyNet().eval(), lambda x: (x - 0.5) / 0.25
    train, test = tiny_clips(7), torch.rand(4, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    detector = GradientDetector(target=target, per_sample=per_sample, batch_size=3).fit_clips(model, train, normalize)
    assert detector.layers_ == ("conv.weight", "fc.weight") and detector.layer_used == "conv+fc"
    g_train, g_test = (manual_gradients(model, x, normalize, target) for x in (train, test))
    totals = {name: g.sum(axis=0) for name, g in g_train.items()}
    names = detector.layers_
    # training summaries: log norms, cosines to the mean of the other training clips (leave-one-out)
    summary = np.c_[[np.log(np.linalg.norm(g_train[n], axis=1)) for n in names]
                    + [cosine(g_train[n], totals[n] - g_train[n]) for n in names]].T
    np.testing.assert_allclose(detector.summary_mean_, summary.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(detector.summary_std_, summary.std(axis=0, ddof=1), rtol=1e-5)
    for name in names:
        np.testing.assert_allclose(detector.mean_gradients_[name], totals[name] / len(train), rtol=1e-5, atol=1e-9)
    sign = 1.0 if target == "prediction" else -1.0  # the norm counts against a clip at its prediction, for it at u
    weights = np.r_[[-sign] * 2, [1.0] * 2] / summary.std(axis=0, ddof=1)
    assert detector.score_std_ == pytest.approx(float(np.std(summary @ weights, ddof=1)), rel=1e-5)
    # test clips: cosines to the full training mean, the z-scored sum standardised by the training sum's std
    values = detector.summaries(model, test, normalize)
    for name in names:
        np.testing.assert_allclose(values[f"norm:{name}"], np.log(np.linalg.norm(g_test[name], axis=1)), rtol=1e-5)
        np.testing.assert_allclose(values[f"cosine:{name}"], cosine(g_test[name], totals[name][None]), rtol=1e-5)
    test_summary = np.c_[[values[f"norm:{n}"] for n in names] + [values[f"cosine:{n}"] for n in names]].T
    expected = (test_summary - summary.mean(axis=0)) @ weights / np.std(summary @ weights, ddof=1)
    np.testing.assert_allclose(detector.score_clips(model, test, normalize), expected, rtol=1e-5, atol=1e-6)


def test_gradient_detector_fit_score_contract():
    model, normalize, clips = TinyNet().eval(), (lambda x: (x - 0.5) / 0.25), tiny_clips(6)
    detector = GradientDetector(batch_size=4)
    assert detector.fit(tapped(model, clips)) is detector and detector.n_classes_ == 4
    with pytest.raises(ZooError, match="not fitted: call fit_clips"):
        detector.score_clips(model, clips, normalize)
    assert detector.fit_clips(model, clips, normalize) is detector
    scores = detector.score_clips(model, clips, normalize)
    assert scores.shape == (6,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert np.array_equal(detector.score_clips(model, clips, normalize), scores)
    assert torch.equal(clips, tiny_clips(6))  # the caller's clips are not modified
    in_chunks = GradientDetector(batch_size=4).fit_clips(model, lambda: iter([clips[:2], clips[2:]]), normalize)
    np.testing.assert_allclose(in_chunks.score_clips(model, clips, normalize), scores, rtol=1e-6, atol=1e-9)
    with pytest.raises(ZooError, match="scores pixels"):
        detector.score(tapped(model, clips))
    with pytest.raises(ZooError, match="eval"):
        detector.score_clips(model.train(), clips, normalize)
    model.eval()
    # a model prepared for bf16 inference: vmap cannot run its channels-last input hook, a loop per clip does
    reduced, _ = prepare_for_inference(TinyNet(), "bf16")
    with pytest.raises(ZooError, match="vmap cannot run this model"):
        GradientDetector(per_sample="vmap").fit_clips(reduced, clips, normalize)
    half = GradientDetector(batch_size=4).fit_clips(reduced, clips, normalize)
    assert half.mean_gradients_["fc.weight"].dtype == np.float64
    assert np.corrcoef(half.score_clips(reduced, clips, normalize), scores)[0, 1] > 0.95
    cases = [(GradientDetector(target="softmax"), "target must be one of prediction, uniform"),
             (GradientDetector(layers=("fc.wieght",)), r"no parameter 'fc.wieght' \(did you mean 'fc.weight'\?\)"),
             (GradientDetector(layers="fc.weight"), "layers must be a non-empty sequence"),
             (GradientDetector(per_sample="batch"), "per_sample must be one of"),
             (GradientDetector(batch_size=0), "batch_size must be a positive integer")]
    for bad, message in cases:
        with pytest.raises(ZooError, match=message) as info:
            bad.fit_clips(model, clips, normalize)
        assert "\n" not in str(info.value)
    with pytest.raises(ZooError, match="at least 2 training clips"):
        GradientDetector().fit_clips(model, clips[:1], normalize)


class ToyNet(nn.Module):
    """A conv layer with batch norm (run in eval mode, as vmap needs) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(clips)))).flatten(1))


def toy_problem(n: int, seed: int, kind: str = "in") -> tuple[torch.Tensor, torch.Tensor]:
    """Grey clips with noise; class k has channel k brightened (``in``), every channel brightened by a random amount
    (``shifted``), or uniform noise (``noise``)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    clips = 0.5 + 0.05 * torch.randn(n, 3, 4, 8, 8, generator=generator)
    if kind == "in":
        clips[torch.arange(n), labels] += 0.3
    elif kind == "shifted":
        clips += 0.3 * torch.rand(n, 3, 1, 1, 1, generator=generator)
    else:
        clips = torch.rand(n, 3, 4, 8, 8, generator=generator)
    return clips.clamp(0, 1), labels


@pytest.mark.parametrize("target", ["prediction", "uniform"])
def test_gradient_of_training_like_clips_aligns_with_the_mean_training_gradient(target):
    model, normalize = ToyNet(), lambda x: (x - 0.5) / 0.25
    train, labels = toy_problem(240, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(normalize(train)), labels).backward()
        optimizer.step()
    model.eval()
    detector = GradientDetector(target=target).fit_clips(model, train, normalize)
    inside = toy_problem(90, 1)[0]
    inside_values = detector.summaries(model, inside, normalize)
    inside_scores = detector.score_clips(model, inside, normalize)
    for kind in ("shifted", "noise"):
        outside = toy_problem(90, 2, kind)[0]
        values = detector.summaries(model, outside, normalize)
        for name in detector.layers_:
            key = f"cosine:{name}"
            assert inside_values[key].mean() > values[key].mean() and auroc(inside_values[key], values[key]) > 0.8
        assert auroc(inside_scores, detector.score_clips(model, outside, normalize)) > 0.8, kind


@pytest.mark.parametrize("detector", feature_detectors(),
                         ids=["msp", "max_logit", "energy", "mahalanobis", "knn", "vim", "vim-mean-origin", "gradnorm"])
def test_fit_score_contract(detector):
    train, inside, outside = gaussian_clips(100, 10), gaussian_clips(40, 11), gaussian_clips(40, 12, shifted=True)
    copies = {key: value.copy() for key, value in {**train.layers, "logits": train.logits}.items()}
    assert detector.fit(train) is detector
    for key, value in {**train.layers, "logits": train.logits}.items():
        assert value.dtype == np.float32 and np.array_equal(value, copies[key]), f"{key} was modified"
    scores_in, scores_out = detector.score(inside), detector.score(outside)
    assert scores_in.shape == (len(inside),) and scores_in.dtype == np.float64 and np.isfinite(scores_in).all()
    assert auroc(scores_in, scores_out) > 0.9, detector
    assert np.array_equal(detector.score(inside), scores_in)


def test_bad_parameters_and_inputs_are_refused_in_one_line():
    train = gaussian_clips(10, 0)
    cases = [(KNN(layer="pen", k=0), "k must be a positive integer"),
             (KNN(layer="pen", k=2.5), "k must be a positive integer"),
             (Energy(temperature=-1.0), "temperature must be a positive number"),
             (ODIN(epsilon=2.0), "epsilon must be a number in"),
             (ViM(layer="pen", dim=D), "dim must be in"),
             (KNN(layer="nope"), "layer 'nope' is not among the tapped layers"),
             (Mahalanobis(layers="pen"), "layers must be a non-empty sequence"),
             (ViM(layer="early", head=toy_head()), "does not reproduce the logits")]
    for detector, message in cases:
        with pytest.raises(ZooError, match=message) as info:
            detector.fit(train)
        assert "\n" not in str(info.value)
    with pytest.raises(ZooError, match="not fitted"):
        MSP().score(train)
    with pytest.raises(ZooError, match="16 features, fitted with"):
        KNN(layer="early").fit(train).score(ClipFeatures({"early": train.layers["pen"]}, train.logits, train.labels))


def test_detector_lists_parse_and_build():
    assert parse_detectors("all") == tuple(DETECTORS) and parse_detectors("none") == ()
    assert parse_detectors(" knn, msp ") == ("msp", "knn")  # the zoo's order
    with pytest.raises(ZooError, match=r"unknown detector 'vmi' \(did you mean 'vim'\?\)"):
        parse_detectors("msp,vmi")
    detectors, left_out = build_zoo(DETECTORS, layers=["early", "pen"], head=toy_head(), penultimate=None)
    assert set(left_out) == {"knn", "vim", "gradnorm", "feature_norm"} and set(detectors) == set(DETECTORS) - set(left_out)


def test_evaluate_adds_a_row_per_zoo_detector(tiny_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "results"
    started = time.perf_counter()
    assert main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(out),
                 "--surrogate", "none", "--attacks", "fgsm", "--tamper", "--no-progress"]) == 0  # no tampering
    report = json.loads((out / "results.json").read_text())
    zoo = report["zoo"]
    print(f"evaluate {time.perf_counter() - started:.1f} s, zoo step {zoo['seconds']} s")
    assert zoo["penultimate"] == "layer4" and zoo["head"] == "fc" and not zoo["left_out"]
    assert zoo["train_clips"] > 0 and zoo["detectors"]["mahalanobis"]["layer"] == "all"
    assert zoo["detectors"]["gradient"]["layer"] == "layer4.0.conv2+fc"
    rows = report["detection"]
    for ood_set in ("novel", "fgsm"):
        found = {r["density"]: r for r in rows if r["ood_set"] == ood_set and r["layer"] ==
                 zoo["detectors"].get(r["density"], {}).get("layer")}
        assert set(found) == set(DETECTORS)
        assert all(0.0 <= r["auroc"] <= 1.0 for r in found.values())
        softmax = next(r for r in rows if r["ood_set"] == ood_set and r["density"] == "softmax")
        assert found["msp"]["auroc"] == pytest.approx(softmax["auroc"])
    assert {r["layer"] for r in rows if r["density"] == "mahalanobis"} == {"all", "layer3", "layer4", "fc"}
    heatmap = zoo["heatmap"]
    assert zoo["detectors"]["heatmap"]["layer"] == "maps" and set(heatmap["sets"]) == {"clean", "novel", "fgsm"}
    assert heatmap["frame_width"] >= 1 and all(0 <= r["mean"] <= 1 for r in heatmap["sets"].values())
    assert (out / heatmap["figure"]).is_file() and heatmap["figure"] in report["figures"]
    markdown = (out / "results.md").read_text()
    assert "## Fused score vs the baselines" in markdown and "| fgsm |" in markdown and "## OOD heatmaps" in markdown
    assert all(0.0 <= r["video_auroc"] <= 1.0 for r in rows)  # novel and fgsm: each clip's video is known
    assert "## Fused score vs the baselines (video level" in markdown

    skipped = tmp_path / "no_zoo"
    assert main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(skipped),
                 "--surrogate", "none", "--attacks", "fgsm", "--detectors", "none", "--no-progress"]) == 0
    report = json.loads((skipped / "results.json").read_text())
    assert "zoo" not in report and not {r["density"] for r in report["detection"]} & set(DETECTORS)


def test_evaluate_refuses_an_unknown_detector(tiny_bundle, tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(tmp_path / "x"),
              "--detectors", "knn,odn"])
    assert info.value.code == 2 and "did you mean 'odin'" in capsys.readouterr().err
