"""The console's store and HTTP API against a real server on a real run folder, with a real HTTP client: listing and
filtering, reviews that survive a restart, Server-Sent Events, thumbnails, the token, request limits, OpenAPI."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import cv2
import numpy as np
import pytest

from pipeline.alerts import Alert, JsonlSink, ScoredClip, store_thumbnail
from pipeline.alerts.journal import JsonlJournal
from pipeline.console import ConsoleServer, ConsoleStore, RunFollower, camera_of
from pipeline.console.openapi import document

pytestmark = pytest.mark.timeout(120)

T0 = 1_800_000_000.0


def make_alert(stream: str, seq: int, kind: str = "adversarial", at: float = T0, thumbnails: Path | None = None):
    jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 40 + seq, np.uint8))[1].tobytes()
    clip = ScoredClip(stream_id=stream, seq=seq, verdict=kind, fused_score=-9.5, clip_start=seq * 1.2,
                      clip_end=seq * 1.2 + 1.2, scored_at=at, p_value=0.0013, reasons=(f"{kind} because", "layer2"),
                      prediction="MoveLeft", softmax=0.8, layer_scores={"layer2/sep": -100.0}, thumbnail=jpeg)
    alert = Alert.from_clip(clip, kind)
    return store_thumbnail(alert, thumbnails) if thumbnails is not None else alert


def write_run(run: Path, alerts: list[Alert]) -> None:
    with JsonlSink(run / "alerts.jsonl") as sink:
        for alert in alerts:
            sink.write(alert)
    verdicts = JsonlJournal(run / "verdicts.jsonl")
    for number, (stream, verdict) in enumerate([("gate/a", "adversarial"), ("gate/a", "adversarial"),
                                                ("lobby/b", "normal"), ("yard/c", "novel")]):
        verdicts.append({"stream_id": stream, "seq": number, "verdict": verdict, "clip_key": f"{stream}:{number}",
                         "timestamps": {"density": T0 + number}})
    verdicts.close()
    health = JsonlJournal(run / "health.jsonl")
    for stream, state in [("gate/a", "up"), ("lobby/b", "up"), ("yard/c", "stalled")]:
        health.append({"stream_id": stream, "state": state, "detail": "", "time": T0})
    health.close()


@pytest.fixture
def run(tmp_path) -> Path:
    folder = tmp_path / "run"
    thumbs = folder / "thumbnails"
    write_run(folder, [make_alert("gate/a", 0, at=T0, thumbnails=thumbs),
                       make_alert("gate/a", 1, at=T0 + 10, thumbnails=thumbs),
                       make_alert("yard/c", 3, "novel", at=T0 + 20, thumbnails=thumbs)])
    return folder


@contextmanager
def serve(run: Path, db: Path, **options):
    """`clipwatch console`'s parts, in-process: store, follower (fast polling) and server on an ephemeral port."""
    store = ConsoleStore(db)
    follower = RunFollower(store, run, poll_s=0.05)
    follower.catch_up()
    server = ConsoleServer(store, port=0, thumbnail_dirs=[follower.thumbnails_dir], **options).start()
    follower.start()
    try:
        yield server.url.rstrip("/")
    finally:
        follower.close()
        server.close()
        store.close()


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON or raw bytes) of one request."""
    headers = {"Content-Type": "application/json", **(headers or {})} if method == "POST" else (headers or {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, head, data = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, data = error.code, error.headers, error.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(data)
    return status, head, data


def key_path(key: str) -> str:
    return quote(key, safe="")


class Events:
    """A Server-Sent Events client over http.client: `next(kind)` reads until an event of that kind arrives."""

    def __init__(self, url: str, last_event_id: str | None = None):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.connection.request("GET", "/api/events", headers={"Last-Event-ID": last_event_id} if last_event_id
                                else {})
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.headers["Content-Type"] == "text/event-stream"

    def next(self, kind: str, where=lambda data: True) -> tuple[str, dict]:
        fields: dict[str, str] = {}
        while True:
            line = self.response.fp.readline().decode().rstrip("\n")
            if line == "":
                if fields.get("event") == kind and where(data := json.loads(fields["data"])):
                    return fields["id"], data
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    def close(self) -> None:
        self.connection.close()


def test_alerts_are_listed_newest_first_and_filtered(run, tmp_path):
    with serve(run, tmp_path / "console.db") as url:
        status, head, page = call(f"{url}/api/alerts")
        assert status == 200 and head["Content-Type"] == "application/json"
        assert [a["key"] for a in page["alerts"]] == ["yard/c:3:novel", "gate/a:1:adversarial", "gate/a:0:adversarial"]
        assert page["count"] == page["total"] == 3
        first = page["alerts"][0]
        assert first["camera"] == "yard" and first["p_value"] == 0.0013 and first["prediction"] == "MoveLeft"
        assert first["reasons"] == ["novel because", "layer2"] and first["review"]["state"] == "open"
        assert first["thumbnail"] == f"/api/alerts/{key_path('yard/c:3:novel')}/thumbnail"

        def keys(query: str) -> list[str]:
            status, _, body = call(f"{url}/api/alerts?{query}")
            assert status == 200, body
            return [a["key"] for a in body["alerts"]]

        assert keys("camera=gate") == ["gate/a:1:adversarial", "gate/a:0:adversarial"]
        assert keys("camera=gate/a&kind=adversarial&limit=1") == ["gate/a:1:adversarial"]
        assert keys("kind=novel") == ["yard/c:3:novel"]
        assert keys(f"since={T0 + 10}") == ["yard/c:3:novel", "gate/a:1:adversarial"]
        assert keys(f"until={T0 + 10}") == ["gate/a:0:adversarial"]
        assert keys("since=2027-01-15T08:00:05Z&until=2027-01-15T08:00:15%2B00:00") == ["gate/a:1:adversarial"]
        assert keys("state=acknowledged") == [] and len(keys("state=open&camera=&kind=")) == 3
        _, _, limited = call(f"{url}/api/alerts?limit=1")
        assert limited["count"] == 1 and limited["total"] == 3

        for query, word in [("limit=0", "limit"), ("limit=x", "limit"), ("since=yesterday", "since"),
                            ("state=done", "state"), ("colour=red", "unknown parameter 'colour'")]:
            status, _, body = call(f"{url}/api/alerts?{query}")
            assert status == 400 and word in body["error"] and "\n" not in body["error"], (query, body)

        status, _, detail = call(f"{url}/api/alerts/{key_path('gate/a:0:adversarial')}")
        assert status == 200 and detail["layer_scores"] == {"layer2/sep": -100.0}
        assert detail["smoothing"]["k"] == 1 and detail["body"]["idempotency_key"] == "gate/a:0:adversarial"
        status, _, missing = call(f"{url}/api/alerts/{key_path('gate/a:9:novel')}")
        assert status == 404 and missing == {"error": "no alert 'gate/a:9:novel'", "status": 404}
        status, _, unknown = call(f"{url}/api/nothing")
        assert status == 404 and "openapi.json" in unknown["error"]


def test_cameras_have_their_health_state_and_verdict_counts(run, tmp_path):
    with serve(run, tmp_path / "console.db") as url:
        status, _, body = call(f"{url}/api/cameras")
        cameras = {c["camera"]: c for c in body["cameras"]}
        assert status == 200 and list(cameras) == ["gate", "lobby", "yard"]
        assert cameras["gate"]["state"] == "up" and cameras["yard"]["state"] == "stalled"
        assert cameras["gate"]["counts"] == {"adversarial": 2} and cameras["gate"]["recent"] == ["adversarial"] * 2
        assert cameras["gate"]["alerts"] == cameras["gate"]["open_alerts"] == 2
        assert cameras["yard"]["last_verdict"] == {"verdict": "novel", "clip_key": "yard/c:3", "at": T0 + 3}
    # a verdict log read again (a restart without offsets, or the sink's own feed) is not counted twice
    store = ConsoleStore(tmp_path / "console.db")
    assert store.add_verdicts([{"stream_id": "gate/a", "seq": 1, "verdict": "adversarial"}]) == 0
    assert store.add_verdicts([{"stream_id": "gate/a", "seq": 5, "verdict": "normal"}]) == 1
    assert store.cameras(["gate"])[0]["counts"] == {"adversarial": 2, "normal": 1}
    store.close()
    assert camera_of("rtsp://user:***@cam/stream1") == "rtsp://user:***@cam/stream1" and camera_of("lobby") == "lobby"


def test_acknowledgements_and_dismissals_persist_across_a_server_restart(run, tmp_path):
    db = tmp_path / "console.db"
    ack, dismiss = key_path("gate/a:0:adversarial"), key_path("yard/c:3:novel")
    with serve(run, db) as url:
        status, _, alert = call(f"{url}/api/alerts/{ack}/ack", "POST", b'{"by": "ana", "note": "drill"}')
        assert status == 200 and alert["review"]["state"] == "acknowledged" and alert["review"]["by"] == "ana"
        status, _, alert = call(f"{url}/api/alerts/{dismiss}/dismiss", "POST")
        assert status == 200 and alert["review"]["state"] == "dismissed"
        status, _, body = call(f"{url}/api/alerts/{key_path('gate/a:7:novel')}/ack", "POST")
        assert status == 404 and body["status"] == 404
    with serve(run, db) as url:  # a new store and server on the same files
        _, _, page = call(f"{url}/api/alerts")
        states = {a["key"]: a["review"] for a in page["alerts"]}
        assert states["gate/a:0:adversarial"]["state"] == "acknowledged"
        assert states["gate/a:0:adversarial"]["note"] == "drill"
        assert states["yard/c:3:novel"]["state"] == "dismissed" and states["gate/a:1:adversarial"]["state"] == "open"
        _, _, acknowledged = call(f"{url}/api/alerts?state=acknowledged")
        assert [a["key"] for a in acknowledged["alerts"]] == ["gate/a:0:adversarial"]
        _, _, cameras = call(f"{url}/api/cameras")
        assert {c["camera"]: c["open_alerts"] for c in cameras["cameras"]} == {"gate": 1, "lobby": 0, "yard": 0}
        status, _, alert = call(f"{url}/api/alerts/{ack}/reopen", "POST")
        assert status == 200 and alert["review"]["state"] == "open"


def test_a_replaced_run_is_read_again_and_does_not_inherit_reviews(run, tmp_path):
    db = tmp_path / "console.db"
    with serve(run, db) as url:
        call(f"{url}/api/alerts/{key_path('gate/a:0:adversarial')}/ack", "POST")
    shutil.rmtree(run)  # a new run in the same folder reuses the keys, at other times
    write_run(run, [make_alert("gate/a", 0, at=T0 + 500)])
    with serve(run, db) as url:
        _, _, page = call(f"{url}/api/alerts")
        assert [(a["key"], a["review"]["state"], a["scored_at"]) for a in page["alerts"]] == [
            ("gate/a:0:adversarial", "open", T0 + 500)]
        _, _, cameras = call(f"{url}/api/cameras")
        assert {c["camera"]: c["counts"] for c in cameras["cameras"]}["gate"] == {"adversarial": 2}


def test_the_event_stream_delivers_new_alerts_reviews_and_camera_changes(run, tmp_path):
    with serve(run, tmp_path / "console.db", keepalive_s=0.5) as url:
        events = Events(url)
        try:
            with JsonlSink(run / "alerts.jsonl") as sink:  # the pipeline appends an alert while the console runs
                sink.write(make_alert("lobby/b", 8, "novel", at=T0 + 30))
            event_id, alert = events.next("alert")
            assert alert["key"] == "lobby/b:8:novel" and alert["camera"] == "lobby"
            _, camera = events.next("camera")
            assert camera["camera"] == "lobby" and camera["open_alerts"] == 1

            call(f"{url}/api/alerts/{key_path('lobby/b:8:novel')}/ack", "POST")
            _, reviewed = events.next("review")
            assert reviewed["key"] == "lobby/b:8:novel" and reviewed["review"]["state"] == "acknowledged"

            health = JsonlJournal(run / "health.jsonl")
            health.append({"stream_id": "lobby/b", "state": "down", "detail": "no frames", "time": T0 + 40})
            health.close()
            _, camera = events.next("camera", lambda data: data["state"] != "up")
            assert camera["camera"] == "lobby" and camera["state"] == "down" and camera["detail"] == "no frames"
        finally:
            events.close()
        resumed = Events(url, last_event_id=event_id)  # a client reconnecting gets what it missed, in order
        try:
            assert resumed.next("review")[1]["key"] == "lobby/b:8:novel"
        finally:
            resumed.close()
        stale = Events(url, last_event_id="0badc0de-3")
        try:
            assert stale.next("reset")[1] == {"reason": "missed events"}
        finally:
            stale.close()


def test_thumbnails_are_served_from_the_thumbnail_folder_only(run, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not for the console")
    stray = make_alert("gate/a", 5, at=T0 + 40)
    body = stray.to_body()
    body["thumbnail"] = {"uri": str(secret), "sha256": None, "size_bytes": None, "media_type": "image/jpeg"}
    with open(run / "alerts.jsonl", "ab") as handle:
        handle.write(json.dumps(body).encode() + b"\n")
    with serve(run, tmp_path / "console.db") as url:
        _, _, detail = call(f"{url}/api/alerts/{key_path('gate/a:0:adversarial')}")
        status, head, data = call(f"{url}{detail['thumbnail']}")
        expected = run / "thumbnails" / f"{detail['body']['thumbnail']['sha256']}.jpg"
        assert status == 200 and head["Content-Type"] == "image/jpeg" and data == expected.read_bytes()
        status, _, refused = call(f"{url}/api/alerts/{key_path('gate/a:5:adversarial')}/thumbnail")
        assert status == 404 and "no thumbnail file" in refused["error"]


def test_token_origin_host_and_size_limits(run, tmp_path):
    with serve(run, tmp_path / "console.db", token="t0ps3cret") as url:
        status, head, body = call(f"{url}/api/alerts")
        assert status == 401 and head["WWW-Authenticate"].startswith("Bearer") and "token" in body["error"]
        assert call(f"{url}/api/alerts", headers={"Authorization": "Bearer nope"})[0] == 401
        assert call(f"{url}/api/alerts", headers={"Authorization": "Bearer t0ps3cret"})[0] == 200
        assert call(f"{url}/")[0] == 200  # the page itself is public; its API calls are not

        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.request("GET", "/?token=t0ps3cret")
        login = connection.getresponse()
        assert login.status == 303 and login.headers["Location"] == "/"
        cookie = login.headers["Set-Cookie"].split(";")[0]
        assert "t0ps3cret" not in cookie and "HttpOnly" in login.headers["Set-Cookie"]
        connection.close()
        assert call(f"{url}/api/cameras", headers={"Cookie": cookie})[0] == 200

        auth = {"Authorization": "Bearer t0ps3cret"}
        ack = f"{url}/api/alerts/{key_path('gate/a:0:adversarial')}/ack"
        assert call(ack, "POST", b"{}", {**auth, "Content-Type": "text/plain"})[0] == 415
        assert call(ack, "POST", b"{}", {**auth, "Origin": "http://evil.example"})[0] == 403
        status, _, body = call(ack, "POST", b"x" * 20_000, auth)
        assert status == 413 and "at most" in body["error"]
        assert call(ack, "POST", b'{"by": 3}', auth)[0] == 400
        assert call(ack, "POST", b'{"extra": "field"}', auth)[0] == 400
        assert call(ack, "PUT", b"{}", auth)[0] == 405
        status, _, body = call(f"{url}/api/cameras", headers={**auth, "Host": "attacker.example"})
        assert status == 403 and "Host" in body["error"]
        status, _, body = call(f"{url}/api/alerts?" + "&".join(["kind=novel"] * 20), headers=auth)
        assert status == 400 and "too many" in body["error"]


def test_the_page_and_its_assets_are_served_from_the_package(run, tmp_path):
    with serve(run, tmp_path / "console.db") as url:
        status, head, page = call(f"{url}/")
        assert status == 200 and head["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in head["Content-Security-Policy"]
        for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            assert f"/static/{asset}".encode() in page
            status, head, _ = call(f"{url}/static/{asset}")
            assert status == 200 and head["Content-Type"].startswith(kind)
        assert b"http://" not in page and b"https://" not in page  # nothing from a CDN
        assert call(f"{url}/static/../store.py")[0] == 404


def test_the_openapi_document_describes_every_route(run, tmp_path):
    spec = document()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/api/alerts", "/api/alerts/{key}", "/api/alerts/{key}/thumbnail",
                                  "/api/alerts/{key}/ack", "/api/alerts/{key}/dismiss", "/api/alerts/{key}/reopen",
                                  "/api/cameras", "/api/events", "/api/openapi.json"}
    text = json.dumps(spec)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in spec["components"]["schemas"], ref
    with serve(run, tmp_path / "console.db") as url:
        assert call(f"{url}/api/openapi.json")[2] == json.loads(text)
        key = key_path("gate/a:0:adversarial")
        for path, operations in spec["paths"].items():
            if path == "/api/events":
                continue
            for method in operations:
                status, _, _ = call(f"{url}{path.replace('{key}', key)}", method.upper(),
                                    b"{}" if method == "post" else None)
                assert str(status) in operations[method]["responses"] and status == 200, (method, path, status)
