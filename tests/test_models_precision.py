"""`prepare_for_inference`: bf16 / channels-last copies that take and give float32, taps and gradients included."""

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.detect import Detector
from pipeline.models import FeatureTap, ModelError, build_model
from pipeline.models.precision import cpu_has_fast_bf16, prepare_for_inference, resolve_precision


def test_precision_names_resolve_per_machine():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ModelError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ModelError, match="expected one of fp32, bf16, fp16, auto"):
        resolve_precision("int4")


def test_a_bf16_copy_takes_float32_gives_float32_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = build_model("r3d-10", 5, width=8).eval()
    prepared, to_input = prepare_for_inference(model, "bf16")
    assert prepared is not model and next(model.parameters()).dtype == torch.float32
    assert next(prepared.parameters()).dtype == torch.bfloat16
    clips = torch.randn(4, 3, 8, 32, 32)
    converted = to_input(clips)
    assert converted.dtype == torch.bfloat16 and converted.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        reference, logits = model(clips), prepared(clips)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, reference, atol=0.05 * reference.abs().max().item())
    with FeatureTap(prepared, ["layer3", "fc"]) as tap:
        _, features = tap(clips)
    with FeatureTap(model, ["layer3", "fc"]) as tap:
        _, exact = tap(clips)
    for name, values in features.items():
        assert values.dtype == torch.float32
        assert torch.corrcoef(torch.stack([values.flatten(), exact[name].flatten()]))[0, 1] > 0.99, name
    pixels = clips.clone().requires_grad_(True)  # attacks differentiate through the casts
    prepared(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.dtype == torch.float32 and pixels.grad.abs().sum() > 0
    same, _ = prepare_for_inference(model, "fp32")
    assert same is model


def test_bundles_record_their_precision_and_detectors_run_in_the_asked_one(tiny_dataset, tiny_model, tmp_path):
    out = tmp_path / "bundle"
    assert main(["fit", "--model", str(tiny_model), "--data", str(tiny_dataset), "--out", str(out), "--layers",
                 "layer3", "fc", "--no-progress", "--false-alarm", "0.1", "--precision", "bf16"]) == 0
    assert json.loads((out / "bundle.json").read_text())["settings"]["precision"] == "bf16"
    assert Detector.load(out).precision == "bf16"
    assert Detector.load(out, precision="fp32").precision == "fp32"


def test_preparing_again_is_refused_or_a_no_op_and_the_input_follows_the_model():
    model = build_model("r3d-10", 3, width=4).eval()
    prepared, to_input = prepare_for_inference(model, "bf16")
    assert prepare_for_inference(prepared, "bf16")[0] is prepared
    with pytest.raises(ModelError, match="prepared for bf16 already"):
        prepare_for_inference(prepared, "fp32")
    prepared.float()  # a later conversion of the prepared copy is followed by its input conversion
    assert to_input(torch.randn(1, 3, 8, 32, 32, dtype=torch.float64)).dtype == torch.float32
    with torch.inference_mode():
        assert prepared(torch.randn(1, 3, 8, 32, 32)).dtype == torch.float32
