"""The console's HTTP server (standard library `ThreadingHTTPServer`): the JSON API, Server-Sent Events, the page.

Routes (the OpenAPI document in `pipeline.console.openapi` describes the API):

    GET  /                                  the console page (static HTML, JS, CSS from the package; no CDN)
    GET  /api/alerts?camera=&kind=&since=&until=&state=&limit=
    GET  /api/alerts/{key}                  POST /api/alerts/{key}/ack | /dismiss | /reopen
    GET  /api/alerts/{key}/thumbnail        GET /api/cameras    GET /api/events    GET /api/openapi.json
    POST /api/cameras    DELETE /api/cameras/{id}     only with a `CameraControl` (see `pipeline.console.cameras`)

Safety: it binds 127.0.0.1 unless told otherwise; with a token every /api/ request needs it (``Authorization:
Bearer``, or the cookie that opening ``/?token=...`` sets, since a browser's EventSource cannot send headers).
A POST must be JSON (a cross-site form cannot send that) from the console's own origin (a DELETE too); on a loopback address the
Host header must name a loopback host (no DNS rebinding). Request lines, headers, bodies and query values are
bounded; every error is a JSON object with a one-line ``error``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pipeline.console.cameras import CameraControl, add_camera, remove_camera
from pipeline.console.errors import ApiError, ConsoleError
from pipeline.console.openapi import document
from pipeline.console.store import REVIEW_STATES, ConsoleStore
from pipeline.errors import one_line

__all__ = ["ConsoleServer"]

logger = logging.getLogger(__name__)

COOKIE = "clipwatch_console"
MAX_BODY = 16 * 1024
MAX_THUMBNAIL = 4 * 1024 * 1024
QUERY_KEYS = ("camera", "kind", "since", "until", "state", "limit")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
_PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files shipped in ``pipeline/console/static``: name → (bytes, content type)."""
    folder = resources.files("pipeline.console").joinpath("static")
    return {item.name: (item.read_bytes(), _TYPES.get(Path(item.name).suffix, "application/octet-stream"))
            for item in folder.iterdir() if item.is_file() and not item.name.startswith(".")}


def _parse_time(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected unix seconds or an ISO 8601 date-time, got {text[:40]!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def alert_query(query: str) -> dict[str, Any]:
    """The filters of ``GET /api/alerts`` from its query string; ApiError(400) names a bad or unknown one."""
    filters: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=len(QUERY_KEYS) * 2)
    except ValueError:
        raise ApiError(400, f"too many query parameters (known: {', '.join(QUERY_KEYS)})") from None
    for name, value in pairs:
        if name not in QUERY_KEYS:
            raise ApiError(400, f"unknown parameter {name[:40]!r} (known: {', '.join(QUERY_KEYS)})")
        if len(value) > 1024:
            raise ApiError(400, f"{name}: value longer than 1024 characters")
        if not value:
            continue
        if name in ("since", "until"):
            filters[name] = _parse_time(name, value)
        elif name == "limit":
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise ApiError(400, f"limit: expected an integer from 1 to 1000, got {value[:40]!r}")
            filters[name] = int(value)
        elif name == "state" and value not in ("open", "acknowledged", "dismissed"):
            raise ApiError(400, f"state: expected open, acknowledged or dismissed, got {value[:40]!r}")
        else:
            filters[name] = value
    return filters


class ConsoleServer:
    """Serves `store` on `host:port` (0: an ephemeral port); thumbnails are read from `thumbnail_dirs` only."""

    def __init__(self, store: ConsoleStore, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 thumbnail_dirs: Iterable[str | Path] = (), keepalive_s: float = 15.0,
                 cameras: CameraControl | None = None):
        self.store = store
        self.cameras = cameras
        self.token = token or None
        self.cookie_value = hmac.new((token or "").encode(), b"clipwatch console cookie", "sha256").hexdigest()
        self.thumbnail_dirs = [Path(d).resolve() for d in thumbnail_dirs]
        self.keepalive_s = keepalive_s
        self.static = _static_files()
        self.closing = threading.Event()
        try:
            self._httpd = ThreadingHTTPServer((host, port), _Handler)
        except OSError as error:
            raise ConsoleError(f"console: cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._httpd.daemon_threads = True
        self._httpd.console = self
        self.host, self.port = self._httpd.server_address[:2]
        loopback = host in LOOPBACK_NAMES or host.startswith("127.")
        self.allowed_hosts = (LOOPBACK_NAMES | {host}) if loopback else None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="console-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> ConsoleServer:
        self._thread.start()
        logger.info("console: serving %s", self.url, extra={"console_port": self.port})
        return self

    def close(self) -> None:
        self.closing.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def thumbnail_file(self, key: str) -> Path:
        """The thumbnail file of alert `key`, looked up by its digest in the thumbnail folders (or its logged path
        when that lies inside one of them: nothing outside them is ever served)."""
        found = self.store.thumbnail(key)
        if found is None:
            raise ApiError(404, f"no alert {key[:200]!r}")
        sha256, uri = found
        for folder in self.thumbnail_dirs:
            if sha256 and _SHA256.match(sha256) and (folder / f"{sha256}.jpg").is_file():
                return folder / f"{sha256}.jpg"
            if uri and "://" not in uri:
                path = Path(uri).resolve()
                if path.is_relative_to(folder) and path.is_file():
                    return path
        raise ApiError(404, f"alert {key[:200]!r} has no thumbnail file here")


class _Handler(BaseHTTPRequestHandler):
    server_version = "clipwatch-console"
    timeout = 30  # seconds a client may take to send its request, or to take an event: no thread held forever

    @property
    def console(self) -> ConsoleServer:
        return self.server.console

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, too many headers) as JSON too."""
        self.close_connection = True
        self._json(code, {"error": one_line(message or HTTPStatus(code).phrase), "status": code})

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("console: %s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        try:
            parts = urlsplit(self.path)
            self._check_host()
            if parts.path.startswith("/api/"):
                self._authorize()
                self._api(method, parts.path, parts.query)
            elif method == "GET":
                self._page(parts.path, parts.query)
            else:
                raise ApiError(405, f"{method} is not allowed on {parts.path[:200]}")
        except ApiError as error:
            self._json(error.status, {"error": one_line(error), "status": error.status})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        except Exception:  # a bug: logged with its traceback, the client gets one line
            logger.exception("console: %s %s failed", method, self.path[:200])
            self._json(500, {"error": "internal error (logged by the console)", "status": 500})

    def _check_host(self) -> None:
        allowed = self.console.allowed_hosts
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if allowed is not None and name.lower() not in allowed:
            raise ApiError(403, f"Host {host[:100]!r} is not this console's (open it at {self.console.url})")

    def _authorize(self) -> None:
        token = self.console.token
        if token is None:
            return
        header = self.headers.get("Authorization", "")
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # http.cookies raises CookieError on junk: treat as no cookie
            cookie = SimpleCookie()
        if header.startswith("Bearer "):
            given, expected = header[7:], token
        else:
            given, expected = (cookie[COOKIE].value if COOKIE in cookie else ""), self.console.cookie_value
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "a bearer token is required: send 'Authorization: Bearer <token>', or open "
                                "/?token=<token> once in the browser")

    def _api(self, method: str, path: str, query: str) -> None:
        store = self.console.store
        if path == "/api/alerts" and method == "GET":
            filters = alert_query(query)
            alerts, total = store.alerts(**{"limit": 100, **filters})
            return self._json(200, {"alerts": alerts, "count": len(alerts), "total": total})
        if path == "/api/cameras" and method == "GET":
            return self._json(200, {"cameras": store.cameras()})
        if path == "/api/events" and method == "GET":
            return self._events()
        if path == "/api/openapi.json" and method == "GET":
            return self._json(200, document(cameras=self.console.cameras is not None))
        if path == "/api/cameras" and method == "POST":
            body = self._json_body() if self.console.cameras is not None else None
            return self._json(201, add_camera(self.console.cameras, body))
        if path.startswith("/api/cameras/") and method == "DELETE":
            self._check_origin()
            return self._json(200, remove_camera(self.console.cameras, unquote(path[len("/api/cameras/"):])))
        if path.startswith("/api/alerts/"):
            rest = path[len("/api/alerts/"):]
            head, _, action = rest.rpartition("/")
            if action in (*REVIEW_STATES, "thumbnail") and head:
                key = unquote(head)
                if action == "thumbnail" and method == "GET":
                    return self._thumbnail(key)
                if action in REVIEW_STATES and method == "POST":
                    return self._review(key, action)
                raise ApiError(405, f"{method} is not allowed on {path[:200]}")
            if method != "GET":
                raise ApiError(405, f"{method} is not allowed on {path[:200]}")
            key = unquote(rest)
            alert = store.alert(key)
            if alert is None:
                raise ApiError(404, f"no alert {key[:200]!r}")
            return self._json(200, alert)
        raise ApiError(404, f"no such endpoint: {method} {path[:200]} (see /api/openapi.json)")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise ApiError(403, f"cross-site request from {origin[:100]!r} refused")

    def _json_body(self) -> Any:
        """The request's JSON body (none: ``{}``), from this origin, with a Content-Length, as application/json."""
        self._check_origin()
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send the body with a Content-Length")
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            raise ApiError(400, "Content-Length must be a number")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body of {length} bytes; at most {MAX_BODY}")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise ApiError(415, "Content-Type must be application/json")
        raw = self.rfile.read(int(length)) if int(length) else b"{}"
        try:
            return json.loads(raw or b"{}")
        except ValueError as error:
            raise ApiError(400, f"body is not JSON: {error}") from None

    def _review(self, key: str, action: str) -> None:
        body = self._json_body()
        if not isinstance(body, dict) or set(body) - {"by", "note"}:
            raise ApiError(400, "body must be a JSON object with optional 'by' and 'note' strings")
        for field, most in (("by", 200), ("note", 2000)):
            if body.get(field) is not None and (not isinstance(body[field], str) or len(body[field]) > most):
                raise ApiError(400, f"{field}: expected a string of at most {most} characters")
        try:
            alert = self.console.store.review(key, action, by=body.get("by"), note=body.get("note"))
        except KeyError:
            raise ApiError(404, f"no alert {key[:200]!r}") from None
        self._json(200, alert)

    def _thumbnail(self, key: str) -> None:
        path = self.console.thumbnail_file(key)
        if path.stat().st_size > MAX_THUMBNAIL:
            raise ApiError(404, f"alert {key[:200]!r}: thumbnail file larger than {MAX_THUMBNAIL} bytes")
        self._send(200, path.read_bytes(), "image/jpeg", {"Cache-Control": "private, max-age=86400"})

    def _events(self) -> None:
        subscription = self.console.store.hub.subscribe(self.headers.get("Last-Event-ID"))
        if subscription is None:
            raise ApiError(503, "too many event streams open; close a console tab")
        try:
            self.close_connection = True
            self.send_response(200)
            for name, value in (("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                ("X-Accel-Buffering", "no"), ("X-Content-Type-Options", "nosniff")):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(b"retry: 2000\n: connected\n\n")
            self.wfile.flush()
            quiet = 0.0
            while not self.console.closing.is_set() and not subscription.dropped:
                event = subscription.get(timeout=0.5)
                if event is None:
                    quiet += 0.5
                    if quiet < self.console.keepalive_s:
                        continue
                    chunk, quiet = b": keepalive\n\n", 0.0
                else:
                    chunk, quiet = event.encode(), 0.0
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            subscription.close()

    def _page(self, path: str, query: str) -> None:
        if path in ("/", "/index.html"):
            token = dict(parse_qsl(query)).get("token")
            if token is not None:  # a login link: a cookie derived from the token, and the token out of the URL
                headers = {"Location": "/"}
                if self.console.token and hmac.compare_digest(token.encode(), self.console.token.encode()):
                    headers["Set-Cookie"] = f"{COOKIE}={self.console.cookie_value}; Path=/; HttpOnly; SameSite=Strict"
                return self._send(303, b"", "text/plain", headers)
            data, kind = self.console.static["index.html"]
        elif path.startswith("/static/") and path[len("/static/"):] in self.console.static:
            data, kind = self.console.static[path[len("/static/"):]]
        else:
            raise ApiError(404, f"no such page: {path[:200]}")
        self._send(200, data, kind, {"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache",
                                     "Referrer-Policy": "no-referrer"})

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, allow_nan=False).encode(), "application/json",
                   {"Cache-Control": "no-store"})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="clipwatch console"')
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
