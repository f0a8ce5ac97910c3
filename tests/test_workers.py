"""`serve --workers N` (`http_server.workers`): a supervisor process runs N workers sharing one port (SO_REUSEPORT).

Real processes throughout: the config refusals (memory engine, port 0), then with the Redis engine on our own
`redis-server`: two distinct workers serve, publications reach clients on every worker, a SIGKILLed worker is
replaced, a taken port makes the supervisor give up, SIGTERM stops everything with exit code 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import LISTEN, GustProcess, free_port, server_env, tcp_sockets
from .wsclient import RawClient

STARTED_RE = re.compile(r"worker (\d+) started \(pid (\d+)\)")
SHUTDOWN_TIMEOUT = 5.0
WAIT = 20.0  # bound for anything a test waits for


def redis_extra(url: str, prefix: str, **http: Any) -> dict[str, Any]:
    return {"engine": {"type": "redis", "redis": {"address": url, "prefix": prefix}},
            "http_server": {"workers": 2, **http}, "shutdown": {"timeout": f"{SHUTDOWN_TIMEOUT:g}s"}}


def started(proc: GustProcess) -> list[tuple[int, int]]:
    """(worker index, pid) for every "worker N started (pid P)" line so far, in order."""
    return [(int(i), int(p)) for i, p in STARTED_RE.findall(proc.stderr())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(what: str, check: Any, proc: GustProcess, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s:\n{proc.output()}")
        time.sleep(0.05)


def running_workers(proc: GustProcess, n: int = 2) -> dict[int, int]:
    """Index -> pid of the latest start of each worker, once `n` workers have started and listen."""
    def check() -> dict[int, int] | None:
        latest = dict(started(proc))
        ok = len(latest) == n and all(alive(pid) and tcp_sockets(pid, proc.port, LISTEN) for pid in latest.values())
        return latest if ok else None
    result: dict[int, int] = wait_for(f"{n} workers running", check, proc)
    return result




@pytest.fixture
def workers_cleanup() -> Iterator[list[GustProcess]]:
    """Supervisors whose workers are SIGKILLed at teardown too (a SIGKILLed supervisor cannot stop them;
    they would stop themselves within a second, but a failed test should not leave them behind at all)."""
    made: list[GustProcess] = []
    yield made
    for proc in made:
        proc.cleanup()
        for _, pid in started(proc):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def new_supervisor(tmp_path: Path, procs: list[GustProcess], cleanup: list[GustProcess],
                   extra: dict[str, Any]) -> GustProcess:
    proc = GustProcess(tmp_path / "srv", extra=extra)
    procs.append(proc)
    cleanup.append(proc)
    return proc


# --- refusals: no Redis needed -------------------------------------------------------------------------------

def run_flags(proc: GustProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    proc.write_config()
    return subprocess.run([*proc.command(), *flags], cwd=proc.workdir, env=server_env(), capture_output=True,
                          text=True, timeout=30)


def test_workers_with_memory_engine_is_a_config_error(tmp_path: Path) -> None:
    done = run_flags(GustProcess(tmp_path / "srv"), "--workers", "2")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "http_server.workers" in done.stderr and "redis" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "started" not in done.stderr, done.stderr


def test_workers_below_one_is_a_config_error(tmp_path: Path) -> None:
    done = run_flags(GustProcess(tmp_path / "srv"), "--workers", "0")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "http_server.workers" in done.stderr, done.stderr


def test_port_zero_with_workers_is_refused(tmp_path: Path) -> None:
    # Refused before anything connects: the Redis address is never used.
    proc = GustProcess(tmp_path / "srv", extra=redis_extra("redis://127.0.0.1:1", "unused", port=0))
    done = proc.run_to_exit()
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert "port 0" in lines[-1] and "workers" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr and "started" not in done.stderr, done.stderr


# --- with the Redis engine -----------------------------------------------------------------------------------

@pytest.mark.redis
@pytest.mark.gen_test(timeout=60)
async def test_two_workers_serve_one_port_and_share_publications(
    tmp_path: Path, procs: list[GustProcess], workers_cleanup: list[GustProcess], redis_url: str,
    redis_prefix: str,
) -> None:
    server = new_supervisor(tmp_path, procs, workers_cleanup, redis_extra(redis_url, redis_prefix))
    await server.start_async()
    pids = running_workers(server)
    assert sorted(pids) == [1, 2] and len(set(pids.values())) == 2 and server.pid not in pids.values(), pids

    api = server.api()
    clients: list[RawClient] = []
    try:
        # Every node shows up in `info` (whichever worker answers), once both have announced themselves.
        def two_nodes() -> bool:
            return len(api.result("info", {})["nodes"]) == 2
        wait_for("info lists both nodes", two_nodes, server)

        channel = "chat:workers"
        for _ in range(20):
            client = await RawClient.open(server.ws_url)
            clients.append(client)
            await client.connect()
            subscribed = await client.command("subscribe", {"channel": channel})
            assert "subscribe" in subscribed, subscribed
        # The kernel spread them (the API's keep-alive connection may be counted too).
        per_worker = {index: tcp_sockets(pid, server.port) for index, pid in pids.items()}
        assert sum(per_worker.values()) >= 20 and all(per_worker.values()), per_worker

        api.publish(channel, {"text": "to everyone"})
        for client in clients:
            push = await client.push("pub", timeout=10)
            assert push["pub"]["data"] == {"text": "to everyone"}
    finally:
        for client in clients:
            client.close()
        api.close()


@pytest.mark.redis
@pytest.mark.gen_test(timeout=60)
async def test_a_killed_worker_is_replaced(
    tmp_path: Path, procs: list[GustProcess], workers_cleanup: list[GustProcess], redis_url: str,
    redis_prefix: str,
) -> None:
    server = new_supervisor(tmp_path, procs, workers_cleanup, redis_extra(redis_url, redis_prefix))
    await server.start_async()
    before = running_workers(server)
    os.kill(before[1], signal.SIGKILL)

    def replaced() -> dict[int, int] | None:
        latest = dict(started(server))
        return latest if latest[1] != before[1] and alive(latest[1]) and tcp_sockets(latest[1], server.port, LISTEN) \
            else None
    after = wait_for("worker 1 replaced", replaced, server)
    assert after[2] == before[2] and after[1] not in before.values(), (before, after)
    assert f"worker 1 (pid {before[1]}) was killed by SIGKILL" in server.stderr(), server.stderr()
    assert server.proc is not None and server.proc.poll() is None

    # The port keeps serving: new clients get publications, whichever worker they land on.
    await server.wait_ready_async()
    api = server.api()
    clients = [await RawClient.open(server.ws_url) for _ in range(6)]
    try:
        for client in clients:
            await client.connect()
            assert "subscribe" in await client.command("subscribe", {"channel": "chat:after"})
        api.publish("chat:after", {"n": 1})
        for client in clients:
            assert (await client.push("pub", timeout=10))["pub"]["data"] == {"n": 1}
    finally:
        for client in clients:
            client.close()
        api.close()


@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.gen_test(timeout=60)
async def test_sigterm_stops_every_worker_and_exits_0(
    tmp_path: Path, procs: list[GustProcess], workers_cleanup: list[GustProcess], redis_url: str,
    redis_prefix: str, sig: signal.Signals,
) -> None:
    server = new_supervisor(tmp_path, procs, workers_cleanup, redis_extra(redis_url, redis_prefix))
    await server.start_async()
    pids = running_workers(server)
    client = await RawClient.open(server.ws_url)
    try:
        await client.connect()
        server.terminate(sig)
        closed = await client.closed(timeout=SHUTDOWN_TIMEOUT + 5)
        assert (closed.code, closed.reason) == (3001, "shutdown")
    finally:
        client.close()
    code = await server.wait_exit_async(SHUTDOWN_TIMEOUT + 15)
    assert code == 0, server.output()
    assert not [pid for pid in pids.values() if alive(pid)], server.output()
    assert "all workers stopped" in server.stderr()


@pytest.mark.redis
def test_supervisor_gives_up_when_workers_cannot_listen(
    tmp_path: Path, procs: list[GustProcess], workers_cleanup: list[GustProcess], redis_url: str,
    redis_prefix: str,
) -> None:
    port = free_port()
    with socket.socket() as blocker:  # a listener without SO_REUSEPORT: the workers' bind fails
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        # (the config's port comes from `extra`; `server.port`, for /health, is not used here)
        server = new_supervisor(tmp_path, procs, workers_cleanup, redis_extra(redis_url, redis_prefix, port=port))
        server.spawn()
        code = server.wait_exit(WAIT + 20)
    assert code == 1, server.output()
    last = server.stderr().strip().splitlines()[-1]
    assert last.startswith("gust: ") and "giving up" in last, server.stderr()
    assert "cannot listen" in server.stderr(), server.stderr()
    assert not [pid for _, pid in started(server) if alive(pid)]

