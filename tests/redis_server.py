"""A real, throw-away `redis-server` for tests: a free loopback port, a temp dir, start / stop / kill / restart.

Never touches the system server on 6379. Typical use::

    with RedisServer(appendonly=True) as server:
        bus = RedisBus(server.url)
        ...
        server.kill()      # SIGKILL, as a crash would
        server.start()     # same port, same dir: the append-only file brings the data back

`appendonly=False` runs with no persistence at all (`--save "" --appendonly no`), so a restart comes back empty.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One `redis-server` process on 127.0.0.1, restartable on the same port and data directory.

    Parameters
    ----------
    port:
        Fixed port, or None to pick a free one (kept across restarts).
    appendonly:
        Persist every write to an append-only file in `directory`, so the data survives `kill()` + `start()`.
    directory:
        Data directory; None creates a temp dir that `close()` removes.
    extra_args:
        More `redis-server` arguments, e.g. ``("--maxmemory", "64mb")``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        directory: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self._binary = binary
        self.port = port if port is not None else free_port()
        self.appendonly = appendonly
        self._owns_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="clipwatch-redis-")) if directory is None else Path(directory)
        self._extra_args = tuple(extra_args)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when stopped."""
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self, **kwargs) -> redis.Redis:
        """A plain redis-py client for this server (for inspecting state from a test)."""
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> RedisServer:
        """Start (or restart) the server on the same port and directory; returns once it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.log_path),
            "--loglevel", "warning",
            "--daemonize", "no",
            *self._extra_args,
        ]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM); a server that does not exit in `timeout` seconds is killed."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (the append-only file keeps what was written)."""
        self._signal(signal.SIGKILL, 5.0)

    def close(self) -> None:
        """Stop the server and remove the temp directory this object created."""
        if self.running:
            self.kill()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _signal(self, signum: int, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        probe = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if self._process is None or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited at start: {self._log_tail()}")
                try:
                    if probe.ping():
                        return
                except redis.AuthenticationError:
                    return  # a server with --requirepass answers, and that is all this waits for
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # still starting or loading the append-only file
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server on port {self.port} not ready in {self._start_timeout}s")
                time.sleep(0.02)
        finally:
            probe.close()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"
