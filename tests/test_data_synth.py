"""The synthetic dataset on disk: UCF101 layout, real decodable videos, determinism, and the ``clipwatch synth`` CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest

from pipeline.cli.synth import register
from pipeline.data import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES, UCF101, DatasetError, synthesize
from pipeline.data.motions import VideoSpec
from pipeline.data.render import SourceImagery, render_video
from pipeline.data.synth import group_and_clip

TINY = dict(width=64, height=48, num_frames=20)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, videos_per_class=3, seed=0, progress=False, **TINY)


@pytest.fixture(scope="module")
def imagery() -> SourceImagery:
    return SourceImagery(TINY["height"])


def decode_decord(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def decode_opencv(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def manifest_entries(root: Path) -> dict[str, dict]:
    return {entry["path"]: entry for entry in json.loads((root / "synth.json").read_text())["videos"]}


def test_layout_is_ucf101_with_separate_novel_tree(dataset) -> None:
    root, novel_root = dataset.root, dataset.novel_root
    assert novel_root == root / "novel"
    assert (dataset.num_videos, dataset.num_novel_videos) == (3 * len(SYNTH_CLASSES), 3 * len(SYNTH_NOVEL_CLASSES))
    for tree, classes in ((root, SYNTH_CLASSES), (novel_root, SYNTH_NOVEL_CLASSES)):
        names = (tree / "ucfTrainTestlist" / "classInd.txt").read_text().split()
        assert names == [token for i, c in enumerate(classes, 1) for token in (str(i), c)]
        videos = sorted(p.relative_to(tree).as_posix() for p in tree.glob("*/v_*.avi"))
        assert videos == sorted(manifest_entries(tree))
        assert len(videos) == 3 * len(classes)
        for split in (1, 2, 3):
            train, test = UCF101(tree, split, "train"), UCF101(tree, split, "test")
            assert train.classes == list(classes)
            listed = sorted(s.path.relative_to(tree).as_posix() for s in list(train) + list(test))
            assert listed == videos
            assert {s.group for s in test} == {7 * split - 6}  # groups 1, 8, 15 hold the three videos
            assert {s.class_name for s in train} == {s.class_name for s in test} == set(classes)
    assert not {p.name for p in root.iterdir()} & set(SYNTH_NOVEL_CLASSES)
    assert not {p.name for p in novel_root.iterdir()} & set(SYNTH_CLASSES)


def test_manifest_records_settings_and_totals(dataset) -> None:
    manifest = json.loads((dataset.root / "synth.json").read_text())
    assert manifest["generator_version"] and manifest["seed"] == 0
    assert (manifest["width"], manifest["height"], manifest["num_frames"], manifest["fps"]) == (64, 48, 20, 25.0)
    assert manifest["classes"] == list(SYNTH_CLASSES) and manifest["novel_classes"] == list(SYNTH_NOVEL_CLASSES)
    novel = json.loads((dataset.novel_root / "synth.json").read_text())
    assert novel["novel"] is True and novel["classes"] == list(SYNTH_NOVEL_CLASSES)
    files = list(dataset.root.rglob("*.avi"))
    assert dataset.total_bytes == sum(p.stat().st_size for p in files) > 0
    assert len(files) == dataset.num_videos + dataset.num_novel_videos
    assert dataset.seconds_per_video > 0


@pytest.mark.parametrize("relative", ["MoveRight/v_MoveRight_g08_c01.avi", "StandStill/v_StandStill_g15_c01.avi",
                                      "novel/Orbit/v_Orbit_g01_c01.avi"])
def test_videos_decode_with_decord_and_opencv_as_rendered(dataset, imagery, relative: str) -> None:
    path = dataset.root / relative
    with_decord, with_opencv = decode_decord(path), decode_opencv(path)
    assert with_decord.shape == with_opencv.shape == (20, 48, 64, 3)
    assert decord.VideoReader(str(path)).get_avg_fps() == pytest.approx(25.0)
    assert np.abs(with_decord.astype(int) - with_opencv.astype(int)).mean() < 1.0
    entry = manifest_entries(path.parent.parent)[f"{path.parent.name}/{path.name}"]
    rendered, _ = render_video(VideoSpec.from_json(entry["spec"]), imagery)
    error = np.abs(with_decord.astype(int) - rendered.astype(int)).mean()
    assert error < 12.0, f"decoded frames differ from the rendering by {error:.1f} levels on average"
    assert np.abs(with_decord.astype(int) - np.roll(rendered, 5, axis=0).astype(int)).mean() > error


@pytest.mark.parametrize("class_name, axis, sign", [
    ("MoveRight", 1, 1), ("MoveLeft", 1, -1), ("MoveDown", 0, 1), ("MoveUp", 0, -1)])
def test_actor_in_the_decoded_file_moves_as_its_class(dataset, imagery, class_name: str, axis: int,
                                                      sign: int) -> None:
    """Locate the actor in the decoded video as what differs from the same video rendered without it."""
    for relative, entry in manifest_entries(dataset.root).items():
        if not relative.startswith(f"{class_name}/"):
            continue
        spec = VideoSpec.from_json(entry["spec"])
        without_actor, _ = render_video(dataclasses.replace(spec, class_name="Blink", duty=0.0), imagery)
        decoded = decode_decord(dataset.root / relative)
        difference = np.abs(decoded.astype(int) - without_actor.astype(int)).sum(axis=-1).astype(float)
        weight = np.where(difference > 60, difference, 0.0)
        profile = weight.sum(axis=2 - axis)  # (T, positions along the axis)
        centre = (profile * np.arange(profile.shape[1])).sum(axis=1) / profile.sum(axis=1)
        displacement = centre[-3:].mean() - centre[:3].mean()
        assert sign * displacement > 1.0, f"{relative}: actor moved {displacement:+.1f} px along axis {axis}"


def test_same_seed_same_videos_other_seed_different(dataset, tmp_path: Path) -> None:
    subset = dict(videos_per_class=1, classes=["MoveRight", "Grow"], novel_classes=["Orbit"], progress=False, **TINY)
    first = synthesize(tmp_path / "a", seed=0, **subset)
    second = synthesize(tmp_path / "b", seed=0, **subset)
    other = synthesize(tmp_path / "c", seed=1, **subset)
    for relative in ["MoveRight/v_MoveRight_g01_c01.avi", "Grow/v_Grow_g01_c01.avi",
                     "novel/Orbit/v_Orbit_g01_c01.avi"]:
        frames = decode_decord(first.root / relative)
        assert np.array_equal(frames, decode_decord(second.root / relative))
        assert (first.root / relative).read_bytes() == (second.root / relative).read_bytes()
        assert np.abs(frames.astype(int) - decode_decord(other.root / relative).astype(int)).mean() > 5.0
        # A video depends on (seed, class, group, clip) only, not on what else was generated with it.
        assert np.array_equal(frames, decode_decord(dataset.root / relative))
    assert (first.root / "synth.json").read_text() == (second.root / "synth.json").read_text()


def test_actor_scale_shrinks_the_actor_and_keeps_every_other_draw(tmp_path: Path) -> None:
    subset = dict(videos_per_class=2, classes=["MoveRight", "Grow", "StandStill"], novel_classes=(), progress=False,
                  seed=3, **TINY)
    plain = synthesize(tmp_path / "plain", **subset)
    small = synthesize(tmp_path / "small", actor_scale=0.5, **subset)
    before = json.loads((plain.root / "synth.json").read_text())
    after = json.loads((small.root / "synth.json").read_text())
    assert (before["actor_scale"], after["actor_scale"]) == (1.0, 0.5)
    for one, other in zip(before["videos"], after["videos"], strict=True):
        assert other["spec"]["size0"] == pytest.approx(0.5 * one["spec"]["size0"])
        assert {**other["spec"], "size0": None} == {**one["spec"], "size0": None}
    with pytest.raises(DatasetError, match="actor scale"):
        synthesize(tmp_path / "big", actor_scale=1.5, **subset)


def test_groups_fill_every_split_first() -> None:
    first = [group_and_clip(i) for i in range(25)]
    assert sorted(g for g, _ in first) == list(range(1, 26)) and {c for _, c in first} == {1}
    assert [g for g, _ in first[:3]] == [1, 8, 15]
    assert group_and_clip(25) == (1, 2) and group_and_clip(52) == (15, 3)


@pytest.mark.parametrize("settings, reason", [
    (dict(width=63), "even"),
    (dict(classes=["MoveRight", "Dance"]), "unknown synthetic classes"),
    (dict(classes=["MoveRight", "Orbit"]), "not also novel"),
    (dict(videos_per_class=0), "videos per class"),
    (dict(num_frames=1), "at least 2 frames"),
    (dict(seed=-1), "seed"),
])
def test_bad_settings_raise_one_line_errors(tmp_path: Path, settings: dict, reason: str) -> None:
    arguments = dict(videos_per_class=1, progress=False, **TINY) | settings
    with pytest.raises(DatasetError, match=reason) as info:
        synthesize(tmp_path / "out", **arguments)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipwatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    # 56 wide: decord 0.6.0 fails on any 48- or 72-pixel-wide video (any codec).
    argv = ["synth", str(out), "--videos-per-class", "2", "--seed", "3", "--width", "56", "--height", "32",
            "--fps", "15", "--frames", "12", "--classes", "MoveLeft", "StandStill", "--novel-classes", "Blink",
            "--no-progress"]
    assert run_cli(argv) == 0
    assert "wrote 4 videos (2 classes)" in capsys.readouterr().out
    train = UCF101(out, split=1, subset="train")
    assert train.classes == ["MoveLeft", "StandStill"] and len(train) == 2  # groups 1, 8: g08 trains in split 1
    frames = decode_decord(out / "novel/Blink/v_Blink_g08_c01.avi")
    assert frames.shape == (12, 32, 56, 3)
    assert decord.VideoReader(str(out / "MoveLeft/v_MoveLeft_g01_c01.avi")).get_avg_fps() == pytest.approx(15.0)
    assert json.loads((out / "synth.json").read_text())["seed"] == 3
    with pytest.raises(DatasetError, match="not empty"):
        run_cli(argv)
    assert run_cli([*argv, "--overwrite", "--novel-classes"]) == 0


def test_the_yard_world_is_a_separate_deterministic_dataset(tmp_path: Path) -> None:
    """``--world yard``: six motion families of small actors on procedural static-camera yards, in the UCF101
    layout; equal seeds give equal files, and the classes move as their names say."""
    from pipeline.cli import main
    from pipeline.data.yard import YARD_CLASSES, _path

    assert not set(YARD_CLASSES) & set(SYNTH_CLASSES + SYNTH_NOVEL_CLASSES)
    args = ["synth", "--world", "yard", "--videos-per-class", "2", "--frames", "20", "--width", "96", "--height",
            "72", "--seed", "4", "--no-progress"]
    assert main([*args, str(tmp_path / "a")]) == 0 and main([*args, str(tmp_path / "b")]) == 0
    dataset = UCF101(tmp_path / "a", split=1, subset="train")
    assert dataset.classes == list(YARD_CLASSES)
    first = sorted((tmp_path / "a").rglob("*.avi"))
    assert len(first) == 12
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in sorted((tmp_path / "b").rglob("*.avi"))]
    rng = np.random.default_rng(0)
    spans = {name: np.ptp(np.stack(_path(name, rng, 160, 120, 64, 20)), axis=1) for name in YARD_CLASSES}
    assert max(spans["Shiver"]) < 20 < max(spans["Wave"])  # trembling in place vs travelling
    assert spans["Bounce"][1] > 15 and spans["Pendulum"][0] > 30


def test_the_pretraining_corpus_combines_motions_and_keeps_test_families_out(tmp_path: Path) -> None:
    from pipeline.data.motions import trajectory
    from pipeline.data.pretrain import PRETRAIN_CLASSES, PRETRAIN_SYMMETRIES, sample_pretrain_spec, synthesize_pretrain
    from pipeline.data.yard import YARD_CLASSES
    from pipeline.training.symmetry import check_symmetries

    assert len(PRETRAIN_CLASSES) == 81 and "T180RnoneSnone" in PRETRAIN_CLASSES  # MoveLeft is one of its points
    assert not set(PRETRAIN_CLASSES) & set(SYNTH_NOVEL_CLASSES + YARD_CLASSES)
    check_symmetries(PRETRAIN_SYMMETRIES)
    assert PRETRAIN_SYMMETRIES["reverse_time"]["T045RcwSgrow"] == "T225RccwSshrink"
    assert PRETRAIN_SYMMETRIES["flip_horizontal"]["T045RcwSgrow"] == "T135RccwSgrow"
    assert PRETRAIN_SYMMETRIES["flip_vertical"]["T090RnoneSnone"] == "T270RnoneSnone"
    rng = np.random.default_rng(1)
    for name in ("T045RcwSgrow", "T180RnoneSshrink", "TstillRccwSnone", "T270RnoneSgrow"):
        spec = sample_pretrain_spec(name, rng, 128, 96, 40)
        path = trajectory(spec)
        half = 0.5 * path.size
        assert (path.cx - half >= 0).all() and (path.cx + half <= 128).all(), name  # the actor stays in view
        assert (path.cy - half >= 0).all() and (path.cy + half <= 96).all(), name
        dx, dy = path.cx[-1] - path.cx[0], path.cy[0] - path.cy[-1]  # screen y points down
        if name.startswith("T045"):
            assert dx > 3 and dy > 3 and path.angle[-1] < path.angle[0] and path.size[-1] > path.size[0]
        if name.startswith("Tstill"):
            assert dx == dy == 0 and path.angle[-1] > path.angle[0]
    report = synthesize_pretrain(tmp_path / "corpus", videos_per_class=1, num_frames=20, width=64, height=48,
                                 progress=False)
    assert report.num_videos == 81 and len(list((tmp_path / "corpus").rglob("*.avi"))) == 81


def test_the_pretraining_corpus_can_make_every_actor_smaller() -> None:
    from pipeline.data.motions import trajectory
    from pipeline.data.pretrain import sample_pretrain_spec, synthesize_pretrain

    for name in ("T045RcwSnone", "T180RnoneSshrink", "TstillRccwSnone"):  # (a growing actor may be capped)
        plain = sample_pretrain_spec(name, np.random.default_rng(5), 160, 120, 40)
        small = sample_pretrain_spec(name, np.random.default_rng(5), 160, 120, 40, actor_scale=0.5)
        assert small.size0 == pytest.approx(0.5 * plain.size0)
        assert (small.spin, small.growth, small.angle0) == (plain.spin, plain.growth, plain.angle0)
        path = trajectory(small)
        half = 0.5 * path.size
        assert (path.cx - half >= 0).all() and (path.cx + half <= 160).all(), name
    with pytest.raises(DatasetError, match="actor scale"):
        synthesize_pretrain("unused", actor_scale=0)
