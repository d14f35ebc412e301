"""The demo's report: an alert timeline per camera (PNG), a table of alerts with thumbnails (HTML and Markdown)."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"normal": "#59a14f", "novel": "#f28e2b", "adversarial": "#e15759"}


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def camera_of(stream_id: str) -> str:
    """Stream ids of a directory source are ``<camera>/<recording>``."""
    return stream_id.split("/", 1)[0]


def timeline_png(verdicts: list[dict], path: Path) -> Path:
    """One row per recording, one cell per clip coloured by verdict, grouped by camera."""
    streams = sorted({v["stream_id"] for v in verdicts}, key=lambda s: (camera_of(s), s))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(streams) + 1.2))
    for row, stream in enumerate(streams):
        for v in (v for v in verdicts if v["stream_id"] == stream):
            ax.barh(row, 1, left=v["seq"], color=COLOURS[v["verdict"]], edgecolor="white")
    ax.set_yticks(range(len(streams)), streams, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("clip (16 frames each)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), loc="lower right", fontsize=7)
    ax.set_title("clipwatch demo: verdict of every clip", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_by_camera(verdicts: list[dict], alerts: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"clips": 0, "normal": 0, "novel": 0, "adversarial": 0,
                                                           "alerts": 0})
    for v in verdicts:
        row = table[camera_of(v["stream_id"])]
        row["clips"] += 1
        row[v["verdict"]] += 1
    for a in alerts:
        table[camera_of(a["stream_id"])]["alerts"] += 1
    return dict(sorted(table.items()))


def write_report(out: Path, verdicts: list[dict], alerts: list[dict], seconds: float) -> dict[str, Path]:
    """``report.html`` and ``report.md`` with the per-camera summary, the timeline and each alert's thumbnail."""
    timeline = timeline_png(verdicts, out / "timeline.png")
    summary = summary_by_camera(verdicts, alerts)
    columns = ["clips", "normal", "novel", "adversarial", "alerts"]
    md = ["# clipwatch demo", "", f"{len(verdicts)} clips scored, {len(alerts)} alerts, {seconds:.0f} s.", "",
          "| camera | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    md += [f"| {camera} | " + " | ".join(str(row[c]) for c in columns) + " |" for camera, row in summary.items()]
    md += ["", f"![timeline]({timeline.name})", "", "## Alerts", "", "| time (s) | stream | clip | kind | prediction "
           "| softmax | p-value | thumbnail |", "|---|---|---|---|---|---|---|---|"]
    rows_html = []
    for a in sorted(alerts, key=lambda a: a["timestamps"]["scored_at"]):
        thumb = _thumbnail_path(a, out)
        verdict = a["verdict"]
        cells = [f"{a['timestamps']['clip_start']:.2f}", a["stream_id"], str(a["seq"]), a["kind"],
                 str(verdict.get("prediction")), f"{verdict.get('softmax') or 0:.2f}",
                 f"{verdict.get('p_value') or 0:.4f}"]
        md.append("| " + " | ".join(cells) + f" | {f'![]({thumb})' if thumb else '-'} |")
        image = f'<img src="{html.escape(thumb)}" height="64">' if thumb else "-"
        rows_html.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + f"<td>{image}</td></tr>")
    (out / "report.md").write_text("\n".join(md) + "\n")
    summary_html = "".join(f"<tr><td>{html.escape(cam)}</td>" + "".join(f"<td>{row[c]}</td>" for c in columns)
                           + "</tr>" for cam, row in summary.items())
    header = "".join(f"<th>{c}</th>" for c in ["camera", *columns])
    alert_header = "".join(f"<th>{c}</th>" for c in ["time (s)", "stream", "clip", "kind", "prediction", "softmax",
                                                      "p-value", "thumbnail"])
    (out / "report.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>clipwatch demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:13px}}</style></head><body>
<h1>clipwatch demo</h1><p>{len(verdicts)} clips scored, {len(alerts)} alerts, {seconds:.0f} s.</p>
<table><tr>{header}</tr>{summary_html}</table>
<p><img src="{timeline.name}" width="800"></p>
<h2>Alerts</h2><table><tr>{alert_header}</tr>{''.join(rows_html)}</table>
</body></html>
""")
    return {"html": out / "report.html", "markdown": out / "report.md", "timeline": timeline}


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
