"""Weights I/O: safetensors + manifest roundtrip, integrity checks, shipped names, Hara-format checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pipeline.models.io as models_io
from pipeline.fileio import seal_directory
from pipeline.models import ModelManifest, build_model, load_model, save_model, shipped_model_dir
from pipeline.models.errors import ModelNotFoundError, WeightsError
from pipeline.models.io import load_state_dict_file, load_weights

torch.set_num_threads(1)

PREPROCESSING = {"clip_len": 8, "frame_step": 2, "short_side": 40, "crop": 32,
                 "mean": [0.43, 0.40, 0.37], "std": [0.23, 0.22, 0.22]}
CLASSES = ["walk", "run", "fall"]


def trained_like(name: str, **options) -> nn.Module:
    """A model whose BN statistics differ from their defaults, so a lossy roundtrip would show."""
    model = build_model(name, len(CLASSES), **options)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 32, 32))
    return model.eval()


def save(model: nn.Module, directory: Path, name: str = "r3d-18", options: dict | None = None) -> ModelManifest:
    return save_model(
        model, directory, architecture=name, options=options if options is not None else {"width": 4},
        num_classes=len(CLASSES), class_names=CLASSES, preprocessing=PREPROCESSING,
        extra={"epochs": 3, "dataset": "synthetic"},
    )


@pytest.fixture
def saved(tmp_path) -> tuple[nn.Module, Path, ModelManifest]:
    torch.manual_seed(0)
    model = trained_like("r3d-18", width=4)
    directory = tmp_path / "model"
    return model, directory, save(model, directory)


def rewrite_manifest(directory: Path, **changes) -> None:
    path = directory / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_roundtrip_gives_identical_outputs_and_manifest(saved):
    model, directory, manifest = saved
    loaded, loaded_manifest = load_model(directory)
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(clips), model(clips))
    assert loaded_manifest == manifest
    assert not loaded.training and all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    assert manifest.class_names == tuple(CLASSES) and manifest.preprocessing.crop == 32
    assert manifest.preprocessing.mean == (0.43, 0.40, 0.37) and manifest.extra["epochs"] == 3
    on_disk = json.loads((directory / "model.json").read_text())
    assert on_disk["format_version"] == 1 and on_disk["architecture"] == "r3d-18"
    assert on_disk["options"] == {"width": 4} and on_disk["preprocessing"]["frame_step"] == 2
    assert on_disk["sha256"] == hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    assert load_model(directory / "model.json")[1] == manifest


def test_c3d_roundtrip(tmp_path):
    torch.manual_seed(1)
    options = {"width": 4, "fc_dim": 16, "adaptive_pool": True}
    model = build_model("c3d", 3, **options).eval()
    save(model, tmp_path / "c3d", name="c3d", options=options)
    loaded, manifest = load_model(tmp_path / "c3d")
    clips = torch.randn(1, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(clips), model(clips))
    assert manifest.options == options


def test_tampered_weights_detected(saved):
    _, directory, _ = saved
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model\.safetensors: sha256 mismatch .*modified or corrupted"):
        load_model(directory)


def test_unknown_format_version_rejected(saved):
    _, directory, _ = saved
    rewrite_manifest(directory, format_version=2)
    expected = r"model\.json: unsupported format_version 2 \(this clipwatch reads version 1\)"
    with pytest.raises(WeightsError, match=expected):
        load_model(directory)


def test_invalid_manifest_is_one_line_error(saved):
    _, directory, _ = saved
    rewrite_manifest(directory, num_classes=4, preprocessing={**PREPROCESSING, "crop": 0})
    expected = r"invalid manifest: preprocessing\.crop: .*greater than or equal to 1"
    with pytest.raises(WeightsError, match=expected) as info:
        load_model(directory)
    assert "\n" not in str(info.value)
    (directory / "model.json").write_text("{not json")
    with pytest.raises(WeightsError, match="cannot read manifest"):
        load_model(directory)


def test_weights_that_do_not_fit_the_architecture(saved):
    _, directory, _ = saved
    rewrite_manifest(directory, options={"width": 8})
    with pytest.raises(WeightsError, match=r"weights do not fit ResNet3D: shape mismatch \(\d+\): conv1\.weight"):
        load_model(directory)

    rewrite_manifest(directory, options={"width": 4})
    weights = directory / "model.safetensors"
    state = load_file(weights)
    state["extra.weight"] = torch.zeros(2)
    del state["fc.bias"]
    save_file(state, weights)
    rewrite_manifest(directory, sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    with pytest.raises(WeightsError, match=r"missing keys \(1\): fc\.bias; unexpected keys \(1\): extra\.weight"):
        load_model(directory)


def test_save_rejects_mismatched_model_and_bad_fields(tmp_path):
    model = build_model("r3d-18", 3, width=4)
    expected = r"wrong: model given as 'r3d-34': weights do not fit ResNet3D: missing keys \(96\): layer1\.2\.conv1\."
    with pytest.raises(WeightsError, match=expected):
        save(model, tmp_path / "wrong", name="r3d-34")
    with pytest.raises(WeightsError, match="cannot build 'x3d'"):
        save(model, tmp_path / "wrong", name="x3d")
    with pytest.raises(WeightsError, match="class_names for num_classes=3"):
        save_model(model, tmp_path / "wrong", architecture="r3d-18", options={"width": 4}, num_classes=3,
                   class_names=["a"], preprocessing=PREPROCESSING)
    with pytest.raises(WeightsError, match=r"preprocessing: .*mean has 3 channels but std has 2"):
        save_model(model, tmp_path / "wrong", architecture="r3d-18", options={"width": 4}, num_classes=3,
                   class_names=CLASSES, preprocessing={**PREPROCESSING, "std": [0.2, 0.2]})
    with pytest.raises(WeightsError, match="plain JSON values"):
        save_model(model, tmp_path / "wrong", architecture="r3d-18", options={"width": 4}, num_classes=3,
                   class_names=CLASSES, preprocessing=PREPROCESSING, extra={"optimizer": object()})
    assert not (tmp_path / "wrong").exists()


def test_missing_model_paths(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match=r"nowhere: no saved model here \(expected a directory with model"):
        load_model(tmp_path / "nowhere")
    assert shipped_model_dir("default").parts[-4:] == ("pipeline", "assets", "models", "default")
    monkeypatch.setattr(models_io, "shipped_model_dir", lambda name: tmp_path / "assets" / name)
    expected = r"shipped model 'default-surrogate' not found at .*assets/default-surrogate"
    with pytest.raises(ModelNotFoundError, match=expected) as info:
        load_model("default-surrogate")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_shipped_name_resolves_to_assets_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(models_io, "shipped_model_dir", lambda name: tmp_path / "assets" / name)
    model = trained_like("r3d-10", width=4)
    manifest = save(model, tmp_path / "assets" / "default", name="r3d-10")
    with pytest.raises(WeightsError, match=r"digests\.json: missing, .*seal_directory\('"):
        load_model("default")  # shipped models must be sealed
    seal_directory(tmp_path / "assets" / "default")
    loaded, loaded_manifest = load_model("default")
    assert loaded_manifest == manifest
    clips = torch.randn(1, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(clips), model(clips))


def hara_checkpoint(model: nn.Module, path: Path) -> None:
    """Write a checkpoint the way 3D-ResNets-PyTorch's main.py does: DataParallel keys plus optimizer state."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [50, 100, 150])
    wrapped = nn.DataParallel(model)
    torch.save({"epoch": 200, "arch": "resnet-18", "state_dict": wrapped.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)


def test_hara_checkpoint_loads_into_full_r3d18(tmp_path):
    torch.manual_seed(3)
    source = build_model("r3d-18", 400)
    path = tmp_path / "r3d18_K_200ep.pth"
    hara_checkpoint(source, path)
    state = load_state_dict_file(path)
    assert "conv1.weight" in state and not any(key.startswith("module.") for key in state)
    target = build_model("r3d-18", 400)
    target.load_state_dict(state)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_weights_with_excluded_head(tmp_path):
    torch.manual_seed(4)
    source = trained_like("r3d-18", width=4)
    path = tmp_path / "kinetics.pth"
    hara_checkpoint(source, path)
    target = build_model("r3d-18", 7, width=4)
    expected = r"kinetics\.pth: weights do not fit ResNet3D: shape mismatch \(2\): fc\.weight"
    with pytest.raises(WeightsError, match=expected):
        load_weights(target, path)
    fc_before = target.fc.weight.clone()
    load_weights(target, path, exclude=["fc."])
    assert torch.equal(target.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert torch.equal(target.fc.weight, fc_before)
    safetensors_path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), safetensors_path)
    assert load_weights(build_model("r3d-18", 3, width=4), safetensors_path).fc.bias.equal(source.fc.bias)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_or_broken_checkpoints_rejected(tmp_path, capsys):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload()}, unsafe)
    with pytest.raises(WeightsError, match=r"unsafe\.pth: refused by torch\.load\(weights_only=True\)") as info:
        load_state_dict_file(unsafe)
    assert "\n" not in str(info.value) and "this must never run" not in capsys.readouterr().out
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pth: (not a readable torch checkpoint|refused)"):
        load_state_dict_file(garbage)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01\x02")
    with pytest.raises(WeightsError, match=r"broken\.safetensors: not a readable safetensors file"):
        load_state_dict_file(broken)
    mixed = tmp_path / "mixed.pth"
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, mixed)
    with pytest.raises(WeightsError, match="entries that are not tensors: step"):
        load_state_dict_file(mixed)
    with pytest.raises(ModelNotFoundError, match="weights file not found"):
        load_state_dict_file(tmp_path / "absent.pth")


def test_sealed_model_directory_refuses_edited_added_or_removed_files(saved):
    _, directory, manifest = saved
    seal_directory(directory)
    assert load_model(directory)[1] == manifest
    rewrite_manifest(directory, preprocessing={**PREPROCESSING, "std": [0.5, 0.5, 0.5]})
    with pytest.raises(WeightsError, match=r"model\.json: SHA-256 mismatch \(model directory edited after"):
        load_model(directory)
    seal_directory(directory)  # the owner trusts the edit
    assert load_model(directory)[1].preprocessing.std == (0.5, 0.5, 0.5)
    (directory / "notes.txt").write_text("x")
    with pytest.raises(WeightsError, match=r"notes\.txt: not listed in digests\.json"):
        load_model(directory)
    (directory / "notes.txt").unlink()
    (directory / "model.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no saved model here"):
        load_model(directory)


def test_shipped_models_are_sealed():
    for name in models_io.SHIPPED_MODELS:
        assert (shipped_model_dir(name) / "digests.json").is_file()
        assert models_io.resolve_model_dir(name) == shipped_model_dir(name)
