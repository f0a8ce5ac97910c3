"""Gust in a subprocess on a free loopback port, for benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-api-key"
SECRET = "bench-secret-key-that-is-long-enough-for-hs256"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_config(port: int, data_dir: str, persistence: str) -> dict[str, Any]:
    open_ns = {f"allow_{op}_for_{who}": True for op in ("subscribe", "publish", "history", "presence")
               for who in ("client", "anonymous")}
    return {
        "http_server": {"port": port},
        "http_api": {"key": API_KEY},
        "data_dir": data_dir,
        "log_level": "warning",
        "engine": {"memory": {"persistence": persistence}},
        "client": {"token": {"hmac_secret_key": SECRET}, "allow_anonymous_connect_without_token": True,
                   "queue_max_size": 16 * 1048576},
        "channel": {"namespaces": [
            {"name": "bench", "history_size": 100, "history_ttl": "1h", "force_recovery": True, **open_ns},
            {"name": "fan", **open_ns},
        ]},
    }


class GustProcess:
    def __init__(self, persistence: str = "sqlite", **overrides: Any) -> None:
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="gust-bench-")
        config = bench_config(self.port, str(Path(self._tmp.name) / "data"), persistence)
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
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("Gust did not start within 15 s")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Gust exited with code {self.proc.returncode}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __exit__(self, *exc: object | TracebackType) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()
