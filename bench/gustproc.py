"""Gust in a subprocess on a free loopback port, for benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.procs import LISTEN, free_port, tcp_sockets

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-api-key"
SECRET = "bench-secret-key-that-is-long-enough-for-hs256"


def bench_config(port: int, data_dir: str, persistence: str, redis: str | None = None,
                 workers: int = 1) -> dict[str, Any]:
    """`redis`: a redis:// URL for the Redis engine (keys under the "gust-bench" prefix) instead of the memory
    engine; `workers` > 1 needs it."""
    open_ns = {f"allow_{op}_for_{who}": True for op in ("subscribe", "publish", "history", "presence")
               for who in ("client", "anonymous")}
    engine: dict[str, Any] = {"memory": {"persistence": persistence}}
    if redis is not None:
        engine = {"type": "redis", "redis": {"address": redis, "prefix": "gust-bench"}}
    return {
        "http_server": {"port": port, "workers": workers},
        "http_api": {"key": API_KEY},
        "data_dir": data_dir,
        "log_level": "warning",
        "shutdown": {"timeout": "5s"},
        "engine": engine,
        "client": {"token": {"hmac_secret_key": SECRET}, "allow_anonymous_connect_without_token": True,
                   "queue_max_size": 16 * 1048576},
        "channel": {"namespaces": [
            {"name": "bench", "history_size": 100, "history_ttl": "1h", "force_recovery": True, **open_ns},
            {"name": "fan", **open_ns},
        ]},
    }




def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return sorted(kids)


class GustProcess:
    def __init__(self, persistence: str = "sqlite", redis: str | None = None, workers: int = 1,
                 **overrides: Any) -> None:
        self.port = free_port()
        self.workers = workers
        self._tmp = tempfile.TemporaryDirectory(prefix="gust-bench-")
        config = bench_config(self.port, str(Path(self._tmp.name) / "data"), persistence, redis, workers)
        config.update(overrides)
        self.config_path = Path(self._tmp.name) / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GustProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # The server's log (one line per connection, lag warnings under saturation) goes to a file, not the table.
        with (Path(self._tmp.name) / "server.log").open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(self.config_path)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.check_alive()
            if self.workers > 1:
                # /health answers as soon as one worker listens: wait for every worker's listening socket.
                if len(pids := self.worker_pids()) == self.workers and all(
                        tcp_sockets(pid, self.port, LISTEN) for pid in pids):
                    return self
                time.sleep(0.05)
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("Gust did not start within 15 s")

    def worker_pids(self) -> list[int]:
        """The supervisor's child processes (its workers, with `workers` > 1), from /proc; [] otherwise."""
        if self.proc is None:
            return []
        return children(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Gust exited with code {self.proc.returncode}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (Path(self._tmp.name) / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __exit__(self, *exc: object | TracebackType) -> None:
        if self.proc is not None:
            workers = self.worker_pids()  # a supervisor stops its workers; a SIGKILLed one cannot
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                for pid in workers:  # orphaned, so not reaped: still our workers if their command line says so
                    with contextlib.suppress(OSError):
                        if b"server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            os.kill(pid, signal.SIGKILL)
        self._tmp.cleanup()
