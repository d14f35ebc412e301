"""`clipwatch console` on a real `clipwatch demo` output folder (shipped model and bundle): its alerts at
GET /api/alerts, and the page in a real browser, Debian's chromium driven by Playwright: it loads, an alert appended
while it is open appears without a reload, an acknowledgement survives a reload. Then the console served live by a
running `clipwatch run` on the demo's feeds (replayed at real time, the shipped bundle): the gate camera, with the
painted adversarial frame, is added through POST /api/cameras while the page is open, its alerts appear in the page
without a reload, one acknowledged in the page stays acknowledged after a reload, and SIGTERM ends the run with 0.

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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import REPO, read_jsonl, wait_for, write_config
from redis_server import free_port

pytestmark = pytest.mark.timeout(300)

CLIPWATCH = Path(sys.executable).parent / "clipwatch"
CHROMIUM = Path("/usr/bin/chromium")
BUNDLE = REPO / "pipeline" / "assets" / "bundles" / "default"


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
        assert {alert["camera"] for alert in page["alerts"]} <= {"lobby", "yard", "gate", "dock"}
        for alert in page["alerts"]:
            assert console.get(alert["thumbnail"])[:2] == b"\xff\xd8"  # a JPEG, from the demo's thumbnails/
        cameras = {camera["camera"]: camera for camera in console.get("/api/cameras")["cameras"]}
        assert set(cameras) == {"lobby", "yard", "gate", "dock"}
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
            sync_api.expect(page.locator("#cameras .tile")).to_have_count(4)
            sync_api.expect(page.locator("#live")).to_have_text("live")
            rows.first.click()
            sync_api.expect(page.locator("#detail-body")).to_be_visible()
            page_wait(page, "document.getElementById('d-thumb').naturalWidth > 0")
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


class LiveRun:
    """A `clipwatch run` process (``python -m workers run``) whose config has a `console:` section on `port`."""

    def __init__(self, config: Path, port: int, logs: Path):
        self.log, self.out = logs / "run.log", logs / "run.out"
        with open(self.log, "w") as stderr, open(self.out, "w") as stdout:
            self.process = subprocess.Popen([sys.executable, "-m", "workers", "run", "--config", str(config),
                                             "--progress", "0"], cwd=REPO, stdout=stdout, stderr=stderr)
        self.url = f"http://127.0.0.1:{port}"

    def call(self, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
        """(status, JSON) of one request to the console's API; connection errors propagate."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def cameras(self) -> dict[str, dict]:
        """{camera: row} of GET /api/cameras, {} while the console does not answer yet."""
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return {row["camera"]: row for row in self.call("/api/cameras")[1]["cameras"]}
        except (urllib.error.URLError, ConnectionError):
            return {}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def test_the_console_of_a_live_run_in_a_real_browser(demo, tmp_path):
    """Issue 14's acceptance: the console of a running `clipwatch run` on the demo's feeds, in chromium; an alert
    appears live, its acknowledgement persists."""
    from playwright import sync_api

    assert CHROMIUM.exists(), "apt-get install chromium (make test does): the console is tested in a real browser"
    feeds, out, port = demo / "feeds", tmp_path / "run", free_port()
    gate_keys = {record["idempotency_key"] for record in read_jsonl(demo / "alerts.jsonl")
                 if record["stream_id"].startswith("gate/")}
    assert gate_keys  # the painted frame is flagged: the demo's gate camera alerts

    def camera(name: str, **options) -> dict:
        return {"id": name, "path": str(feeds / name), "pace": 1.0, **options}

    config = write_config(tmp_path / "live.yaml", {
        # lobby and yard loop at real time, so the run goes on until SIGTERM; gate is added once the page is open
        "sources": [camera("lobby", loop=True), camera("yard", loop=True)],
        "bundle": str(BUNDLE),
        "bus": {"url": "memory://", "max_backlog": 32},
        "classifier": {"max_batch": 8, "max_wait_ms": 20},
        "alerts": {
            "rules": {"kinds": {"novel": {"k": 1, "n": 1}, "adversarial": {"k": 1, "n": 1}}},  # the demo's
            "jsonl": str(out / "alerts.jsonl"), "verdicts_jsonl": str(out / "verdicts.jsonl"),
            "health_jsonl": str(out / "health.jsonl"), "thumbnails_dir": str(out / "thumbnails"),
        },
        "console": {"port": port},  # its store: console.db beside alerts.jsonl
        "ops": {"base_port": 0, "log_format": "text"},
    })
    run = LiveRun(config, port, tmp_path)
    problems: list[str] = []
    try:
        def verdicts_of(*names: str) -> dict | None:
            cameras = run.cameras()
            return cameras if all(cameras.get(name, {}).get("recent") for name in names) else None

        wait_for(lambda: verdicts_of("lobby", "yard"), 90, what=f"lobby's and yard's verdicts (log: {run.log})")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto(f"{run.url}/")
            sync_api.expect(page.locator("#live")).to_have_text("live")  # the event stream is open
            sync_api.expect(page.locator("#cameras .tile")).to_have_count(2)
            assert not page.locator('#alerts tr[data-key^="gate/"]').count()
            page.evaluate("""() => {
                window.notReloaded = true;
                window.announced = [];
                new MutationObserver(() => window.announced.push(document.getElementById("announcer").textContent))
                    .observe(document.getElementById("announcer"), {childList: true, characterData: true, subtree: true});
            }""")

            status, added = run.call("/api/cameras", "POST", camera("gate"))  # as an operator's curl would
            assert (status, added) == (201, {"id": "gate", "camera": "gate", "state": "added"}), added
            gate_rows = page.locator('#alerts tr[data-key^="gate/"]')
            sync_api.expect(gate_rows.first).to_be_visible(timeout=30_000)
            sync_api.expect(page.locator('.tile[data-camera="gate"]')).to_be_visible()
            assert page.evaluate("window.notReloaded") is True
            page_wait(page, "window.announced.includes('New adversarial alert on gate.')")
            key = gate_rows.last.get_attribute("data-key")  # the oldest on the page (newest first)
            assert key in gate_keys, (key, sorted(gate_keys))  # the demo's feed and bundle: the demo's alerts

            row = page.locator(f'#alerts tr[data-key="{key}"]')
            row.click()
            sync_api.expect(page.locator("#detail-title")).to_have_text(f"Alert {key}")
            sync_api.expect(page.locator("#d-kind")).to_have_text("adversarial")
            page_wait(page, "document.getElementById('d-thumb').naturalWidth > 0")  # from thumbnails_dir
            page.get_by_role("button", name="Acknowledge").click()
            sync_api.expect(row.locator(".review-state")).to_have_text("acknowledged")
            assert run.call(f"/api/alerts/{urllib.parse.quote(key, safe='')}")[1]["review"]["state"] == "acknowledged"

            page.reload()
            sync_api.expect(page.locator("#live")).to_have_text("live")
            sync_api.expect(page.locator(f'#alerts tr[data-key="{key}"] .review-state')).to_have_text("acknowledged")
            assert page.evaluate("window.notReloaded") is None  # it was reloaded
            browser.close()
        assert run.stop() == 0, run.log.read_text()[-3000:]
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(10)
    assert not problems, problems
    assert run.out.read_text().strip().splitlines()[-1].startswith("run stopped: ")
    logged = {record["idempotency_key"] for record in read_jsonl(out / "alerts.jsonl")}
    assert key in logged and {k for k in logged if k.startswith("gate/")} <= gate_keys
    assert console_alert(out, key)["review"]["state"] == "acknowledged"  # in the run's SQLite store


def page_wait(page, expression: str, timeout: float = 10.0) -> None:
    """Poll a JavaScript expression until it is true. ``page.wait_for_function`` polls by ``eval`` inside the page,
    which the console's Content-Security-Policy (``script-src 'self'``) refuses whenever the first check is false;
    ``page.evaluate`` runs outside the page's policy."""
    wait_for(lambda: page.evaluate(expression), timeout, interval=0.05, what=expression)


def console_alert(run: Path, key: str) -> dict:
    """The alert as a console started afresh on the same store reports it (the acknowledgement is in SQLite)."""
    from pipeline.console import ConsoleStore

    store = ConsoleStore(run / "console.db")
    try:
        return store.alert(key)
    finally:
        store.close()

