"""The demo's report: what each camera shows, the run's wall-clock times, a verdict timeline per camera (PNG) and the
alerts with their thumbnails shown at the size they were stored at (HTML and Markdown)."""

from __future__ import annotations

import html
import json
import time
from collections import defaultdict
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLOURS = {"normal": "#59a14f", "novel": "#f28e2b", "adversarial": "#e15759"}
OTHER = "#9c9c9c"
ROLES = {
    "lobby": ("normal", "normal traffic: activities the model was trained on"),
    "yard": ("novel", "a novel activity: motions the model never saw in training"),
    "gate": ("adversarial", "known activities under a universal adversarial frame painted around the border"),
    "dock": ("adversarial", "learns its own normal (recordings 00-07: normal expected); then lens covered (08), "
                            "camera turned (09)"),
}
"""The demo's cameras (`pipeline.demo.feeds.CAMERAS`): the verdict their clips should get, and what they show; a
recording whose name says ``normal`` expects that instead (the dock camera's warm-up)."""
COLUMNS = ["clips", "normal", "novel", "adversarial", "alerts"]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def camera_of(stream_id: str) -> str:
    """Stream ids of a directory source are ``<camera>/<recording>``."""
    return stream_id.split("/", 1)[0]


def expected_verdict(stream_id: str) -> str | None:
    """The verdict a clip of this stream should get: its camera's role, or ``normal`` for a recording named so."""
    camera, _, recording = stream_id.partition("/")
    if camera not in ROLES:
        return None
    return "normal" if "normal" in recording.split("-") else ROLES[camera][0]


def wall_time(seconds: float, *, date: bool = True) -> str:
    """Unix time as local wall-clock time: ``2025-06-01 14:03:05 +0200`` (``14:03:05`` without the date)."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z" if date else "%H:%M:%S", time.localtime(seconds))


def _cameras(verdicts: list[dict]) -> list[str]:
    """The cameras in the demo's order (lobby, yard, gate, dock), then any other."""
    found = {camera_of(v["stream_id"]) for v in verdicts}
    return [c for c in ROLES if c in found] + sorted(found - set(ROLES))


def timeline_png(verdicts: list[dict], path: Path) -> Path:
    """One panel per camera, titled with what it shows; in it one row per recording and one cell per clip (its
    index in the recording on the x axis), coloured by verdict, with the legend of the colours."""
    cameras = _cameras(verdicts)
    streams = {c: sorted({v["stream_id"] for v in verdicts if camera_of(v["stream_id"]) == c}) for c in cameras}
    heights = [len(streams[c]) for c in cameras] or [1]
    inches = 0.3 * sum(heights) + 0.6 * len(heights) + 1.2
    figure, axes = plt.subplots(len(heights), 1, figsize=(9, inches), sharex=True, squeeze=False,
                                gridspec_kw={"height_ratios": heights})
    for axis, camera in zip(axes[:, 0], cameras, strict=False):
        for row, stream in enumerate(streams[camera]):
            mine = [v for v in verdicts if v["stream_id"] == stream]
            first = min(v["seq"] for v in mine)
            for v in mine:
                axis.barh(row, 0.9, left=v["seq"] - first - 0.45, color=COLOURS.get(v["verdict"], OTHER))
        axis.set_yticks(range(len(streams[camera])), [s.split("/", 1)[-1] for s in streams[camera]], fontsize=7)
        axis.set_ylim(len(streams[camera]) - 0.5, -0.5)
        role = ROLES.get(camera)
        axis.set_title(f"{camera} ({role[0]} expected): {role[1]}" if role else camera, fontsize=9, loc="left")
    if not cameras:
        axes[0, 0].text(0.5, 0.5, "no clips were scored", ha="center", va="center")
    bottom = axes[-1, 0]
    bottom.set_xlabel("clip index in its recording (one cell per clip, in order)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in COLOURS.values()]
    figure.legend(handles, [f"{name} clip" for name in COLOURS], loc="lower center", ncols=3, fontsize=8,
                  frameon=False)
    figure.suptitle("clipwatch demo: the verdict of every clip", fontsize=10)
    figure.tight_layout(rect=(0, 0.35 / inches, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_by_camera(verdicts: list[dict], alerts: list[dict]) -> dict[str, dict[str, int]]:
    """Per camera: clips, clips of each verdict, alerts, and ``expected`` (clips given the camera's role verdict)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {name: 0 for name in [*COLUMNS, "expected"]})
    for v in verdicts:
        camera = camera_of(v["stream_id"])
        row = table[camera]
        row["clips"] += 1
        row[v["verdict"]] = row.get(v["verdict"], 0) + 1
        row["expected"] += expected_verdict(v["stream_id"]) == v["verdict"]
    for a in alerts:
        table[camera_of(a["stream_id"])]["alerts"] += 1
    return {camera: table[camera] for camera in _cameras(verdicts) + sorted(set(table) - set(_cameras(verdicts)))}


def write_report(out: Path, verdicts: list[dict], alerts: list[dict], seconds: float, *,
                 finished_at: float | None = None) -> dict[str, Path]:
    """``report.html`` and ``report.md``: the cameras and their roles, the run's times (it ended at `finished_at`,
    default now, after `seconds`), the per-camera counts, the timeline and each alert with its thumbnail."""
    finished = time.time() if finished_at is None else finished_at
    timeline = timeline_png(verdicts, out / "timeline.png")
    summary = summary_by_camera(verdicts, alerts)
    same_day = time.localtime(finished - seconds)[:3] == time.localtime(finished)[:3]
    run = (f"Run from {wall_time(finished - seconds)} to {wall_time(finished, date=not same_day)} ({seconds:.0f} s): "
           f"{len(verdicts)} clips scored, {len(alerts)} alerts.")
    roles = [(camera, ROLES[camera]) for camera in summary if camera in ROLES]
    rows = [_alert_row(a, out) for a in sorted(alerts, key=lambda a: a["timestamps"]["scored_at"])]
    expected = {c: f"{row['expected']} of {row['clips']}" if c in ROLES else "-" for c, row in summary.items()}

    md = ["# clipwatch demo", "", run, "", "## Cameras", ""]
    md += [f"* **{camera}** ({expected_verdict} expected): {shows}" for camera, (expected_verdict, shows) in roles]
    md += ["", "| camera | " + " | ".join(COLUMNS) + " | as expected |", "|---" * (len(COLUMNS) + 2) + "|"]
    md += [f"| {c} | " + " | ".join(str(row[k]) for k in COLUMNS) + f" | {expected[c]} |" for c, row in summary.items()]
    md += ["", "Verdict colours: " + ", ".join(f"{name} {colour}" for name, colour in COLOURS.items()) + ".", "",
           f"![timeline]({timeline.name})", "", "## Alerts", "", "| " + " | ".join(ALERT_COLUMNS) + " |",
           "|---" * len(ALERT_COLUMNS) + "|"]
    md += ["| " + " | ".join(cells) + f" | {f'![]({thumb})' if thumb else '-'} |" for cells, thumb, _ in rows]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    cameras_html = "".join(f"<li><strong>{html.escape(c)}</strong> ({e} expected): {html.escape(s)}</li>"
                           for c, (e, s) in roles)
    summary_html = "".join("<tr>" + cell(c) + "".join(cell(row[k]) for k in COLUMNS) + cell(expected[c]) + "</tr>"
                           for c, row in summary.items())
    legend = "".join(f'<li><span class="swatch" style="background:{colour}"></span>{name}</li>'
                     for name, colour in COLOURS.items())
    alerts_html = "".join("<tr>" + "".join(cell(c) for c in cells) + f"<td>{image}</td></tr>" for cells, _, image in rows)
    (out / "report.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipwatch demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left;vertical-align:middle}}
.legend{{list-style:none;padding:0;display:flex;gap:1.5em}}.swatch{{display:inline-block;width:1em;height:1em;
margin-right:.4em;vertical-align:-.15em;border:1px solid #666}}img.timeline{{max-width:100%;height:auto}}</style>
</head><body>
<h1>clipwatch demo</h1><p class="run">{html.escape(run)}</p>
<h2>Cameras</h2><ul class="cameras">{cameras_html}</ul>
<table><tr>{''.join(f'<th>{c}</th>' for c in ['camera', *COLUMNS, 'as expected'])}</tr>{summary_html}</table>
<h2>Timeline</h2>
<figure><img class="timeline" src="{html.escape(timeline.name)}" alt="verdict of every clip, per camera and recording">
<figcaption>One row per recording, one cell per clip in order; colours: <ul class="legend">{legend}</ul></figcaption>
</figure>
<h2>Alerts</h2>
<table><tr>{''.join(f'<th>{c}</th>' for c in ALERT_COLUMNS)}</tr>{alerts_html}</table>
</body></html>
""", encoding="utf-8")
    return {"html": out / "report.html", "markdown": out / "report.md", "timeline": timeline}


def cell(text: object) -> str:
    return f"<td>{html.escape(str(text))}</td>"


ALERT_COLUMNS = ["scored at", "camera", "recording", "clip", "in recording (s)", "kind", "prediction", "softmax",
                 "p-value", "thumbnail"]


def _alert_row(alert: dict, out: Path) -> tuple[list[str], str | None, str]:
    """(the cells of an alert but its thumbnail, the thumbnail's relative path, its HTML ``<img>`` or ``-``)."""
    stamps, verdict = alert["timestamps"], alert["verdict"]
    camera, _, recording = alert["stream_id"].partition("/")
    cells = [wall_time(stamps["scored_at"], date=False), camera, recording or "-", str(alert["seq"]),
             f"{stamps['clip_start']:.2f}-{stamps['clip_end']:.2f}" if "clip_end" in stamps else
             f"{stamps['clip_start']:.2f}", alert["kind"], str(verdict.get("prediction")),
             f"{verdict.get('softmax') or 0:.2f}", f"{verdict.get('p_value') or 0:.4f}"]
    thumb = _thumbnail_path(alert, out)
    if thumb is None:
        return cells, None, "-"
    size = ""
    try:
        with Image.open(out / thumb) as image:  # shown at the size it was stored at, the configured one
            size = f' width="{image.width}" height="{image.height}"'
    except OSError:
        pass
    alt = html.escape(f"{alert['stream_id']} clip {alert['seq']}")
    return cells, thumb, f'<img src="{html.escape(thumb)}"{size} alt="{alt}">'


def _thumbnail_path(alert: dict, out: Path) -> str | None:
    thumbnail = alert.get("thumbnail") or {}
    uri = thumbnail.get("uri")
    if not uri:
        return None
    path = Path(uri.removeprefix("file://"))
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)
