"""FeatureTap: shapes, pooling, equality with a manual step-by-step forward, grad mode, hooks and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.density.pooling import pool_features
from pipeline.models import FeatureTap, ModelError, available_models, build_model, default_layers
from pipeline.models.errors import UnknownLayerError
from pipeline.models.pytorchvideo import HUB
from pipeline.models.taps import layer_names

torch.set_num_threads(1)


def pooled_size(channels: int, grid: tuple[int, ...], factor: int) -> int:
    return channels * math.prod(math.ceil(size / min(factor, size)) for size in grid)


@pytest.fixture(scope="module")
def r3d() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("r3d-18", 6, width=8).eval()
    for module in model.modules():  # non-trivial running stats, so eval-mode BN is not the identity
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def c3d() -> nn.Module:
    torch.manual_seed(1)
    return build_model("c3d", 4, width=4, fc_dim=24, adaptive_pool=True).eval()


def r3d_manual(model: nn.Module, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        stem = model.bn1(model.conv1(clips))
        x = model.maxpool(torch.relu(stem))
        layer3 = model.layer3(model.layer2(model.layer1(x)))
        layer4 = model.layer4(layer3)
        avgpool = model.avgpool(layer4)
        return {"bn1": stem, "layer3": layer3, "layer4": layer4, "avgpool": avgpool, "fc": model.fc(avgpool.flatten(1))}


def c3d_manual(model: nn.Module, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    relu = torch.relu
    with torch.inference_mode():
        x = model.pool1(relu(model.conv1a(clips)))
        x = model.pool2(relu(model.conv2a(x)))
        x = model.pool3(relu(model.conv3b(relu(model.conv3a(x)))))
        x = model.pool4(relu(model.conv4b(relu(model.conv4a(x)))))
        conv5b = model.conv5b(relu(model.conv5a(x)))
        pool5 = model.pool5(relu(conv5b))
        fc6 = model.fc6(model.adaptive_pool(pool5).flatten(1))
        fc7 = model.fc7(relu(fc6))
        return {"conv5b": conv5b, "pool5": pool5, "fc6": fc6, "fc7": fc7, "fc8": model.fc8(relu(fc7))}


def test_r3d_tap_shapes_and_values_match_manual_forward(r3d):
    clips = torch.randn(2, 3, 16, 64, 64)
    layers = ["bn1", "layer3", "layer4", "avgpool", "fc"]
    with FeatureTap(r3d, layers) as tap:
        logits, features = tap(clips)
    manual = r3d_manual(r3d, clips)
    assert list(features) == layers
    assert {name: f.shape[1] for name, f in features.items()} == {
        "bn1": pooled_size(8, (16, 32, 32), 4),
        "layer3": pooled_size(32, (2, 4, 4), 4),
        "layer4": pooled_size(64, (1, 2, 2), 4),
        "avgpool": 64,
        "fc": 6,
    }
    for name, feature in features.items():
        assert feature.dtype == torch.float32 and feature.shape[0] == 2
        torch.testing.assert_close(feature, pool_features(manual[name], 4))
    torch.testing.assert_close(logits, manual["fc"])
    assert (features["bn1"] < 0).any(), "a tap before an in-place ReLU must keep the pre-activation values"


def test_pool_factor_controls_pooling(r3d):
    clips = torch.randn(1, 3, 16, 64, 64)
    manual = r3d_manual(r3d, clips)
    with FeatureTap(r3d, ["layer3"], pool_factor=1) as raw, FeatureTap(r3d, ["layer3"], pool_factor=2) as half:
        flat = raw(clips)[1]["layer3"]
        pooled = half(clips)[1]["layer3"]
    torch.testing.assert_close(flat, manual["layer3"].flatten(1))
    assert pooled.shape == (1, pooled_size(32, (2, 4, 4), 2)) == (1, 128)
    torch.testing.assert_close(pooled, pool_features(manual["layer3"], 2))


def test_c3d_tap_matches_manual_forward(c3d):
    clips = torch.randn(2, 3, 16, 64, 64)
    layers = ["conv5b", "pool5", "fc6", "fc7", "fc8"]
    with FeatureTap(c3d, layers) as tap:
        logits, features = tap(clips)
    manual = c3d_manual(c3d, clips)
    assert features["conv5b"].shape == (2, pooled_size(32, (2, 4, 4), 4))
    assert features["pool5"].shape == (2, pooled_size(32, (1, 3, 3), 4))
    assert features["fc6"].shape == features["fc7"].shape == (2, 24)
    for name in layers:
        torch.testing.assert_close(features[name], pool_features(manual[name], 4))
    torch.testing.assert_close(logits, manual["fc8"])
    assert (features["fc6"] < 0).any(), "fc6 is tapped before the shared ReLU"


@pytest.mark.parametrize("name", [name for name in available_models() if name not in HUB])  # HUB: tests_extras
def test_default_layers_are_tappable(name):
    options = {"width": 4, "fc_dim": 8, "adaptive_pool": True} if name == "c3d" else {"width": 4}
    model = build_model(name, 3, **options).eval()
    assert set(default_layers(name)) <= set(layer_names(model))
    with FeatureTap(model, default_layers(name)) as tap:
        logits, features = tap(torch.randn(1, 3, 8, 32, 32))
    assert logits.shape == (1, 3) and features[default_layers(name)[-1]].shape == (1, 3)


class TinyImageNet(nn.Module):
    """A user's own 2D model, to show taps work on any module with named submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 7, 3, stride=2))
        self.unused = nn.Linear(2, 2)
        self.head = nn.Linear(7, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def test_custom_module_tap_matches_submodule_outputs():
    torch.manual_seed(2)
    model = TinyImageNet().eval()
    images = torch.randn(3, 3, 10, 9)
    with FeatureTap(model, ["features.0", "features", "head"], pool_factor=2) as tap:
        logits, features = tap(images)
    with torch.inference_mode():
        first = model.features[0](images)
        last = model.features(images)
        expected_logits = model(images)
    torch.testing.assert_close(features["features.0"], pool_features(first, 2))
    assert features["features.0"].shape == (3, 5 * 5 * 5)
    assert features["features"].shape == (3, 7 * 2 * 2)
    torch.testing.assert_close(features["features"], pool_features(last, 2))
    torch.testing.assert_close(features["head"], expected_logits)
    torch.testing.assert_close(logits, expected_logits)
    assert "features.2" in layer_names(model) and "" not in layer_names(model)


def test_default_mode_is_inference_and_grad_mode_backpropagates(r3d):
    clips = torch.randn(1, 3, 8, 32, 32)
    with FeatureTap(r3d, ["layer4", "fc"]) as tap:
        logits, features = tap(clips)
    assert logits.is_inference() and features["layer4"].is_inference() and not logits.requires_grad

    clips.requires_grad_(True)
    with FeatureTap(r3d, ["layer4", "fc"], enable_grad=True) as tap:
        logits, features = tap(clips)
    assert logits.requires_grad and features["layer4"].requires_grad
    (grad_via_tap,) = torch.autograd.grad(logits[0, 2], clips, retain_graph=True)
    (grad_plain,) = torch.autograd.grad(r3d(clips)[0, 2], clips)
    torch.testing.assert_close(grad_via_tap, grad_plain)
    (grad_features,) = torch.autograd.grad(features["layer4"].sum(), clips)
    assert grad_features.abs().sum() > 0


def test_outputs_are_float32_for_double_models():
    model = TinyImageNet().double().eval()
    with FeatureTap(model, ["features", "head"]) as tap:
        logits, features = tap(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert logits.dtype == features["features"].dtype == features["head"].dtype == torch.float32


def test_hooks_removed_on_close_and_idle_outside_calls():
    model = TinyImageNet().eval()
    tap = FeatureTap(model, ["features.0", "head"])
    assert len(model.features[0]._forward_hooks) == 1 and len(model.head._forward_hooks) == 1
    images = torch.randn(1, 3, 6, 6)
    model(images)
    model(images)  # plain forwards between tap calls capture nothing and raise nothing
    assert tap(images)[1]["head"].shape == (1, 3)
    with tap:
        pass
    assert not model.features[0]._forward_hooks and not model.head._forward_hooks
    tap.close()
    with pytest.raises(ModelError, match="FeatureTap is closed"):
        tap(images)


def test_hooks_removed_when_forward_raises():
    model = TinyImageNet().eval()
    with pytest.raises(RuntimeError), FeatureTap(model, ["head"]) as tap:
        tap(torch.randn(1, 4, 6, 6))
    assert not model.head._forward_hooks


def test_unknown_layer_error_lists_available_names(r3d):
    expected = (r"ResNet3D has no layer 'layer5'; available: conv1, bn1, relu, maxpool, "
                r"layer1, layer2, layer3, layer4, avgpool, fc \(\d+ submodules in all")
    with pytest.raises(UnknownLayerError, match=expected):
        FeatureTap(r3d, ["layer4", "layer5"])
    with pytest.raises(UnknownLayerError, match=r"available under 'layer3': layer3\.0, layer3\.1 "):
        FeatureTap(r3d, ["layer3.2.conv1"])
    assert not r3d.layer4._forward_hooks, "a failed construction must not leave hooks behind"


def test_tap_argument_and_runtime_errors(r3d):
    with pytest.raises(UnknownLayerError, match="at least one layer"):
        FeatureTap(r3d, [])
    with pytest.raises(UnknownLayerError, match="repeat"):
        FeatureTap(r3d, ["fc", "fc"])
    with pytest.raises(ModelError, match="pool_factor must be >= 1"):
        FeatureTap(r3d, ["fc"], pool_factor=0)
    with FeatureTap(r3d, ["layer1.0.relu"]) as tap, pytest.raises(ModelError, match="ran more than once"):
        tap(torch.randn(1, 3, 8, 32, 32))
    with FeatureTap(TinyImageNet(), ["unused"]) as tap, pytest.raises(ModelError, match="unused did not run"):
        tap(torch.randn(1, 3, 6, 6))
