"""The demo's report built from a small fake run folder (no pipeline run): camera roles, the timeline's legend,
wall-clock times, thumbnails at their stored size; and the training curve's readable title."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from pipeline.demo import CAMERAS
from pipeline.demo.report import COLOURS, ROLES, read_jsonl, summary_by_camera, wall_time, write_report
from pipeline.training.report import curve_title, plot_curve

T0 = 1_750_000_000.0
EXPECTED = {"lobby": "normal", "yard": "novel", "gate": "adversarial"}


def fake_run(out: Path) -> tuple[list[dict], list[dict]]:
    """Three cameras of two recordings of three clips each (one lobby clip flagged novel), and an alert with a
    160x120 thumbnail for every flagged clip, as `clipwatch demo` writes them."""
    (out / "thumbnails").mkdir(parents=True)
    verdicts, alerts = [], []
    for camera, expected in EXPECTED.items():
        for recording in range(2):
            stream = f"{camera}/{camera}-{recording:02d}-Grow"
            for seq in range(3):
                label = "novel" if (camera, recording, seq) == ("lobby", 1, 2) else expected
                at = T0 + len(verdicts)
                verdicts.append({"stream_id": stream, "seq": seq, "verdict": label, "clip_start": seq * 0.64,
                                 "clip_end": seq * 0.64 + 0.6, "timestamps": {"density": at}})
                if label == "normal":
                    continue
                thumb = out / "thumbnails" / f"{camera}{recording}{seq}.jpg"
                Image.new("RGB", (160, 120), COLOURS[label]).save(thumb)
                alerts.append({"stream_id": stream, "seq": seq, "kind": label, "thumbnail": {"uri": str(thumb)},
                               "verdict": {"prediction": "Grow", "softmax": 0.9, "p_value": 0.002},
                               "timestamps": {"clip_start": seq * 0.64, "clip_end": seq * 0.64 + 0.6,
                                              "scored_at": at}})
    return verdicts, alerts


class Page(HTMLParser):
    """Tags with their attributes, and the text inside each element of a class."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("img", "meta"):
            self._open.append(attrs.get("class") or "")

    def handle_endtag(self, tag):
        if tag not in ("img", "meta") and self._open:
            self._open.pop()

    def handle_data(self, data):
        for name in filter(None, self._open):
            self.text[name] = self.text.get(name, "") + data


def test_the_report_says_what_each_camera_shows_when_it_ran_and_what_each_colour_means(tmp_path):
    assert set(ROLES) == set(CAMERAS)
    assert {camera: role[0] for camera, role in ROLES.items()} == {**EXPECTED, "dock": "adversarial"}
    verdicts, alerts = fake_run(tmp_path)
    files = write_report(tmp_path, verdicts, alerts, 83.4, finished_at=T0 + 90)
    page = Page(files["html"].read_text())

    run = page.text["run"]
    assert run.startswith(f"Run from {wall_time(T0 + 90 - 83.4)} to {wall_time(T0 + 90, date=False)} (83 s)")
    assert re.fullmatch(r"Run from \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} to \d\d:\d\d:\d\d \(83 s\): "
                        r"18 clips scored, 13 alerts\.", run), run
    cameras = page.text["cameras"]
    for camera in EXPECTED:  # the cameras that ran
        expected, shows = ROLES[camera]
        assert f"{camera} ({expected} expected): {shows}" in cameras
    assert "dock" not in cameras
    html = files["html"].read_text()
    assert "<td>lobby</td><td>6</td><td>5</td><td>1</td><td>0</td><td>1</td><td>5 of 6</td>" in html
    assert "<td>gate</td><td>6</td><td>0</td><td>0</td><td>6</td><td>6</td><td>6 of 6</td>" in html

    legend = [attrs["style"] for tag, attrs in page.tags if tag == "span" and attrs.get("class") == "swatch"]
    assert legend == [f"background:{colour}" for colour in COLOURS.values()]
    assert page.text["legend"] == "normalnoveladversarial"
    timeline = next(attrs for tag, attrs in page.tags if tag == "img" and attrs.get("class") == "timeline")
    with Image.open(tmp_path / timeline["src"]) as image:
        assert image.format == "PNG" and image.height > 300

    thumbnails = [attrs for tag, attrs in page.tags if tag == "img" and attrs.get("class") != "timeline"]
    assert len(thumbnails) == len(alerts)
    assert all((attrs["width"], attrs["height"]) == ("160", "120") and (tmp_path / attrs["src"]).is_file()
               for attrs in thumbnails)
    first = sorted(alerts, key=lambda a: a["timestamps"]["scored_at"])[0]
    assert f"<td>{wall_time(first['timestamps']['scored_at'], date=False)}</td><td>lobby</td><td>lobby-01-Grow</td>" \
           "<td>2</td><td>1.28-1.88</td><td>novel</td>" in html

    markdown = files["markdown"].read_text()
    assert all(f"**{camera}**" in markdown for camera in EXPECTED) and "| lobby | 6 | 5 | 1 | 0 | 1 | 5 of 6 |" in markdown
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_an_empty_run_still_gets_a_report(tmp_path):
    files = write_report(tmp_path, [], [], 1.0, finished_at=T0)
    assert "0 clips scored, 0 alerts" in files["html"].read_text() and files["timeline"].stat().st_size > 0


def test_the_training_curve_title_is_readable(tmp_path):
    assert curve_title("r3d-18", {"width": 16, "zero_init_residual": True, "bias": False}, 3) == \
        "r3d-18 (width 16, zero init residual, no bias), seed 3"
    assert curve_title("c3d", {}, None) == "c3d"
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 0.9, "val_clip_accuracy": 0.6,
                "val_video_accuracy": 0.7}]
    path = plot_curve(tmp_path, history, {"model": "r3d-10", "options": {"width": 4}, "seed": 0})
    assert path.stat().st_size > 0


def test_a_recording_named_normal_is_expected_normal_whatever_its_camera():
    verdicts = [{"stream_id": "dock/dock-00-normal", "seq": 0, "verdict": "normal"},
                {"stream_id": "dock/dock-00-normal", "seq": 1, "verdict": "novel"},
                {"stream_id": "dock/dock-08-adversarial-covered", "seq": 0, "verdict": "adversarial"},
                {"stream_id": "dock/dock-08-adversarial-covered", "seq": 1, "verdict": "normal"},
                {"stream_id": "other/x", "seq": 0, "verdict": "normal"}]
    summary = summary_by_camera(verdicts, [])
    assert summary["dock"]["expected"] == 2 and summary["dock"]["clips"] == 4
    assert summary["other"]["expected"] == 0
