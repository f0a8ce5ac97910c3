"""Durable history and graceful shutdown, against real server processes (`python -m server --config FILE`).

With `engine.memory.persistence = "sqlite"` (the default) a publication is acknowledged only after its SQLite
transaction committed, so it survives SIGKILL; restarts keep each channel's epoch and top offset; SIGTERM drains
(503 for new work, 3001 "shutdown" for clients, running API calls finish) and exits 0; an unusable store stops
the server at start with exit code 1 and "gust: cannot start: ..." on stderr; a failing write at runtime is an
error (code 100) for that publish and leaves no gap in the offsets once the problem is fixed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from centrifuge import (
    Client,
)
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from server.app import Gust
from server.config import Config
from server.engines import HISTORY_FILE

from .procs import API_KEY, Api, GateProxy, GustProcess, chat_namespace
from .sdkevents import ClientEvents, SubEvents
from .wsclient import RawClient

SHUTDOWN_TIMEOUT = 10.0
RECOVERED = re.compile(r"history store: recovered (\d+) channel\(s\), (\d+) publication\(s\) in \d+ ms")




def new_server(procs: list[GustProcess], workdir: Path, **kwargs: Any) -> GustProcess:
    proc = GustProcess(workdir, **kwargs)
    procs.append(proc)
    return proc


def history_offsets(api: Api, channel: str) -> tuple[list[int], str, int, dict[int, Any]]:
    """(offsets in history, epoch, top offset, offset → data)."""
    result = api.history(channel)
    pubs = result.get("publications", [])
    offsets = [int(p.get("offset", 0)) for p in pubs]
    return offsets, result.get("epoch", ""), int(result.get("offset", 0)), {int(p["offset"]): p["data"] for p in pubs}


def recovered_counts(text: str) -> tuple[int, int]:
    found = RECOVERED.findall(text)
    assert len(found) == 1, f"expected one 'history store: recovered ...' line, got {found}:\n{text}"
    return int(found[0][0]), int(found[0][1])


def cannot_start_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("gust: cannot start:")]
    assert lines, f"no line starting with 'gust: cannot start:' on stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    return lines[-1]


async def concurrent_publishes(port: int, channel: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """`count` publishes in flight at once; (code, decoded body) for each, in request order."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=count)
    try:
        requests = [
            HTTPRequest(f"http://127.0.0.1:{port}/api/publish", method="POST",
                        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                        body=orjson.dumps({"channel": channel, "data": {"c": i}}), request_timeout=15)
            for i in range(count)
        ]
        responses: list[HTTPResponse] = await asyncio.gather(*(client.fetch(r, raise_error=False) for r in requests))
        return [(r.code, orjson.loads(r.body) if r.body else {}) for r in responses]
    finally:
        client.close()


# --- 1. SIGKILL after acknowledgement: nothing acknowledged is lost ----------------------------------------


def test_sigkill_keeps_every_acknowledged_publication(tmp_path: Path, procs: list[GustProcess]) -> None:
    server = new_server(procs, tmp_path / "srv").start()
    seq, burst = "chat:seq", "chat:burst"
    api = server.api()

    acked: dict[int, Any] = {}
    epochs = set()
    for n in range(200):
        result = api.publish(seq, {"n": n})
        assert result["offset"] not in acked, result
        acked[result["offset"]] = {"n": n}
        epochs.add(result["epoch"])
    assert sorted(acked) == list(range(1, 201))
    assert len(epochs) == 1
    seq_epoch = epochs.pop()

    replies = asyncio.run(concurrent_publishes(server.port, burst, 50))
    burst_acked: dict[int, Any] = {}
    burst_epochs = set()
    for i, (code, body) in enumerate(replies):
        assert code == 200 and "result" in body, (i, code, body)
        assert body["result"]["offset"] not in burst_acked, body
        burst_acked[body["result"]["offset"]] = {"c": i}
        burst_epochs.add(body["result"]["epoch"])
    assert sorted(burst_acked) == list(range(1, 51))
    assert len(burst_epochs) == 1
    burst_epoch = burst_epochs.pop()
    api.close()

    server.kill()  # SIGKILL right after the last acknowledgement
    server.start()
    api = server.api()
    try:
        for channel, epoch, expected in ((seq, seq_epoch, acked), (burst, burst_epoch, burst_acked)):
            offsets, got_epoch, top, data = history_offsets(api, channel)
            assert got_epoch == epoch, (channel, got_epoch, epoch)
            assert top == max(expected), (channel, top)
            assert offsets == sorted(expected), (channel, offsets)
            assert data == expected, channel

        assert recovered_counts(server.stderr()) == (2, 250)

        after = api.publish(seq, {"after": "restart"})
        assert after == {"offset": 201, "epoch": seq_epoch}
        after = api.publish(burst, {"after": "restart"})
        assert after == {"offset": 51, "epoch": burst_epoch}
    finally:
        api.close()


def test_sigkill_while_publishing_loses_nothing_acknowledged(tmp_path: Path, procs: list[GustProcess]) -> None:
    """Four publishers on one channel; SIGKILL lands while publications are in flight. Whatever was acknowledged
    is back after the restart; what is stored is a gap-free prefix of the offsets."""
    server = new_server(procs, tmp_path / "srv").start()
    channel, writers = "chat:kill", 4
    acked: dict[int, Any] = {}
    duplicates: list[Any] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publisher(w: int) -> None:
        api = server.api()
        try:
            for n in range(100_000):
                if stop.is_set():
                    return
                data = {"w": w, "n": n}
                result = api.publish(channel, data)
                with lock:
                    if result["offset"] in acked:
                        duplicates.append((result, acked[result["offset"]], data))
                    acked[result["offset"]] = (data, result["epoch"])
        except (OSError, http.client.HTTPException):
            return  # the server is gone
        finally:
            api.close()

    threads = [threading.Thread(target=publisher, args=(w,), daemon=True) for w in range(writers)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(acked) < 150:
            assert time.monotonic() < deadline, f"only {len(acked)} publications acknowledged in 20 s"
            assert all(t.is_alive() for t in threads), "a publisher failed before the kill"
            time.sleep(0.005)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not duplicates, f"one offset acknowledged twice: {duplicates[:3]}"
    epochs = {epoch for _, epoch in acked.values()}
    assert len(epochs) == 1, epochs
    epoch = epochs.pop()

    server.start()
    api = server.api()
    try:
        offsets, got_epoch, top, data = history_offsets(api, channel)
        assert got_epoch == epoch
        assert offsets == list(range(1, top + 1)), "stored offsets are not a gap-free prefix"
        missing = sorted(set(acked) - set(offsets))
        assert not missing, f"acknowledged but lost after SIGKILL: {missing}"
        assert all(data[o] == d for o, (d, _) in acked.items())
        assert max(acked) <= top <= max(acked) + writers  # at most one unacknowledged in flight per publisher
        assert recovered_counts(server.stderr()) == (1, top)
        assert api.publish(channel, {"after": "restart"}) == {"offset": top + 1, "epoch": epoch}
    finally:
        api.close()


# --- 2. An SDK subscriber recovers across a SIGKILL + restart ------------------------------------------------


async def poll(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.sdk
@pytest.mark.gen_test(timeout=45)
async def test_sdk_recovers_missed_publications_after_sigkill_restart(
    tmp_path: Path, procs: list[GustProcess]
) -> None:
    server = new_server(procs, tmp_path / "srv")
    await server.start_async()
    # The SDK talks to the server through a proxy whose gate stays shut while the server restarts, so the
    # publications made right after the restart are certainly missed by the subscriber.
    proxy = await GateProxy(server.port).start()
    events, sub_events = ClientEvents(), SubEvents()
    client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket", events=events, proxy=None,
                    min_reconnect_delay=0.1, max_reconnect_delay=0.5)
    channel = "chat:r"
    api: Api | None = None
    try:
        await client.connect()
        first_conn = await asyncio.wait_for(events.connected.get(), 5)
        sub = client.new_subscription(channel, events=sub_events)
        await sub.subscribe()
        first = await asyncio.wait_for(sub_events.subscribed.get(), 5)
        assert first.recoverable is True
        assert first.stream_position is not None
        epoch = first.stream_position.epoch
        assert epoch

        api = server.api()
        for i in range(1, 4):
            assert api.publish(channel, {"before": i}) == {"offset": i, "epoch": epoch}
        before = [await asyncio.wait_for(sub_events.pubs.get(), 5) for _ in range(3)]
        assert [(p.offset, p.data) for p in before] == [(i, {"before": i}) for i in range(1, 4)]
        api.close()

        proxy.open = False
        server.kill()
        await poll(lambda: len(events.connecting) >= 2, 5, "the SDK to notice the dropped connection")
        await poll(lambda: proxy.refused >= 1, 5, "a reconnect attempt while the server is down")

        await server.start_async()  # same data_dir, new port
        api = server.api()
        missed = [{"missed": i} for i in range(1, 6)]
        for i, data in enumerate(missed):
            assert api.publish(channel, data) == {"offset": 4 + i, "epoch": epoch}
        assert sub_events.pubs.empty()

        proxy.upstream_port = server.port
        proxy.open = True
        again_conn = await asyncio.wait_for(events.connected.get(), 10)
        assert again_conn.client != first_conn.client
        again = await asyncio.wait_for(sub_events.subscribed.get(), 10)
        assert again.was_recovering is True
        assert again.recovered is True
        assert again.stream_position is not None
        assert again.stream_position.epoch == epoch

        recovered = [await asyncio.wait_for(sub_events.pubs.get(), 5) for _ in range(5)]
        assert [(p.offset, p.data) for p in recovered] == [(4 + i, d) for i, d in enumerate(missed)]

        assert api.publish(channel, {"live": True}) == {"offset": 9, "epoch": epoch}
        live = await asyncio.wait_for(sub_events.pubs.get(), 5)
        assert (live.offset, live.data) == (9, {"live": True})
        await asyncio.sleep(0.3)
        leftover = []
        while not sub_events.pubs.empty():
            leftover.append(sub_events.pubs.get_nowait())
        assert not leftover, f"duplicates or extra publications: {[(p.offset, p.data) for p in leftover]}"
    finally:
        if api is not None:
            api.close()
        await client.disconnect()
        await asyncio.sleep(0.05)
        await proxy.close()


# --- 3. SIGTERM/SIGINT: clients get 3001, exit 0, acknowledged publications kept ------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.gen_test(timeout=45)
async def test_graceful_stop_closes_clients_with_3001_and_keeps_history(
    tmp_path: Path, procs: list[GustProcess], sig: signal.Signals
) -> None:
    server = new_server(procs, tmp_path / "srv", extra={"shutdown": {"timeout": f"{SHUTDOWN_TIMEOUT:g}s"}})
    await server.start_async()
    channel = "chat:t"
    clients = [await RawClient.open(server.ws_url) for _ in range(2)]
    api = server.api()
    try:
        for client in clients:
            await client.connect()
            subscribed = await client.command("subscribe", {"channel": channel})
            assert "subscribe" in subscribed, subscribed
        acked = [api.publish(channel, {"t": i}) for i in range(5)]
        epoch = acked[0]["epoch"]
        assert [a["offset"] for a in acked] == [1, 2, 3, 4, 5]
        for client in clients:
            for i in range(5):
                push = await client.push("pub")
                assert push["pub"]["data"] == {"t": i}
        api.close()

        server.terminate(sig)
        for client in clients:
            closed = await client.closed(timeout=SHUTDOWN_TIMEOUT)
            assert (closed.code, closed.reason) == (3001, "shutdown")
        code = await server.wait_exit_async(SHUTDOWN_TIMEOUT + 5)
        assert code == 0, server.output()
    finally:
        for client in clients:
            client.close()
        api.close()

    await server.start_async()
    api = server.api()
    try:
        offsets, got_epoch, top, data = history_offsets(api, channel)
        assert (offsets, got_epoch, top) == ([1, 2, 3, 4, 5], epoch, 5)
        assert [data[o] for o in offsets] == [{"t": i} for i in range(5)]
        assert recovered_counts(server.stderr()) == (1, 5)
        assert api.publish(channel, {"t": 5}) == {"offset": 6, "epoch": epoch}
    finally:
        api.close()


# --- 4. SIGTERM during a running API call: it finishes, new requests get 503, exit 0 -------------------------


def upgrade_status(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/connection/websocket", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_sigterm_lets_running_api_call_finish_and_refuses_new_work(
    tmp_path: Path, procs: list[GustProcess]
) -> None:
    server = new_server(procs, tmp_path / "srv", extra={"shutdown": {"timeout": f"{SHUTDOWN_TIMEOUT:g}s"}})
    server.start()
    channel, count = "chat:inflight", 4000
    commands = [{"publish": {"channel": channel, "data": {"i": i}}} for i in range(count)]

    # Keep-alive connections opened (and used once) before the signal: the listener closes at SIGTERM.
    idle_api = server.api()
    idle_api.history("chat:other", limit=0)
    ws_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    ws_conn.request("GET", "/health")
    ws_conn.getresponse().read()

    batch_result: dict[str, Any] = {}

    def run_batch() -> None:
        batch_api = server.api()
        try:
            batch_result["status"], batch_result["body"] = batch_api.raw("batch", {"commands": commands})
        except (OSError, http.client.HTTPException) as exc:
            batch_result["error"] = repr(exc)
        finally:
            batch_api.close()

    watcher = server.api()
    try:
        thread = threading.Thread(target=run_batch, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while watcher.history(channel, limit=0).get("offset", 0) == 0:  # the batch is committing
                assert time.monotonic() < deadline, "batch never started"
                time.sleep(0.005)
            watcher.close()
            server.terminate()

            # Wait until the listener is closed (the server handled the signal).
            deadline = time.monotonic() + 5
            while True:
                try:
                    socket_probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
                    socket_probe.connect()
                    socket_probe.close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "listener still open 5 s after SIGTERM"
                time.sleep(0.01)

            # New work on connections that were already open: 503 (or the connection is gone).
            try:
                status = upgrade_status(ws_conn)
                assert status == 503, f"WebSocket upgrade during shutdown answered {status}"
            except (OSError, http.client.HTTPException):
                pass
            try:
                status, body = idle_api.raw("publish", {"channel": channel, "data": {"late": True}})
                assert status == 503, f"API call during shutdown answered {status} {body!r}"
            except (OSError, http.client.HTTPException):
                pass

            code = server.wait_exit(SHUTDOWN_TIMEOUT + 5)
            assert code == 0, server.output()
        finally:
            thread.join(SHUTDOWN_TIMEOUT + 5)
        assert "error" not in batch_result, (batch_result, server.output())
        assert batch_result["status"] == 200, batch_result
        replies = json.loads(batch_result["body"])["replies"]
        assert len(replies) == count
        offsets = [r.get("publish", {}).get("offset") for r in replies]
        assert offsets == list(range(1, count + 1)), [r for r in replies if "error" in r][:3]
        epoch = replies[0]["publish"]["epoch"]
        # When the server logged the batch as finished after it began shutting down, it must have waited for it.
        lines = server.stderr().splitlines()
        shutting = next(i for i, line in enumerate(lines) if "shutting down" in line)
        finished = next(i for i, line in enumerate(lines) if "POST /api/batch" in line)
        if finished > shutting:
            assert any("waiting for 1 API request(s) to finish" in line for line in lines[shutting:finished]), \
                "\n".join(lines[-30:])
    finally:
        idle_api.close()
        watcher.close()
        ws_conn.close()

    server.start()
    api = server.api()
    try:
        offsets, got_epoch, top, data = history_offsets(api, channel)
        assert (got_epoch, top) == (epoch, count)
        assert offsets == list(range(count - 999, count + 1))  # history_size 1000
        assert data[count] == {"i": count - 1}
        assert api.publish(channel, {"next": True}) == {"offset": count + 1, "epoch": epoch}
    finally:
        api.close()


# --- 5. Store problems ----------------------------------------------------------------------------------------


def test_data_dir_that_cannot_be_created(tmp_path: Path, procs: list[GustProcess]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    server = new_server(procs, tmp_path / "srv", data_dir=blocker / "data")
    done = server.run_to_exit()
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    line = cannot_start_line(done.stderr)
    assert "data directory" in line, line
    assert str(blocker / "data") in line, line


def test_corrupt_history_file(tmp_path: Path, procs: list[GustProcess]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / HISTORY_FILE).write_bytes(os.urandom(4096))
    server = new_server(procs, tmp_path / "srv", data_dir=data_dir)
    done = server.run_to_exit()
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    line = cannot_start_line(done.stderr)
    assert "corrupt" in line, line
    assert HISTORY_FILE in line, line


def test_read_only_history_file(tmp_path: Path, procs: list[GustProcess]) -> None:
    as_root = os.geteuid() == 0
    setpriv = shutil.which("setpriv")
    if as_root and setpriv is None:
        pytest.skip("running as root (permission bits do not apply) and setpriv is not available to drop privileges")
    # As root, the server runs as nobody (65534) with files owned by root: readable, not writable. Everything it
    # needs must be reachable by nobody, which pytest's tmp_path (under a 0700 directory) is not.
    base = Path(tempfile.mkdtemp(prefix="gust-ro-")) if as_root else tmp_path
    try:
        if as_root:
            os.chmod(base, 0o755)
        data_dir = base / "data"
        first = new_server(procs, base / "srv", data_dir=data_dir)
        first.start()
        api = first.api()
        assert api.publish("chat:ro", {"x": 1})["offset"] == 1
        api.close()
        first.terminate()
        assert first.wait_exit(SHUTDOWN_TIMEOUT + 5) == 0, first.output()
        db = data_dir / HISTORY_FILE
        assert db.is_file()

        if as_root:
            os.chmod(base / "srv", 0o755)
            os.chmod(data_dir, 0o755)
            os.chmod(db, 0o644)
            prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        else:
            os.chmod(data_dir, 0o500)
            os.chmod(db, 0o400)
            prefix = []
        try:
            second = new_server(procs, base / "srv", data_dir=data_dir, prefix=prefix)
            done = second.run_to_exit()
        finally:
            os.chmod(data_dir, 0o700)
            os.chmod(db, 0o600)
        assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
        line = cannot_start_line(done.stderr)
        assert "read-only" in line or "cannot open" in line, line
        assert HISTORY_FILE in line, line
    finally:
        if as_root:
            shutil.rmtree(base, ignore_errors=True)


TMPFS_SIZE = 512 * 1024
FILLER_SIZE = 200 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs with a 200 KiB filler file on it (so space can be freed later)."""
    mount = shutil.which("mount")
    umount = shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("mount/umount not available")
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (where / "filler").write_bytes(b"\0" * FILLER_SIZE)
        yield where
    finally:
        if subprocess.run([umount, str(where)], capture_output=True).returncode != 0:
            subprocess.run([umount, "-l", str(where)], capture_output=True)


@pytest.fixture
def ns_extra() -> dict[str, Any]:
    return {}


@pytest.fixture
def config_overrides(request: pytest.FixtureRequest, ns_extra: dict[str, Any]) -> dict[str, Any]:
    """In-process servers: an API key and the durability tests' chat namespace (plus `ns_extra`); with the
    `tmpfs` fixture, the data directory on it."""
    overrides: dict[str, Any] = {"http_api": {"key": API_KEY},
                                 "channel": {"namespaces": [chat_namespace(**ns_extra)]}}
    if "tmpfs" in request.fixturenames:
        overrides["data_dir"] = str(request.getfixturevalue("tmpfs") / "data")
    return overrides


async def api_post(base_url: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    client = SimpleAsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(f"{base_url}/api/{method}", method="POST", raise_error=False, request_timeout=15,
                                  headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                                  body=orjson.dumps(params))
    finally:
        client.close()
    return resp.code, orjson.loads(resp.body) if resp.body else {}


async def publish_batch(base_url: str, channel: str, datas: list[Any]) -> list[dict[str, Any]]:
    """A parallel API batch of publishes (all submitted at once: one group commit); its replies."""
    code, body = await api_post(base_url, "batch", {
        "parallel": True, "commands": [{"publish": {"channel": channel, "data": d}} for d in datas]})
    assert code == 200 and "replies" in body, (code, body)
    replies: list[dict[str, Any]] = body["replies"]
    assert len(replies) == len(datas), replies
    return replies


def stored_offsets(db: Path, channel: str) -> tuple[list[int], int]:
    """What the SQLite file itself holds for `channel`: (publication offsets, stream top)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        offsets = [o for (o,) in conn.execute(
            "SELECT offset FROM publications WHERE channel = ? ORDER BY offset", (channel,))]
        (top,) = conn.execute("SELECT top FROM streams WHERE channel = ?", (channel,)).fetchone()
    finally:
        conn.close()
    return offsets, int(top)


@pytest.mark.parametrize("ns_extra", [{"allow_publish_for_client": True, "allow_publish_for_anonymous": True}])
@pytest.mark.gen_test(timeout=30)
async def test_disk_full_publish_fails_then_recovers_without_gap(
    tmpfs: Path, gust: Gust, base_url: str, ws_url: str
) -> None:
    channel = "chat:full"
    big = "x" * 60_000
    subscriber = await RawClient.open(ws_url)
    try:
        await subscriber.connect()
        assert "subscribe" in await subscriber.command("subscribe", {"channel": channel})

        acked: list[int] = []
        errors: list[dict[str, Any]] = []
        epoch = ""
        for i in range(30):
            code, body = await api_post(base_url, "publish", {"channel": channel, "data": {"i": i, "pad": big}})
            assert code == 200, (code, body)
            if "error" in body:
                errors.append(body["error"])
                break
            assert "result" in body, body
            acked.append(body["result"]["offset"])
            epoch = body["result"]["epoch"]
        assert errors, f"the {TMPFS_SIZE // 1024} KiB tmpfs never filled up after {len(acked)} publications"
        assert acked, "not even one publication fitted"
        assert errors[0]["code"] == 100, errors
        assert acked == list(range(1, len(acked) + 1))
        last = acked[-1]

        # Still full: a single publish, a parallel batch and a client publish all fail (none hangs).
        code, body = await api_post(base_url, "publish", {"channel": channel, "data": {"again": True, "pad": big}})
        assert code == 200 and "error" in body and body["error"]["code"] == 100, (code, body)
        replies = await publish_batch(base_url, channel, [{"batch": i, "pad": big} for i in range(3)])
        assert all("error" in r and r["error"]["code"] == 100 for r in replies), replies
        reply = await subscriber.command("publish", {"channel": channel, "data": {"client": True, "pad": big}})
        assert "error" in reply and reply["error"]["code"] == 100, {k: v for k, v in reply.items() if k != "pad"}

        # History shows exactly the acknowledged publications: none of the failed ones.
        code, body = await api_post(base_url, "history", {"channel": channel, "limit": -1})
        assert code == 200 and "result" in body, (code, body)
        assert [p["offset"] for p in body["result"]["publications"]] == acked
        assert (body["result"]["offset"], body["result"]["epoch"]) == (last, epoch)

        # Space comes back: the next publications continue right after the last acknowledged offset.
        (tmpfs / "filler").unlink()
        code, body = await api_post(base_url, "publish", {"channel": channel, "data": {"small": True}})
        assert (code, body) == (200, {"result": {"offset": last + 1, "epoch": epoch}})
        replies = await publish_batch(base_url, channel, [{"after": i} for i in range(5)])
        assert sorted(r.get("publish", {}).get("offset", 0) for r in replies) == list(range(last + 2, last + 7)), \
            replies
        reply = await subscriber.command("publish", {"channel": channel, "data": {"client": "after"}})
        assert reply.get("publish") == {}, reply
        top = last + 7

        code, body = await api_post(base_url, "history", {"channel": channel, "limit": -1})
        assert [p["offset"] for p in body["result"]["publications"]] == list(range(1, top + 1))
        assert (body["result"]["offset"], body["result"]["epoch"]) == (top, epoch)
        assert body["result"]["publications"][last]["data"] == {"small": True}
        assert stored_offsets(Path(gust.config.data_dir) / HISTORY_FILE, channel) == (list(range(1, top + 1)), top)

        # The subscriber got every stored publication once, in order, and none of the failed ones.
        received: list[int] = []
        while len(received) < top:
            push = await subscriber.push("pub")
            received.append(push["pub"]["offset"])
        assert received == list(range(1, top + 1))
        with pytest.raises(asyncio.TimeoutError):
            await subscriber.push("pub", timeout=0.3)
    finally:
        subscriber.close()


# --- 6. persistence "none": history does not survive a restart -------------------------------------------------


def test_persistence_none_loses_history_on_restart(tmp_path: Path, procs: list[GustProcess]) -> None:
    server = new_server(procs, tmp_path / "srv", extra={"engine": {"memory": {"persistence": "none"}}})
    server.start()
    api = server.api()
    channel = "chat:volatile"
    acked = [api.publish(channel, {"v": i}) for i in range(3)]
    assert [a["offset"] for a in acked] == [1, 2, 3]
    old_epoch = acked[0]["epoch"]
    api.close()
    server.terminate()
    assert server.wait_exit(SHUTDOWN_TIMEOUT + 5) == 0, server.output()

    server.start()
    api = server.api()
    try:
        offsets, epoch, top, _ = history_offsets(api, channel)
        assert (offsets, top) == ([], 0)
        assert epoch and epoch != old_epoch
        assert api.publish(channel, {"v": "new"}) == {"offset": 1, "epoch": epoch}
    finally:
        api.close()


# --- 7. File permissions ----------------------------------------------------------------------------------------


def test_data_dir_and_history_file_are_private(gust: Gust, config: Config) -> None:
    data_dir = Path(config.data_dir)
    db = data_dir / HISTORY_FILE
    assert db.is_file()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700, oct(data_dir.stat().st_mode)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600, oct(db.stat().st_mode)
    for suffix in ("-wal", "-shm"):  # they hold publication data too
        extra = data_dir / (HISTORY_FILE + suffix)
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600, (suffix, oct(extra.stat().st_mode))
