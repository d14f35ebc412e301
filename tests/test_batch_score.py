"""Offline batch scoring: records per clip, CSV and summary, resume after interruption, bad files skipped."""

import csv
import json
import shutil

from videos import write_indexed_video

from pipeline.batch.score import OUTPUTS
from pipeline.cli import main
from pipeline.data import UCF101
from pipeline.detect import DetectorBundle
from pipeline.detect.bundle import bundle_digest


def read_records(out):
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def test_score_split_writes_every_clip_and_resumes(tiny_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "scores"
    assert main(["score", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--split", "test1",
                 "--out", str(out), "--no-progress", "--batch-size", "5"]) == 0
    records = read_records(out)
    test_videos = UCF101(tiny_dataset, split=1, subset="test").samples
    assert {r["video"] for r in records} == {str(s.path) for s in test_videos}
    assert len(records) == 3 * len(test_videos)
    assert len({r["clip_key"] for r in records}) == len(records)
    first = records[0]
    assert set(first["scores"]) == {f"{layer}/{d}" for layer in ("layer3", "layer4", "fc")
                                    for d in ("gmm", "sep", "tied")} | {"fc/logsumexp"}  # the bundle's output score
    assert first["verdict"] in {"normal", "novel", "adversarial"} and 0 < first["p_value"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == len(records) and sum(summary["verdicts"].values()) == len(records)
    assert 0.0 <= summary["accuracy"] <= 1.0
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records) and "layer4/sep" in rows[0]

    raw = (out / "scores.jsonl").read_bytes()
    cut = raw[: raw.index(b"\n", len(raw) // 2) + 20]
    (out / "scores.jsonl").write_bytes(cut)
    assert main(["score", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--split", "test1",
                 "--out", str(out), "--no-progress"]) == 0
    resumed = read_records(out)
    assert sorted(r["clip_key"] for r in resumed) == sorted(r["clip_key"] for r in records)
    by_key = {r["clip_key"]: r for r in records}
    assert all(abs(r["fused"] - by_key[r["clip_key"]]["fused"]) < 1e-9 for r in resumed)


def test_score_directory_skips_a_corrupt_file(tiny_bundle, tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    good = sorted(tiny_dataset.glob("MoveLeft/*.avi"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "broken.avi").write_bytes(good[0].read_bytes()[:300])
    out = tmp_path / "scores"
    assert main(["score", "--bundle", str(tiny_bundle), "--data", str(folder), "--out", str(out),
                 "--no-progress"]) == 0
    assert "broken.avi" in capsys.readouterr().out
    records = read_records(out)
    assert {r["video"].rsplit("/", 1)[-1] for r in records} == {p.name for p in good}
    assert all(r["label"] is None for r in records)


def test_score_batches_mixed_resolutions_and_names_every_unusable_input(tiny_bundle, tiny_dataset, tmp_path,
                                                                         capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(sorted(tiny_dataset.glob("MoveLeft/*.avi"))[0], folder / "small.avi")  # 56x32, 24 frames
    write_indexed_video(folder / "large.mp4", 24, width=96, height=64)
    write_indexed_video(folder / "short.mp4", 3, width=64, height=48)
    write_indexed_video(folder / "dot.mkv", 24, width=1, height=1, codec="h264_444")
    out = tmp_path / "scores"
    assert main(["score", "--bundle", str(tiny_bundle), "--data", str(folder), "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {folder / 'short.mp4'}: 3 frames, shorter than one clip (8 frames)" in printed
    assert f"skipped {folder / 'dot.mkv'}: frame size 1x1 is below the minimum of 16 px" in printed
    assert "6 clips from 2 videos" in printed and "2 inputs skipped" in printed
    records = read_records(out)
    assert sorted({r["video"].rsplit("/", 1)[-1] for r in records}) == ["large.mp4", "small.avi"]
    assert len(records) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in summary["skipped"]) == ["dot.mkv", "short.mp4"]


def test_score_refuses_to_mix_bundles_in_one_output_folder(tiny_bundle, tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(sorted(tiny_dataset.glob("Grow/*.avi"))[0], folder / "grow.avi")
    other = DetectorBundle.load(tiny_bundle)
    other.calibration.alpha = 0.3
    other_dir = other.save(tmp_path / "other-bundle")
    out = tmp_path / "scores"
    command = ["score", "--data", str(folder), "--out", str(out), "--no-progress"]
    assert main([*command, "--bundle", str(tiny_bundle)]) == 0
    first = (out / "scores.jsonl").read_bytes()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*command, "--bundle", str(other_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"clipwatch score: error: {out}: holds scores from bundle {bundle_digest(tiny_bundle)[:12]}")
    assert error.endswith(f"choose a new --out, or pass --overwrite to replace the score files there ({', '.join(OUTPUTS)})")
    assert (out / "scores.jsonl").read_bytes() == first
    assert main([*command, "--bundle", str(other_dir), "--overwrite"]) == 0
    assert (out / "bundle.sha256").read_text().split()[0] == bundle_digest(other_dir)
    assert json.loads((out / "summary.json").read_text())["bundle_sha256"] == bundle_digest(other_dir)
    assert len(read_records(out)) == 3 and (out / "notes.txt").read_text() == "mine"
    assert main([*command, "--bundle", str(other_dir)]) == 0  # same bundle again: resumes


def test_split_takes_the_plain_number_like_every_other_command(tiny_dataset):
    from pipeline.batch.score import list_videos

    assert list_videos(tiny_dataset, "1")[0] == list_videos(tiny_dataset, "test1")[0]
    assert list_videos(tiny_dataset, "train1")[0] != list_videos(tiny_dataset, "1")[0]


def test_resume_keeps_a_complete_last_video_and_cuts_a_short_or_torn_one(tmp_path):
    from pipeline.batch.score import _done_videos

    def line(video, n):
        return json.dumps({"video": video, "clips_in_video": n}) + "\n"

    path = tmp_path / "scores.jsonl"
    complete = line("a", 2) * 2 + line("b", 2) * 2
    path.write_text(complete)
    assert _done_videos(path) == {"a", "b"} and path.read_text() == complete  # nothing re-scored
    path.write_text(line("a", 2) * 2 + line("b", 3) * 2)
    assert _done_videos(path) == {"a"} and path.read_text() == line("a", 2) * 2
    path.write_bytes((line("a", 1) + line("b", 1)).encode() + b"\0" * 64)
    assert _done_videos(path) == {"a", "b"} and path.read_text() == line("a", 1) + line("b", 1)
    path.write_text(line("a", 1) + line("b", 2) + '{"video": "b", "clips_')
    assert _done_videos(path) == {"a"} and path.read_text() == line("a", 1)
