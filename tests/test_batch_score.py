"""Offline batch scoring: records per clip, CSV and summary, resume after interruption, bad files skipped."""

import csv
import json
import shutil

from pipeline.cli import main
from pipeline.data import UCF101


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
    assert set(first["scores"]) == {f"{layer}/{d}" for layer in ("layer3", "layer4", "fc") for d in ("gmm", "sep", "tied")}
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
