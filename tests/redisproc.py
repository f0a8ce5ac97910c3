"""Our own `redis-server` processes for tests (never the shared Redis on 6379).

`RedisServer` starts `redis-server` on a free loopback port with persistence off and a private working
directory, waits until it answers PING, and can stop, kill, pause, resume and restart it (same port, empty data).
`command(*args)` is a tiny synchronous RESP client over a raw socket, for checks. `redis_available()` tells
whether `redis-server` is installed; `REDIS_MISSING` is the skip message when it is not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .procs import free_port

REDIS_MISSING = "redis-server not found: install it (apt-get install redis-server) to run the Redis engine tests"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
IO_TIMEOUT = 5.0

RespValue = Any  # bytes | int | list | None | RedisReplyError


class RedisReplyError(Exception):
    """An error reply (`-ERR ...`) from the server."""


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, str):
            raw = arg.encode()
        else:
            raw = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self) -> RespValue:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")


def resp_command(port: int, *args: Any, timeout: float = IO_TIMEOUT) -> RespValue:
    """Send one command to 127.0.0.1:`port` on a fresh connection; return the decoded reply (raise on -ERR)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        reply = _Reader(sock).reply()
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply


class RedisServer:
    """One `redis-server` on a loopback port; `start()` again (or `restart()`) reuses the port with empty data."""

    def __init__(self, port: int | None = None, workdir: Path | str | None = None) -> None:
        if not redis_available():
            raise RuntimeError(REDIS_MISSING)
        self.port = port if port is not None else free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gust-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        if self.running():
            return self
        data_dir = self.dir / "data"
        shutil.rmtree(data_dir, ignore_errors=True)  # fresh, empty data on every start
        data_dir.mkdir(parents=True)
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no", "--protected-mode", "no",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if resp_command(self.port, "PING", timeout=1.0) == b"PONG":
                    return self
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING within "
                                   f"{START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _wait_exit(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused), wait; SIGKILL if it does not exit in time."""
        if not self.running():
            return
        assert self.proc is not None
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        if not self._wait_exit(STOP_TIMEOUT):
            self.kill()

    def shutdown_nosave(self) -> None:
        """`SHUTDOWN NOSAVE` over a raw socket (no reply comes back), then wait for the process to exit."""
        if not self.running():
            return
        with contextlib.suppress(OSError, RedisReplyError):  # the connection is closed without a reply
            resp_command(self.port, "SHUTDOWN", "NOSAVE", timeout=2.0)
        if not self._wait_exit(STOP_TIMEOUT):
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port with empty data."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def cleanup(self) -> None:
        """Stop and remove the working directory (when we made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- checks --------------------------------------------------------------------------------------

    def command(self, *args: Any) -> RespValue:
        return resp_command(self.port, *args)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"
