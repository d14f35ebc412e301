"""Registry, architectures, parameter counts (closed form vs published figures), shapes and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.models import available_models, build_model, default_layers
from pipeline.models.c3d import C3D
from pipeline.models.errors import InputShapeError, UnknownModelError
from pipeline.models.resnet3d import ResNet3D

torch.set_num_threads(1)

BLOCKS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, num_classes: int, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes, **options)


def c3d_formula(num_classes: int, width: int = 64, fc_dim: int = 4096) -> int:
    channels = [3, width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width, 8 * width, 8 * width]
    convs = sum(cin * cout * 27 + cout for cin, cout in zip(channels[:-1], channels[1:], strict=True))
    pool5_features = 8 * width * 1 * 4 * 4
    return convs + pool5_features * fc_dim + fc_dim + fc_dim * fc_dim + fc_dim + fc_dim * num_classes + num_classes


def r3d_formula(depth: int, num_classes: int, width: int = 64, shortcut: str = "B", t_size: int = 7) -> int:
    """Hara et al.'s layout counted by hand: stem, blocks with BN (2 params/channel), projections, fc."""
    kind, stages = BLOCKS[depth]
    expansion = 1 if kind == "basic" else 4
    total = 3 * width * t_size * 49 + 2 * width
    in_planes = width
    for stage, blocks in enumerate(stages):
        planes = width * 2**stage
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            if kind == "basic":
                total += 27 * in_planes * planes + 2 * planes + 27 * planes * planes + 2 * planes
            else:
                total += in_planes * planes + 2 * planes + 27 * planes * planes + 2 * planes
                total += planes * 4 * planes + 2 * 4 * planes
            if shortcut == "B" and (stride != 1 or in_planes != planes * expansion):
                total += in_planes * planes * expansion + 2 * planes * expansion
            in_planes = planes * expansion
    return total + in_planes * num_classes + num_classes


def hara_keys(depth: int) -> set[str]:
    """State-dict keys of kenshohara/3D-ResNets-PyTorch models/resnet.py (shortcut B), from its naming rules."""
    kind, stages = BLOCKS[depth]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{s}" for s in bn)}
    n_convs, expansion = (2, 1) if kind == "basic" else (3, 4)
    in_planes = 64
    for stage, blocks in enumerate(stages):
        planes = 64 * 2**stage
        for index in range(blocks):
            prefix = f"layer{stage + 1}.{index}"
            for conv in range(1, n_convs + 1):
                keys |= {f"{prefix}.conv{conv}.weight", *(f"{prefix}.bn{conv}.{s}" for s in bn)}
            if index == 0 and (stage > 0 or in_planes != planes * expansion):
                keys |= {f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{s}" for s in bn)}
            in_planes = planes * expansion
    return keys


def test_registry_names_and_default_layers():
    assert available_models() == ["c3d", "r3d-10", "r3d-18", "r3d-34", "r3d-50", "r3d-101", "x3d_xs", "x3d_s", "x3d_m",
                                  "slow_r50", "r2plus1d_r50"]
    assert default_layers("x3d_s") == ["blocks.3", "blocks.4", "blocks.5"]
    assert default_layers("c3d") == ["conv4b", "conv5b", "fc7", "fc8"]
    assert default_layers("r3d-50") == ["layer2", "layer3", "avgpool", "fc"]
    assert isinstance(build_model("c3d", 3, width=4, fc_dim=8), C3D)
    assert isinstance(build_model("r3d-10", 3, width=4), ResNet3D)


def test_pytorchvideo_models_without_the_extra_say_how_to_get_it():
    try:
        import pytorchvideo  # noqa: F401
    except ImportError:
        with pytest.raises(UnknownModelError, match=r"pip install 'clipwatch\[pytorchvideo\]'"):
            build_model("x3d_s", 3)
    else:  # the extras environment (tests_extras covers the models themselves)
        assert build_model("x3d_s", 3) is not None


def test_registry_errors_name_the_problem():
    with pytest.raises(UnknownModelError, match=r"unknown model 'r3d-99'; available: c3d, r3d-10"):
        build_model("r3d-99", 10)
    with pytest.raises(UnknownModelError, match=r"unknown option\(s\) depth; valid: width, widen_factor"):
        build_model("r3d-18", 10, depth=50)
    with pytest.raises(UnknownModelError, match="num_classes must be a positive integer"):
        build_model("c3d", 0)
    with pytest.raises(UnknownModelError, match="shortcut_type must be 'A' or 'B'"):
        build_model("r3d-18", 10, width=4, shortcut_type="C")
    with pytest.raises(ValueError, match="unknown model"):
        default_layers("vgg")


def test_c3d_parameter_count_matches_reference():
    model = on_meta("c3d", 101)
    assert n_params(model) == c3d_formula(101) == 78_409_573
    assert abs(n_params(model) / 78.4e6 - 1) < 0.005
    assert model.fc6.in_features == 512 * 1 * 4 * 4


@pytest.mark.parametrize(
    ("depth", "num_classes", "shortcut", "published"),
    [
        (18, 400, "B", 33.4e6),  # R3D-18 as usually quoted (Kinetics-400 head)
        (18, 400, "A", 33.2e6),  # Hara et al. CVPR 2018, Table 2 (shortcut A)
        (34, 400, "A", 63.5e6),
        (50, 101, "B", 46.4e6),  # the published 46.4 M matches a 101-class head, not 400 (47.0 M)
        (101, 101, "B", 85.5e6),
    ],
)
def test_r3d_parameter_counts_match_formula_and_publications(depth, num_classes, shortcut, published):
    model = on_meta(f"r3d-{depth}", num_classes, shortcut_type=shortcut)
    assert n_params(model) == r3d_formula(depth, num_classes, shortcut=shortcut)
    assert abs(n_params(model) / published - 1) < 0.005


def test_r3d_counts_for_other_options():
    assert n_params(on_meta("r3d-50", 400)) == r3d_formula(50, 400) == 47_018_576
    assert n_params(on_meta("r3d-18", 400)) == 33_409_104
    assert n_params(on_meta("r3d-18", 10, width=16)) == r3d_formula(18, 10, width=16)
    assert n_params(on_meta("r3d-34", 5, width=8, conv1_t_size=3)) == r3d_formula(34, 5, width=8, t_size=3)
    assert n_params(on_meta("c3d", 7, width=8, fc_dim=64)) == c3d_formula(7, width=8, fc_dim=64)


@pytest.mark.parametrize("depth", [10, 18, 34, 50, 101])
def test_r3d_state_dict_keys_follow_hara_layout(depth):
    model = on_meta(f"r3d-{depth}", 400)
    state = model.state_dict()
    assert set(state) == hara_keys(depth)
    assert tuple(state["conv1.weight"].shape) == (64, 3, 7, 7, 7)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool3d)


def test_shortcut_a_has_no_projection_and_pads_channels():
    model = build_model("r3d-18", 4, width=4, shortcut_type="A").eval()
    assert not any("downsample" in key for key in model.state_dict())
    x = torch.randn(1, 4, 4, 6, 6)
    shortcut = model.layer2[0].downsample(x)
    assert shortcut.shape == (1, 8, 2, 3, 3)
    assert torch.equal(shortcut[:, :4], x[:, :, ::2, ::2, ::2])
    assert torch.count_nonzero(shortcut[:, 4:]) == 0
    assert model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("name", ["r3d-10", "r3d-18", "r3d-34", "r3d-50", "r3d-101"])
@pytest.mark.parametrize("shape", [(8, 32, 32), (5, 40, 56)])
def test_r3d_forward_shapes_any_input_size(name, shape):
    model = build_model(name, 7, width=4).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_small_cpu_variant_forward():
    model = build_model("r3d-18", 10, width=16).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 16, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    ("options", "expected_grid"),
    [({}, (1, 2, 2)), ({"no_max_pool": True}, (2, 4, 4)), ({"no_max_pool": True, "conv1_t_stride": 2}, (1, 4, 4))],
)
def test_r3d_stem_options_change_resolution(options, expected_grid):
    model = build_model("r3d-10", 3, width=4, **options).eval()
    seen = {}
    model.layer4.register_forward_hook(lambda module, inputs, output: seen.update(shape=tuple(output.shape)))
    with torch.inference_mode():
        model(torch.randn(1, 3, 16, 64, 64))
    assert seen["shape"] == (1, 32, *expected_grid)


def test_r3d_in_channels_and_widen_factor():
    model = build_model("r3d-18", 2, width=4, widen_factor=2.0, in_channels=1).eval()
    assert model.conv1.weight.shape == (8, 1, 7, 7, 7)
    assert model.fc.in_features == 64
    assert model(torch.randn(1, 1, 8, 32, 32)).shape == (1, 2)


def test_c3d_reference_and_adaptive_inputs():
    model = build_model("c3d", 5, width=4, fc_dim=16).eval()
    adaptive = build_model("c3d", 5, width=4, fc_dim=16, adaptive_pool=True).eval()
    adaptive.load_state_dict(model.state_dict())
    clips = torch.randn(2, 3, 16, 112, 112)
    with torch.inference_mode():
        assert torch.equal(model(clips), adaptive(clips))
        assert adaptive(torch.randn(2, 3, 16, 64, 64)).shape == (2, 5)
        assert adaptive(torch.randn(1, 3, 8, 32, 48)).shape == (1, 5)
        with pytest.raises(InputShapeError, match=r"gives 288 pool5 features, fc6 needs 512 .*adaptive_pool=True"):
            model(torch.randn(1, 3, 16, 64, 64))


@pytest.mark.parametrize("name", ["c3d", "r3d-18"])
def test_input_shape_errors(name):
    model = build_model(name, 3, width=4, **({"fc_dim": 8} if name == "c3d" else {}))
    with pytest.raises(InputShapeError, match=r"expects clips of shape \(N, 3, T, H, W\), got \(3, 16, 112, 112\)"):
        model(torch.randn(3, 16, 112, 112))
    with pytest.raises(InputShapeError, match=r"got \(1, 1, 16, 112, 112\)"):
        model(torch.randn(1, 1, 16, 112, 112))


def test_r3d_initialisation_recipe():
    model = build_model("r3d-18", 3, width=16)
    conv = model.layer4[1].conv2.weight
    expected_std = math.sqrt(2.0 / (conv.shape[0] * 27))  # kaiming normal, fan_out, ReLU gain
    assert abs(conv.std().item() / expected_std - 1) < 0.03
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize("name", ["r3d-18", "r3d-50"])
def test_zero_init_residual_makes_blocks_identity(name):
    model = build_model(name, 3, width=4, zero_init_residual=True).eval()
    last_bn = "bn2" if name == "r3d-18" else "bn3"
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            assert torch.count_nonzero(getattr(block, last_bn).weight) == 0
            assert torch.all(block.bn1.weight == 1)
    identity_block = model.layer2[1]
    x = torch.randn(1, identity_block.conv1.in_channels, 2, 4, 4)
    with torch.inference_mode():
        assert torch.equal(identity_block(x), torch.relu(x))


@pytest.mark.parametrize("name", ["c3d", "r3d-50"])
def test_backward_reaches_every_parameter_and_input(name):
    torch.manual_seed(0)  # a width-4 C3D can, for an unlucky draw, zero every input gradient through dead ReLUs
    options = {"width": 4, "fc_dim": 8, "adaptive_pool": True} if name == "c3d" else {"width": 4}
    model = build_model(name, 3, **options).train()
    clips = torch.randn(2, 3, 8, 32, 32, requires_grad=True)
    model(clips).logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert clips.grad is not None and clips.grad.abs().sum() > 0
