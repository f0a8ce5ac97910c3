"""The servers under test, each in its own process: Gust (through `gustproc.GustProcess`) and the two peers
in `bench/peers/`. Each is a context manager yielding a `Target`: where to connect, how to publish, and the
processes whose CPU time and memory the benchmark reads from /proc. `REDIS_SERVERS` are Gust on the Redis
engine (our own `redis-server`, `tests.redisproc.RedisServer`) with 1 and 2 workers: their CPU figure sums the
supervisor and every worker; the redis-server's CPU is read separately.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import free_port, tcp_sockets
from tests.redisproc import RedisServer

from .gustproc import API_KEY, ROOT, GustProcess

SERVERS = ("gust", "naive-tornado", "websockets")
REDIS_SERVERS = {"gust-redis-1w": 1, "gust-redis-2w": 2}  # name → workers
PEER_MODULES = {"naive-tornado": "bench.peers.naive_tornado", "websockets": "bench.peers.websockets_broadcast"}


@dataclass(frozen=True)
class Target:
    name: str
    pid: int
    ws_port: int
    api_port: int
    ws_path: str = "/connection/websocket"
    api_headers: dict[str, str] = field(default_factory=dict)
    channel_prefix: str = "fan:"  # Gust: the "fan" namespace of gustproc's config (no history, open to all)
    workers: tuple[int, ...] = ()  # worker processes of a supervisor (`pid`): their CPU and memory count too
    redis_pid: int | None = None  # our redis-server, when Gust runs on the Redis engine: CPU read separately

    def pids(self) -> tuple[int, ...]:
        return (self.pid, *self.workers)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def redis_cpu_seconds(self) -> float | None:
        return None if self.redis_pid is None else cpu_seconds(self.redis_pid)

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def connections(self) -> dict[int, int]:
        """Worker pid → established TCP connections it holds on the server port (only with several workers)."""
        return {pid: tcp_sockets(pid, self.ws_port) for pid in self.workers}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of `pid`, in seconds, at nanosecond resolution where the
    kernel has schedstat (run time on a CPU), else from /proc/<pid>/stat clock ticks."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (capped by the hard limit); children started
    afterwards (the servers) inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f} s")


@contextlib.contextmanager
def start(name: str) -> Iterator[Target]:
    """Start server `name` (one of SERVERS) in a fresh process; stop it on exit."""
    if name == "gust":
        # History off in the "fan" namespace, so the SQLite store is not involved; persistence "none" keeps
        # it from even being opened.
        with GustProcess(persistence="none") as gust:
            assert gust.proc is not None
            yield Target(name, gust.proc.pid, gust.port, gust.port, api_headers={"X-API-Key": API_KEY})
            gust.check_alive()
        return
    if name in REDIS_SERVERS:
        with RedisServer() as redis, GustProcess(persistence="none", redis=redis.url,
                                                  workers=REDIS_SERVERS[name]) as gust:
            assert gust.proc is not None
            workers = tuple(gust.worker_pids()) if gust.workers > 1 else ()
            yield Target(name, gust.proc.pid, gust.port, gust.port, api_headers={"X-API-Key": API_KEY},
                         workers=workers, redis_pid=redis.pid)
            gust.check_alive()
            if not redis.running():
                raise RuntimeError(f"{name}: redis-server exited during the run:\n{redis.log_tail()}")
            if workers and tuple(gust.worker_pids()) != workers:
                raise RuntimeError(f"{name}: a worker was restarted during the run:\n{gust.log_tail()}")
        return
    ws_port, api_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", PEER_MODULES[name], "--port", str(ws_port),
                             "--api-port", str(api_port)], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_listening(ws_port, proc)
        wait_listening(api_port, proc)
        yield Target(name, proc.pid, ws_port, api_port)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
