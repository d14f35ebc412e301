"""A real, throw-away `mosquitto` broker for tests, and a recording subscriber.

    with MosquittoBroker() as broker, Subscriber(broker.port, "clipwatch/#") as sub:
        publish_things_to(broker.url)
        sub.wait_for(lambda messages: len(messages) >= 3)
        broker.kill()       # SIGKILL, as a crash would
        broker.start()      # same port, nothing kept (no persistence)

The broker listens on 127.0.0.1 on a free port (kept across restarts), anonymous access allowed unless
`password` is given (then only user ``clipwatch`` with that password); with `tls=True` it speaks only TLS, with a
server certificate for 127.0.0.1 signed by a throw-away CA (`ca_file`).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from redis_server import free_port

__all__ = ["MosquittoBroker", "Received", "Subscriber", "free_port", "make_certificates"]


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr, extensions = (directory / name for name in ("server.pem", "server.key", "server.csr", "san.cnf"))
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=clipwatch test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", extensions],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    key.chmod(0o644)  # mosquitto reads it after dropping root privileges
    return ca, cert, key


class MosquittoBroker:
    """One `mosquitto` process on 127.0.0.1, restartable on the same port."""

    def __init__(self, *, port: int | None = None, password: str | None = None, tls: bool = False,
                 start_timeout: float = 10.0):
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self._binary = binary
        self.port = port if port is not None else free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="clipwatch-mosquitto-"))
        self.directory.chmod(0o755)  # run as root, mosquitto reads its password file after dropping privileges
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", f"log_dest file {self.directory / 'log'}"]
        self.ca_file = None
        if tls:
            self.ca_file, cert, key = make_certificates(self.directory)
            lines += [f"cafile {self.ca_file}", f"certfile {cert}", f"keyfile {key}"]
        if password is None:
            lines.append("allow_anonymous true")
        else:
            passwords = self.directory / "passwords"
            passwords.write_text(f"clipwatch:{password}\n")
            subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True, capture_output=True)
            passwords.chmod(0o644)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        self.config_path = self.directory / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.ca_file else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> MosquittoBroker:
        """Start (or restart) on the same port; returns once it accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        self._process = subprocess.Popen([self._binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {self.log()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {self._start_timeout} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        if self.running:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)

    def stop(self) -> None:
        if self.running:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.directory / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> MosquittoBroker:
        try:
            return self.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it; `data` is the JSON payload decoded (None if it is not JSON)."""

    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def data(self):
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


class Subscriber:
    """A paho client subscribed to `topic` (QoS 1) that records every message and resubscribes after reconnecting."""

    def __init__(self, port: int, topic: str = "#", *, username: str | None = None, password: str | None = None,
                 ca_file: Path | None = None, connect_timeout: float = 10.0):
        self.topic = topic
        self._messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None:
            self._client.tls_set(ca_certs=str(ca_file))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_disconnect = lambda *args: self._subscribed.clear()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 0.5)
        self._client.connect_async("127.0.0.1", port, keepalive=10)
        self._client.loop_start()
        self.wait_subscribed(connect_timeout)

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"subscriber: not subscribed to {self.topic} within {timeout} s")

    @property
    def messages(self) -> list[Received]:
        with self._changed:
            return list(self._messages)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        """Wait until `condition(messages)` holds; AssertionError naming what arrived when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(list(self._messages)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(m.topic, m.payload[:80]) for m in self._messages]
                    raise AssertionError(f"subscriber: condition not met within {timeout} s; got {got}")
                self._changed.wait(remaining)
            return list(self._messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self._messages.append(Received(message.topic, bytes(message.payload), bool(message.retain), message.qos))
            self._changed.notify_all()
