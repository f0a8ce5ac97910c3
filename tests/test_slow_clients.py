"""Slow and stuck peers against a real `python -m server` process: the slow-HTTP limits of its HTTPServer
(header timeout, body timeout, header size, idle keep-alive), and a WebSocket client that stops reading while
3,000 × 4 KiB are published (closed with 3008, server memory back near its baseline). In each case a healthy
client on the same channel keeps receiving."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .procs import Api, GustProcess
from .promscrape import scrape_sync, value, wait_for
from .rawws import RawWebSocket, handshake_request
from .wsclient import RawClient

SLOW_HTTP = {"http_server": {"header_timeout": "500ms", "body_timeout": "500ms", "max_header_size": 4096}}
LIMIT = 10.0  # seconds: every wait below is bounded by this


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GustProcess]:
    proc = GustProcess(tmp_path_factory.mktemp("slow-http"), extra=SLOW_HTTP)
    proc.start()
    yield proc
    proc.kill()


@contextlib.contextmanager
def subscriber(proc: GustProcess, channel: str) -> Iterator[ClientConnection]:
    with ws_connect(proc.ws_url, open_timeout=LIMIT) as ws:
        ws.send(b'{"id":1,"connect":{}}\n' + orjson.dumps({"id": 2, "subscribe": {"channel": channel}}), text=True)
        got = ""
        while '"id":2' not in got:
            got += str(ws.recv(timeout=LIMIT))
        yield ws


def assert_receives(proc: GustProcess, ws: ClientConnection, channel: str) -> None:
    Api(proc.port).publish(channel, {"still": "here"})
    while True:
        frame = str(ws.recv(timeout=LIMIT))
        if '"pub"' in frame:
            assert '{"still":"here"}' in frame
            return


def closed_by_server(sock: socket.socket, timeout: float = LIMIT) -> bool:
    """True when the server ends the connection (EOF or reset) within `timeout`, without answering."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_slowloris_upgrade_is_cut_off_by_the_header_timeout(server: GustProcess) -> None:
    with subscriber(server, "chat:slow") as control:
        request = handshake_request(server.port)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT)
        sent, cut = 0, False
        deadline = time.monotonic() + LIMIT
        while sent < len(request) and time.monotonic() < deadline:  # one byte every 50 ms: ~10 s in all
            try:
                sock.send(request[sent:sent + 1])
            except OSError:
                cut = True
                break
            sent += 1
            if select.select([sock], [], [], 0.05)[0]:
                cut = closed_by_server(sock, 0)
                break
        sock.close()
        assert cut and sent < len(request), f"the server waited for {sent} of {len(request)} bytes"
        assert_receives(server, control, "chat:slow")


def test_slow_request_body_is_cut_off_by_the_body_timeout(server: GustProcess) -> None:
    with subscriber(server, "chat:body") as control:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT)
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 1000\r\n\r\n{\"ch")
        assert closed_by_server(sock)
        sock.close()
        assert_receives(server, control, "chat:body")


def test_oversized_request_headers_close_the_connection(server: GustProcess) -> None:
    with subscriber(server, "chat:headers") as control:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        assert closed_by_server(sock)
        sock.close()
        assert_receives(server, control, "chat:headers")


def test_idle_keep_alive_connection_is_closed_after_the_header_timeout(server: GustProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert closed_by_server(sock)
    sock.close()


# --- a client that stops reading -----------------------------------------------------------------------------

FAN = {"engine": {"memory": {"persistence": "none"}},
       "channel": {"namespaces": [{"name": "fan", "allow_subscribe_for_client": True,
                                   "allow_subscribe_for_anonymous": True}]}}
CHANNEL = "fan:wide"
PAYLOAD = "x" * 4096
BATCHES, PER_BATCH = 30, 100  # 3,000 publications of 4 KiB: 12 MiB, twelve times client.queue_max_size
# Measured on loopback: with the 1 MiB cap the server grows ~1.2 MiB at its peak and keeps that after the close;
# without a cap it holds ~9 MiB for the stuck client (the rest sits in kernel socket buffers, outside RSS).
RSS_TOLERANCE = 4 * 2**20
PEAK_TOLERANCE = 5 * 2**20


def rss(pid: int) -> int:
    """Resident memory of `pid` in bytes (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def publish_all(api: Api) -> None:
    batch = {"commands": [{"publish": {"channel": CHANNEL, "data": PAYLOAD}}] * PER_BATCH}
    for _ in range(BATCHES):
        replies = api.call("batch", batch)["replies"]
        assert all("publish" in r for r in replies), replies[:3]


@contextlib.asynccontextmanager
async def counting(client: RawClient) -> AsyncIterator[list[int]]:
    """Count `client`'s publications in the background (and answer pings)."""
    count = [0]

    async def run() -> None:
        while (frame := await client.conn.read_message()) is not None:
            text = frame if isinstance(frame, str) else frame.decode()
            count[0] += text.count('"pub"')
            if text == "{}":
                await client.send_raw("{}")

    task = asyncio.ensure_future(run())
    try:
        yield count
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def until(condition: Any, timeout: float = LIMIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return bool(condition())


@pytest.mark.gen_test(timeout=90)
async def test_client_that_stops_reading_is_closed_3008_and_memory_returns(tmp_path: Path) -> None:
    proc = GustProcess(tmp_path, extra=FAN)
    await proc.start_async()
    api = Api(proc.port, timeout=30)
    control = await RawClient.open(proc.ws_url)
    try:
        await control.connect()
        assert "subscribe" in await control.command("subscribe", {"channel": CHANNEL})
        async with counting(control) as received:
            await asyncio.to_thread(publish_all, api)  # warm-up: the same traffic with only the control client
            assert await until(lambda: received[0] == BATCHES * PER_BATCH)
            await asyncio.sleep(0.3)
            baseline = rss(proc.pid)

            slow = await RawWebSocket.connect(proc.port, rcvbuf=4096)
            await slow.send_commands({"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": CHANNEL}})
            replies = await slow.read_messages()
            while len(replies) < 2:
                replies += await slow.read_messages()
            assert "subscribe" in replies[1], replies
            # from now on `slow` reads nothing
            peak = [baseline]
            sampler = asyncio.ensure_future(sample_peak(proc.pid, peak))
            await asyncio.to_thread(publish_all, api)
            samples = await wait_for(proc.base_url, lambda s: value(s, "gust_disconnects_total", code="3008") >= 1)
            sampler.cancel()
            assert value(samples, "gust_disconnects_total", code="3008") == 1
            assert "code 3008 'slow'" in proc.stderr()
            assert await until(lambda: received[0] == 2 * BATCHES * PER_BATCH), received  # the control got all
            assert await until(lambda: api.result("info", {})["nodes"][0]["num_clients"] == 1)
            assert await until(lambda: rss(proc.pid) < baseline + RSS_TOLERANCE), (rss(proc.pid), baseline)
            assert peak[0] < baseline + PEAK_TOLERANCE, (peak[0], baseline)
            slow.close()
            assert value(scrape_sync(proc.base_url), "gust_clients") == 1
    finally:
        control.close()
        api.close()
        proc.kill()


async def sample_peak(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss(pid))
        await asyncio.sleep(0.02)

