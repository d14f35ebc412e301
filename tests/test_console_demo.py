"""`clipwatch console` on a real `clipwatch demo` output folder (shipped model and bundle): its alerts at
GET /api/alerts, and the page in a real browser, Debian's chromium driven by Playwright: it loads, an alert appended
while it is open appears without a reload, an acknowledgement survives a reload.

Set CLIPWATCH_CONSOLE_SCREENSHOT=docs/console.png to save the page with the demo's alerts there (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import read_jsonl, wait_for

pytestmark = pytest.mark.timeout(300)

CLIPWATCH = Path(sys.executable).parent / "clipwatch"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("console-demo") / "demo"
    result = subprocess.run([str(CLIPWATCH), "demo", "--out", str(out), "--no-progress"], capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


class Console:
    """A `clipwatch console` process; `url` once it serves."""

    def __init__(self, run: Path, log: Path, *args: str):
        self.log = log
        with open(log, "w") as stream:
            self.process = subprocess.Popen([str(CLIPWATCH), "console", str(run), "--port", "0", "--poll", "0.2",
                                             *args], stdout=stream, stderr=subprocess.STDOUT)
        line = wait_for(self._serving, 60, what=f"console serving (log: {log})")
        self.url = line.split("serving ", 1)[1].split(" ", 1)[0].rstrip("/")

    def _serving(self) -> str | None:
        assert self.process.poll() is None, self.log.read_text()
        return next((line for line in self.log.read_text().splitlines() if line.startswith("console: serving")), None)

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            data = response.read()
            return json.loads(data) if response.headers["Content-Type"] == "application/json" else data

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def test_console_command_lists_the_demo_alerts(demo, tmp_path):
    logged = [record["idempotency_key"] for record in read_jsonl(demo / "alerts.jsonl")]
    assert len(logged) >= 8  # the demo's gate camera carries an adversarial frame
    console = Console(demo, tmp_path / "console.log")
    try:
        page = console.get("/api/alerts?limit=1000")
        assert sorted(alert["key"] for alert in page["alerts"]) == sorted(logged) and page["total"] == len(logged)
        assert {alert["camera"] for alert in page["alerts"]} <= {"lobby", "yard", "gate"}
        for alert in page["alerts"]:
            assert console.get(alert["thumbnail"])[:2] == b"\xff\xd8"  # a JPEG, from the demo's thumbnails/
        cameras = {camera["camera"]: camera for camera in console.get("/api/cameras")["cameras"]}
        assert set(cameras) == {"lobby", "yard", "gate"}
        assert all(camera["state"] == "ended" for camera in cameras.values())
        verdicts = read_jsonl(demo / "verdicts.jsonl")
        assert sum(sum(camera["counts"].values()) for camera in cameras.values()) == len(verdicts)
    finally:
        assert console.stop() == 0
    assert (demo / "console.db").is_file()  # the default store, beside the run's files


def test_the_console_page_in_a_real_browser(demo, tmp_path):
    from playwright import sync_api  # a dev dependency: `make test` installs it, and Debian's chromium

    assert CHROMIUM.exists(), "apt-get install chromium (make test does): the console is tested in a real browser"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("alerts.jsonl", "verdicts.jsonl", "health.jsonl"):
        shutil.copy(demo / name, run / name)
    shutil.copytree(demo / "thumbnails", run / "thumbnails")
    logged = read_jsonl(run / "alerts.jsonl")
    console = Console(run, tmp_path / "console.log")
    problems: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto(f"{console.url}/")
            rows = page.locator("#alerts tr")
            sync_api.expect(rows).to_have_count(len(logged))
            sync_api.expect(page.locator("#cameras .tile")).to_have_count(3)
            sync_api.expect(page.locator("#live")).to_have_text("live")
            rows.first.click()
            sync_api.expect(page.locator("#detail-body")).to_be_visible()
            page.wait_for_function("document.getElementById('d-thumb').naturalWidth > 0")
            screenshot = tmp_path / "console.png"
            page.screenshot(path=screenshot, full_page=True)
            if os.environ.get("CLIPWATCH_CONSOLE_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["CLIPWATCH_CONSOLE_SCREENSHOT"])

            page.evaluate("window.notReloaded = true")
            fresh = json.loads(json.dumps(logged[0]))  # the pipeline appends a new alert while the page is open
            stream, key = "yard/yard-09-Orbit", "yard/yard-09-Orbit:0:novel"
            fresh.update(stream_id=stream, seq=0, clip_key=f"{stream}:0", idempotency_key=key, kind="novel")
            fresh["verdict"]["verdict"] = "novel"
            fresh["timestamps"]["scored_at"] = time.time()
            with open(run / "alerts.jsonl", "a") as handle:
                handle.write(json.dumps(fresh) + "\n")
            row = page.locator(f'#alerts tr[data-key="{key}"]')
            sync_api.expect(row).to_be_visible(timeout=10_000)
            sync_api.expect(rows).to_have_count(len(logged) + 1)
            assert page.evaluate("window.notReloaded") is True
            sync_api.expect(page.locator('.tile[data-camera="yard"]')).to_contain_text("1 open of 1 alert")

            row.click()
            sync_api.expect(page.locator("#detail-title")).to_have_text(f"Alert {key}")
            page.get_by_role("button", name="Acknowledge").click()
            sync_api.expect(row.locator(".review-state")).to_have_text("acknowledged")
            page.reload()
            sync_api.expect(rows).to_have_count(len(logged) + 1)
            sync_api.expect(page.locator(f'#alerts tr[data-key="{key}"] .review-state')).to_have_text("acknowledged")
            sync_api.expect(page.locator('.tile[data-camera="yard"]')).to_contain_text("0 open of 1 alert")
            browser.close()
    finally:
        assert console.stop() == 0
    assert not problems, problems
    stored = console_alert(run, key)
    assert stored["review"]["state"] == "acknowledged"


def console_alert(run: Path, key: str) -> dict:
    """The alert as a console started afresh on the same store reports it (the acknowledgement is in SQLite)."""
    from pipeline.console import ConsoleStore

    store = ConsoleStore(run / "console.db")
    try:
        return store.alert(key)
    finally:
        store.close()

