"""Helpers for running Gust as a real subprocess (`python -m server --config FILE`) in tests.

`GustProcess` writes a config, starts the server from this checkout (PYTHONPATH = repo root), waits for
/health, and can SIGKILL/SIGTERM it and read its output. `Api` is a keep-alive HTTP client for the server API.
`GateProxy` is a TCP proxy whose gate can be shut (new connections are dropped at once) while a server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.config_load import deep_merge

REPO = Path(__file__).resolve().parents[1]
API_KEY = "k"
SECRET = "durability-secret-key-long-enough-for-hs256"
READY_TIMEOUT = 20.0


ESTABLISHED, LISTEN = "01", "0A"  # TCP states in /proc/net/tcp


def tcp_sockets(pid: int, port: int, state: str = ESTABLISHED) -> int:
    """How many TCP sockets on local `port` in `state` process `pid` holds (Linux /proc)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone meanwhile
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state and fields[9] in inodes:
                count += 1
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GUST_CONFIG", None)
    return env


def chat_namespace(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chat", "history_size": 1000, "history_ttl": "1h", "force_recovery": True,
        "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
        "allow_history_for_client": True, "allow_history_for_anonymous": True, **extra,
    }


def base_config(port: int, data_dir: Path | str) -> dict[str, Any]:
    return {
        "http_server": {"port": port},
        "http_api": {"key": API_KEY},
        "data_dir": str(data_dir),
        "client": {"token": {"hmac_secret_key": SECRET}, "allow_anonymous_connect_without_token": True},
        "channel": {"namespaces": [chat_namespace()]},
    }


class GustProcess:
    """One server configuration (one data_dir) that can be started several times, one run at a time."""

    def __init__(self, workdir: Path, data_dir: Path | None = None, extra: dict[str, Any] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir if data_dir is not None else workdir / "data"
        self.extra = extra or {}
        self.prefix = list(prefix)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.config_path = workdir / "config.json"

    # --- files ---------------------------------------------------------------------------------------

    def write_config(self) -> Path:
        self.port = free_port()
        config = deep_merge(base_config(self.port, self.data_dir), self.extra)
        self.config_path.write_text(json.dumps(config))
        os.chmod(self.config_path, 0o644)
        return self.config_path

    def command(self) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "server", "--config", str(self.config_path)]

    def out_path(self, run: int | None = None) -> Path:
        return self.workdir / f"run{self.runs if run is None else run}.out"

    def err_path(self, run: int | None = None) -> Path:
        return self.workdir / f"run{self.runs if run is None else run}.err"

    def stderr(self, run: int | None = None) -> str:
        path = self.err_path(run)
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self, run: int | None = None) -> str:
        parts = []
        for path in (self.out_path(run), self.err_path(run)):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    # --- running -------------------------------------------------------------------------------------

    def run_to_exit(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a server that is expected to fail at start; its exit code and output."""
        self.write_config()
        return subprocess.run(self.command(), cwd=self.workdir, env=server_env(), capture_output=True, text=True,
                              timeout=timeout)

    def spawn(self) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None, "previous run still alive"
        self.write_config()
        self.runs += 1
        with self.out_path().open("wb") as out, self.err_path().open("wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=server_env(), stdout=out, stderr=err)
        return self.proc

    def start(self) -> GustProcess:
        self.spawn()
        self.wait_ready()
        return self

    async def start_async(self) -> GustProcess:
        self.spawn()
        await self.wait_ready_async()
        return self

    def _health(self) -> int | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status
            finally:
                conn.close()
        except OSError:
            return None

    def _check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"server exited early with {code}:\n{self.output()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self._health() == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    async def wait_ready_async(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if await asyncio.to_thread(self._health) == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy within {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask for a graceful stop (SIGTERM, or e.g. SIGINT)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None when the process is still running after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    async def wait_exit_async(self, timeout: float) -> int | None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def cleanup(self) -> None:
        self.kill()

    def api(self) -> Api:
        return Api(self.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"


class Api:
    """Server API calls over one keep-alive connection (reopened after the server closes it)."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self.conn

    def raw(self, method: str, params: dict[str, Any]) -> tuple[int, bytes]:
        """One POST /api/<method>: (status, body). Transport errors propagate (OSError, HTTPException)."""
        conn = self._connection()
        try:
            conn.request("POST", f"/api/{method}", body=json.dumps(params),
                         headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.will_close:
                self.close()
            return resp.status, body
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        status, body = self.raw(method, params)
        assert status == 200, (method, status, body)
        decoded = json.loads(body)
        assert isinstance(decoded, dict), decoded
        return decoded

    def result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        reply = self.call(method, params)
        assert "result" in reply and "error" not in reply, (method, reply)
        result = reply["result"]
        assert isinstance(result, dict)
        return result

    def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """A publish that must succeed: its {"offset", "epoch"}."""
        return self.result("publish", {"channel": channel, "data": data})

    def history(self, channel: str, limit: int = -1) -> dict[str, Any]:
        return self.result("history", {"channel": channel, "limit": limit})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class GateProxy:
    """A loopback TCP proxy to `upstream_port`. While the gate is shut, new connections are closed at once
    (a client sees a failed connect and backs off); connections already piped stay until either side closes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = True
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.refused = 0

    async def start(self) -> GateProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def drop_connections(self) -> None:
        """Cut every piped connection (both sides); new ones go to `upstream_port`, which may have changed."""
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
