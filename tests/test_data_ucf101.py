"""The UCF101 loader on a miniature tree in the official format: three splits, CRLF lists, and every kind of error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.data import UCF101, DatasetError, VideoSample, labelled_videos, write_annotations
from pipeline.data.ucf101 import split_test_groups

# Official quirk kept on purpose: the HandstandPushups folder holds files named v_HandStandPushups_*.
CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
FILE_CLASS = {"ApplyEyeMakeup": "ApplyEyeMakeup", "Archery": "Archery", "HandstandPushups": "HandStandPushups"}
GROUPS = [1, 5, 8, 12, 15, 21, 22, 25]
CLIPS = [1, 2]


def relative(class_name: str, group: int, clip: int) -> str:
    return f"{class_name}/v_{FILE_CLASS[class_name]}_g{group:02d}_c{clip:02d}.avi"


def make_tree(root: Path, annotation_dir: Path | None = None) -> Path:
    """Tiny placeholder videos plus official-style lists (CRLF, classInd written out of order)."""
    annotation_dir = annotation_dir or root / "ucfTrainTestlist"
    annotation_dir.mkdir(parents=True)
    entries = [(c, g, k) for c in CLASSES for g in GROUPS for k in CLIPS]
    for class_name, group, clip in entries:
        path = root / relative(class_name, group, clip)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    crlf = "\r\n"
    order = [2, 0, 1]
    (annotation_dir / "classInd.txt").write_text(crlf.join(f"{i + 1} {CLASSES[i]}" for i in order) + crlf)
    for split in (1, 2, 3):
        tested = split_test_groups(split)
        train = [f"{relative(c, g, k)} {CLASSES.index(c) + 1}" for c, g, k in entries if g not in tested]
        test = [relative(c, g, k) for c, g, k in entries if g in tested]
        (annotation_dir / f"trainlist{split:02d}.txt").write_text(crlf.join(train) + crlf)
        (annotation_dir / f"testlist{split:02d}.txt").write_text(crlf.join(test) + crlf)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "UCF-101")


def edit_list(tree: Path, name: str, line_index: int, new_line: str) -> None:
    path = tree / "ucfTrainTestlist" / name
    lines = path.read_text().splitlines()
    lines[line_index] = new_line
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("split", [1, 2, 3])
def test_splits_partition_the_videos_by_group(tree: Path, split: int) -> None:
    train, test = UCF101(tree, split=split, subset="train"), UCF101(tree, split=split, subset="test")
    assert train.classes == test.classes == CLASSES
    tested = set(range(7 * (split - 1) + 1, 7 * split + 1))
    assert {s.group for s in test} == tested & set(GROUPS)
    assert {s.group for s in train} == set(GROUPS) - tested
    every = {(c, g, k) for c in CLASSES for g in GROUPS for k in CLIPS}
    assert {(s.class_name, s.group, s.clip) for s in list(train) + list(test)} == every
    assert len(train) + len(test) == len(every)
    assert not {s.path for s in train} & {s.path for s in test}


def test_samples_carry_path_label_group_and_clip(tree: Path) -> None:
    dataset = UCF101(tree, split=1, subset="test")
    sample = dataset[0]
    assert isinstance(sample, VideoSample)
    assert sample == VideoSample(path=tree / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", label=0,
                                 class_name="ApplyEyeMakeup", group=1, clip=1)
    quirky = [s for s in dataset if s.class_name == "HandstandPushups"]
    assert quirky and all(s.label == 2 and s.path.name.startswith("v_HandStandPushups_") for s in quirky)
    assert len(dataset) == len(dataset.samples) == dataset.num_classes * 2 * len(CLIPS)  # groups 1 and 5
    assert all(s.path.is_file() for s in dataset)


def test_labelled_videos_lists_each_video_once_in_list_order(tree: Path) -> None:
    train, test = UCF101(tree, subset="train").samples, UCF101(tree, subset="test").samples
    both = labelled_videos(tree)
    assert both == [(s.path, s.label) for s in train + test]
    assert labelled_videos(tree, 1, ("test",)) == [(s.path, s.label) for s in test]
    edit_list(tree, "testlist01.txt", 1, relative(CLASSES[0], 8, 1))  # a training video listed again for testing
    again = labelled_videos(tree)
    assert len(again) == len(both) - 1 and len({path for path, _ in again}) == len(again)


def test_annotations_next_to_root_or_given_explicitly(tmp_path: Path) -> None:
    sibling = make_tree(tmp_path / "videos", annotation_dir=tmp_path / "ucfTrainTestlist")
    found = UCF101(sibling, split=2, subset="train")
    assert found.annotations == tmp_path / "ucfTrainTestlist" and len(found) == len(found.samples) > 0
    elsewhere = make_tree(tmp_path / "b" / "other", annotation_dir=tmp_path / "b" / "lists" / "splits")
    dataset = UCF101(elsewhere, split=3, subset="test", annotations=tmp_path / "b" / "lists" / "splits")
    assert {s.group for s in dataset} == {15, 21}
    with pytest.raises(DatasetError, match="annotations not found"):
        UCF101(elsewhere, split=3, subset="test")


def test_missing_annotation_dir_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bare" / "Archery").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        UCF101(tmp_path / "bare")
    message = str(info.value)
    assert "classInd.txt" in message and str(tmp_path / "bare") in message and "\n" not in message


def test_missing_list_file(tree: Path) -> None:
    (tree / "ucfTrainTestlist" / "testlist02.txt").unlink()
    with pytest.raises(DatasetError, match=r"testlist02\.txt does not exist"):
        UCF101(tree, split=2, subset="test")
    assert len(UCF101(tree, split=2, subset="train")) > 0


def test_missing_video_errors_or_is_skipped_and_reported(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = tree / relative("Archery", 8, 2)
    gone.unlink()
    with pytest.raises(DatasetError) as info:
        UCF101(tree, split=1, subset="train")
    assert str(gone) in str(info.value) and "trainlist01.txt" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.ucf101"):
        dataset = UCF101(tree, split=1, subset="train", missing="skip")
    assert dataset.skipped == [gone]
    assert gone not in {s.path for s in dataset}
    assert len(dataset) == len(CLASSES) * 6 * len(CLIPS) - 1
    assert "skipped 1" in caplog.text


def test_unknown_class_in_list(tree: Path) -> None:
    edit_list(tree, "testlist01.txt", 0, "Bowling/v_Bowling_g01_c01.avi")
    with pytest.raises(DatasetError, match=r"testlist01\.txt:1: class 'Bowling' is not in classInd\.txt"):
        UCF101(tree, split=1, subset="test")


@pytest.mark.parametrize("bad_line, reason", [
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "expected"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1 extra", "expected"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi one", "not a positive integer"),
    ("v_ApplyEyeMakeup_g08_c01.avi 1", "is not of the form"),
    ("ApplyEyeMakeup/ApplyEyeMakeup_g08_c01.mp4 1", "is not of the form"),
    ("ApplyEyeMakeup/v_Archery_g08_c01.avi 1", "does not belong to class folder"),
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2", "label 2 does not match class 'ApplyEyeMakeup'"),
])
def test_malformed_train_lines(tree: Path, bad_line: str, reason: str) -> None:
    edit_list(tree, "trainlist01.txt", 2, bad_line)
    with pytest.raises(DatasetError) as info:
        UCF101(tree, split=1, subset="train")
    message = str(info.value)
    assert reason in message and "trainlist01.txt:3" in message and "\n" not in message


@pytest.mark.parametrize("content, reason", [
    ("1 ApplyEyeMakeup\n1 Archery\n", "duplicate"),
    ("1 ApplyEyeMakeup\n3 Archery\n", "must run 1..2"),
    ("ApplyEyeMakeup 1\n", "expected '<index> <ClassName>'"),
    ("\n", "no classes"),
])
def test_bad_class_index(tree: Path, content: str, reason: str) -> None:
    (tree / "ucfTrainTestlist" / "classInd.txt").write_text(content)
    with pytest.raises(DatasetError, match=reason):
        UCF101(tree)


def test_bad_arguments(tree: Path) -> None:
    with pytest.raises(DatasetError, match="split"):
        UCF101(tree, split=4)
    with pytest.raises(DatasetError, match="subset"):
        UCF101(tree, subset="val")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="not a directory"):
        UCF101(tree / "nowhere")
    assert issubclass(DatasetError, ValueError)


def test_written_annotations_round_trip(tmp_path: Path) -> None:
    videos = [("Walk", g, 1) for g in range(1, 26)] + [("Run", g, c) for g in (3, 10, 24) for c in (1, 2)]
    for name, group, clip in videos:
        path = tmp_path / name / f"v_{name}_g{group:02d}_c{clip:02d}.avi"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    write_annotations(tmp_path, ["Walk", "Run"], videos)
    for split in (1, 2, 3):
        train, test = UCF101(tmp_path, split, "train"), UCF101(tmp_path, split, "test")
        assert train.classes == ["Walk", "Run"]
        assert len(test.samples) == 7 + sum(1 for n, g, _ in videos if n == "Run" and g in split_test_groups(split))
        assert sorted((s.class_name, s.group, s.clip) for s in list(train) + list(test)) == sorted(videos)
        assert {s.label for s in train if s.class_name == "Run"} == {1}
