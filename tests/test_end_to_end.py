"""synth -> train -> fit -> attack -> evaluate through the CLI: structure and sanity of the results.

The train step runs the tiny ``smoke`` preset (seconds; it cannot learn much); fit, attack and evaluate use the
shipped ``default`` model, trained by the same command, so that attacks have accuracy to destroy.
"""

import json

import numpy as np
import pytest

from pipeline.attacks import load_attacked_clips
from pipeline.cli import main
from pipeline.data.tamper import TAMPERING
from pipeline.detect.zoo import DETECTORS
from pipeline.models import load_model

DENSITIES = {"gmm", "sep", "tied", "logsumexp", "fused", "softmax", *DETECTORS}  # the bundle's rows and the zoo's


def test_synth_train_fit_attack_evaluate(tmp_path):
    data, model, bundle, results = (tmp_path / name for name in ("data", "model", "bundle", "results"))
    assert main(["synth", str(data), "--videos-per-class", "4", "--novel-classes", "Orbit", "ZigZag",
                 "--novel-videos-per-class", "2", "--seed", "11", "--no-progress"]) == 0
    assert main(["train", str(data), "--out", str(model), "--preset", "smoke", "--seed", "0", "--no-progress"]) == 0
    trained, manifest = load_model(model)
    assert manifest.extra["training"]["seed"] == 0 and (model / "metrics.json").exists()

    assert main(["fit", "--model", "default", "--data", str(data), "--out", str(bundle), "--layers", "layer3",
                 "avgpool", "fc", "--stride", "8", "--false-alarm", "0.1", "--no-progress"]) == 0
    attacked = tmp_path / "fgsm.npz"
    assert main(["attack", "--model", "default", "--data", str(data), "--attack", "fgsm", "--out", str(attacked),
                 "--no-progress"]) == 0
    assert load_attacked_clips(attacked).frames.dtype == np.uint8
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(data), "--out", str(results),
                 "--surrogate", "default-surrogate", "--ood", f"user_fgsm={attacked}", "--framing-epochs", "8",
                 "--no-progress"]) == 0

    report = json.loads((results / "results.json").read_text())
    accuracy = report["accuracy"]
    tampered = {f"tamper_{kind}" for kind in TAMPERING}  # made from the test clips by default
    assert set(accuracy) == {"clean", "framing_whitebox", "framing_blackbox", "fgsm", "user_fgsm"} | tampered
    assert accuracy["clean"] >= 0.6
    assert accuracy["framing_whitebox"] < accuracy["clean"]
    assert accuracy["fgsm"] < accuracy["clean"] - 0.2
    rows = report["detection"]
    assert {r["ood_set"] for r in rows} == {"novel", "framing_whitebox", "framing_blackbox", "fgsm", "user_fgsm"} | tampered
    assert {r["density"] for r in rows} == DENSITIES
    for row in rows:
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0
        assert 0.0 <= row["detection_error"] <= 0.5
    assert len({round(r["auroc"], 6) for r in rows}) > 5, "scores must not be constant"
    assert all(("video_auroc" in r) == (r["ood_set"] != "user_fgsm") for r in rows)  # a user's clips: no videos
    whitebox = [r for r in rows if r["ood_set"] == "framing_whitebox" and r["density"] in ("sep", "gmm")]
    assert max(r["auroc"] for r in whitebox) > 0.5
    assert {r["layer"] for r in report["likelihood_accuracy"]} == {"layer3", "avgpool", "fc", "output"}
    assert 0.0 <= report["false_alarm"]["measured"] <= 1.0
    verdicts = {r["set"]: r for r in report["verdicts"]}
    assert set(verdicts) == {"clean", "novel", "framing_whitebox", "framing_blackbox", "fgsm", "user_fgsm"} | tampered
    for row in verdicts.values():
        assert row["normal"] + row["novel"] + row["adversarial"] == pytest.approx(1.0)
        assert row["flagged"] == pytest.approx(1.0 - row["normal"])
    assert verdicts["framing_whitebox"]["flagged"] > verdicts["clean"]["flagged"]
    calibration = report["false_alarm"]["p_value_calibration"]
    assert [r["nominal"] for r in calibration] == sorted(r["nominal"] for r in calibration)
    assert [r["measured"] for r in calibration] == sorted(r["measured"] for r in calibration)
    at_alpha = next(r["measured"] for r in calibration if r["nominal"] == report["false_alarm"]["requested"])
    assert at_alpha == pytest.approx(report["false_alarm"]["measured"])  # flagged exactly when p <= alpha
    assert "p_values.png" in report["figures"]
    for figure in report["figures"]:
        assert (results / figure).stat().st_size > 1000
    assert "| framing_whitebox |" in (results / "results.md").read_text()
    groups = report["fusion"]
    assert groups["fused_groups"] and not set(groups["fused_groups"]) & set(groups["left_out"])
    assert f"Fused score: the lowest of the groups {', '.join(groups['fused_groups'])}" in \
        (results / "results.md").read_text()
