"""Every limit gives its documented reaction over a real socket, and a healthy client on the same channel keeps
receiving: message size (1009), fragments, binary and invalid UTF-8 frames, command and ping floods (111, 3013),
connections per node and per second (503), origins (403), a peer that stops answering (3012) and ping/stale
closes under load. The slow-HTTP limits and the slow consumer run against a real `python -m server` process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from server.app import Gust

from .promscrape import scrape, value, wait_for
from .rawws import BINARY, CONTINUATION, PING, TEXT, RawWebSocket, encode_frame
from .test_errors import ClientFactory, assert_still_served, closed_with, healthy
from .wsclient import RawClient


async def upgrade_status(ws_url: str, headers: dict[str, str] | None = None) -> tuple[int, RawClient | None]:
    """101 and the open client, or the refusal's HTTP status."""
    try:
        conn = await websocket_connect(HTTPRequest(ws_url, headers=headers or {}, request_timeout=5))
    except HTTPClientError as exc:
        return exc.code, None
    return 101, RawClient(conn)


# --- message size, frames, encodings ------------------------------------------------------------------------


PUBLISH = '{"id":%d,"publish":{"channel":"chat:big","data":"%s"}}'


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"websocket_max_message_size": 2048}])  # websocket.message_size_limit
async def test_message_over_the_size_limit_closes_1009(
    client_factory, http_port: int, base_url: str, config_overrides
) -> None:
    control = await healthy(client_factory)
    victim = await RawWebSocket.connect(http_port)
    await victim.send_commands({"id": 1, "connect": {}})
    await victim.send_frame(TEXT, (PUBLISH % (2, "x" * 1900)).encode())
    replies = await victim.read_messages()
    while len(replies) < 2:
        replies += await victim.read_messages()
    assert replies[1] == {"id": 2, "publish": {}}
    await victim.announce_frame(TEXT, 2049)
    assert await victim.close_code() == 1009
    victim.close()
    samples = await wait_for(base_url, lambda s: value(s, "gust_disconnects_total", code="1009") == 1)
    assert value(samples, "gust_disconnects_total", code="1009") == 1
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_fragmented_frames_are_joined_and_their_total_is_limited(
    client_factory: ClientFactory, http_port: int
) -> None:
    control = await healthy(client_factory)
    ws = await RawWebSocket.connect(http_port)
    command = b'{"id":1,"connect":{}}\n{"id":2,"presence_stats":{"channel":"chat:control"}}'
    await ws.send_frame(TEXT, command[:10], fin=False)
    await ws.send_frame(CONTINUATION, command[10:30], fin=False)
    await ws.send_frame(CONTINUATION, command[30:], fin=True)
    replies = await ws.read_messages()
    while len(replies) < 2:
        replies += await ws.read_messages()
    assert "connect" in replies[0] and "presence_stats" in replies[1], replies
    # 40 KB + 40 KB of fragments: each fits, together they pass the 64 KiB limit
    await ws.send_frame(TEXT, b" " * 40000, fin=False)
    await ws.announce_frame(CONTINUATION, 40000, fin=True)
    assert await ws.close_code() == 1009
    ws.close()
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_binary_frames_are_read_as_json_text(client_factory: ClientFactory, http_port: int) -> None:
    """The frame type is not checked: the payload must be the JSON protocol either way."""
    control = await healthy(client_factory)
    ws = await RawWebSocket.connect(http_port)
    await ws.send_frame(BINARY, b'{"id":1,"connect":{}}')
    assert "connect" in (await ws.read_messages())[0]
    await ws.send_frame(BINARY, b"\x00\xff\x10garbage")
    assert await ws.close_code() == 3501
    ws.close()
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_invalid_utf8_in_a_text_frame_drops_the_connection(
    client_factory: ClientFactory, http_port: int, base_url: str
) -> None:
    control = await healthy(client_factory)
    ws = await RawWebSocket.connect(http_port)
    await ws.send_commands({"id": 1, "connect": {}})
    await ws.read_messages()
    await ws.send_frame(TEXT, b'{"id":2,"publish":{"channel":"chat:control","data":"\xc3\x28"}}')
    assert await ws.close_code() is None  # Tornado aborts the TCP connection: no close frame (clients see 1006)
    ws.close()
    samples = await wait_for(base_url, lambda s: value(s, "gust_disconnects_total", code="1006") >= 1)
    assert value(samples, "gust_disconnects_total", code="1006") >= 1
    await assert_still_served(control)


# --- floods -------------------------------------------------------------------------------------------------

RATE = {"client": {"command_rate_limit": {"rate": 5, "burst": 20, "close_after": 30}}}


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("config_overrides", [RATE])
async def test_command_flood_gets_111_then_close_3013(client_factory, base_url: str, config_overrides) -> None:
    control = await healthy(client_factory)
    flooder = await client_factory()
    started = time.monotonic()
    commands = [{"id": 1, "connect": {}}] + [
        {"id": i, "presence_stats": {"channel": "chat:control"}} for i in range(2, 302)]
    await flooder.send(*commands)
    closed = await flooder.closed(timeout=10)
    elapsed = time.monotonic() - started
    assert closed.code == 3013, closed
    replies = flooder.messages
    ok = [m for m in replies if "error" not in m]
    refused = [m for m in replies if "error" in m]
    assert 20 <= len(ok) <= 20 + 5 * elapsed + 1  # the burst, plus what the bucket refilled meanwhile
    assert all(m["error"] == {"code": 111, "message": "too many requests", "temporary": True} for m in refused)
    tail = 0
    for m in reversed(replies):
        if "error" not in m:
            break
        tail += 1
    assert tail == 29  # the 30th refusal in a row is not answered: the client is closed instead
    samples = await scrape(base_url)
    assert value(samples, "gust_errors_total", transport="client", code="111") == len(refused)
    assert value(samples, "gust_disconnects_total", code="3013") == 1
    await assert_still_served(control)


@pytest.mark.gen_test(timeout=20)
async def test_ping_frame_flood_is_answered_without_hurting_anyone(
    client_factory: ClientFactory, http_port: int
) -> None:
    """Without a rate limit (the default) Tornado keeps at most one pong outstanding: a flood costs little."""
    control = await healthy(client_factory)
    ws = await RawWebSocket.connect(http_port)
    await ws.send_commands({"id": 1, "connect": {}})
    await ws.read_messages()
    for _ in range(20):
        ws.writer.write(encode_frame(PING, b"p") * 250)
        await ws.writer.drain()
    await ws.send_commands({"id": 2, "presence_stats": {"channel": "chat:control"}})
    while True:
        opcode, payload = await ws.read_frame()
        if opcode == TEXT and b'"id":2' in payload:
            break
    ws.close()
    await assert_still_served(control)


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("config_overrides", [RATE])
async def test_ping_frame_flood_spends_the_command_budget(client_factory, http_port: int, config_overrides) -> None:
    control = await healthy(client_factory)
    ws = await RawWebSocket.connect(http_port)
    await ws.send_commands({"id": 1, "connect": {}})
    await ws.read_messages()
    ws.writer.write(encode_frame(PING, b"p") * 500)
    await ws.writer.drain()
    assert await ws.close_code(timeout=10) == 3013
    ws.close()
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_protocol_ping_flood_closes_3501(client_factory: ClientFactory) -> None:
    """`{}` is a pong; pongs nobody asked for are a protocol violation (Centrifuge: 3501)."""
    control = await healthy(client_factory)
    victim = await client_factory()
    await victim.connect()
    await victim.send_raw("\n".join(["{}"] * 1000))
    await closed_with(victim, 3501)
    await assert_still_served(control)


# --- connections ---------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("config_overrides", [{"client": {"connection_limit": 2}}])
async def test_connection_limit_refuses_upgrades_with_503(ws_url: str, base_url: str, config_overrides) -> None:
    first_status, first = await upgrade_status(ws_url)
    second_status, second = await upgrade_status(ws_url)
    assert (first_status, second_status) == (101, 101)
    assert first is not None and second is not None
    assert (await upgrade_status(ws_url))[0] == 503
    await second.connect()
    await second.command("subscribe", {"channel": "chat:control"})
    first.close()
    deadline = time.monotonic() + 5
    status, third = await upgrade_status(ws_url)
    while status != 101 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        status, third = await upgrade_status(ws_url)
    assert status == 101 and third is not None  # room again once a connection has gone
    samples = await scrape(base_url)
    assert value(samples, "gust_connections_refused_total", reason="connection_limit") >= 1
    assert value(samples, "gust_connections") == 2
    await assert_still_served(second)  # the connection that stayed was served all along
    second.close()
    third.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [{"client": {"connection_rate_limit": 2}}])
async def test_connection_rate_limit_refuses_upgrades_with_503(
    client_factory: ClientFactory, ws_url: str, base_url: str, config_overrides
) -> None:
    started = time.monotonic()
    control = await healthy(client_factory)
    results = [await upgrade_status(ws_url) for _ in range(12)]
    elapsed = time.monotonic() - started
    accepted = [c for code, c in results if code == 101]
    assert {code for code, _ in results} <= {101, 503}
    assert 1 + len(accepted) <= 2 + 2 * elapsed + 1  # a burst of 2, then 2 per second (the control took one)
    samples = await scrape(base_url)
    assert value(samples, "gust_connections_refused_total", reason="connection_rate_limit") == 12 - len(accepted)
    for client in accepted:
        assert client is not None
        await client.connect()
        client.close()
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_cross_origin_upgrade_is_403_before_the_upgrade(
    client_factory: ClientFactory, ws_url: str, base_url: str
) -> None:
    control = await healthy(client_factory)
    status, _ = await upgrade_status(ws_url, {"Origin": "https://evil.example"})
    assert status == 403
    assert value(await scrape(base_url), "gust_connections_refused_total", reason="origin") == 1
    assert value(await scrape(base_url), "gust_connections") == 1  # only the control client ever opened
    await assert_still_served(control)


# --- a peer that stops answering ----------------------------------------------------------------------------


class FreezingProxy:
    """A loopback TCP proxy whose `freeze` stops forwarding in both directions while keeping both sockets open:
    the server's peer looks alive to TCP but never answers (a half-open connection)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = asyncio.Event()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.frozen.is_set():
            read = asyncio.ensure_future(reader.read(65536))
            frozen = asyncio.ensure_future(self.frozen.wait())
            await asyncio.wait({read, frozen}, return_when=asyncio.FIRST_COMPLETED)
            frozen.cancel()
            if not read.done():
                read.cancel()
                return
            data = read.result()
            if not data:
                return
            writer.write(data)
            await writer.drain()


PINGS = {"client": {"ping_interval": "1s", "pong_timeout": "400ms"}}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [PINGS])
async def test_half_open_peer_is_closed_by_the_pong_timeout(
    client_factory: ClientFactory, gust: Gust, http_port: int, base_url: str, config_overrides
) -> None:
    control = await client_factory()
    await control.connect()
    await control.command("subscribe", {"channel": "chat:control"})
    got: list[dict[str, Any]] = []
    async with ponging(control, got), FreezingProxy(http_port) as proxy:
        peer = await RawClient.open(f"ws://127.0.0.1:{proxy.port}/connection/websocket")
        await peer.connect()
        assert "subscribe" in await peer.command("subscribe", {"channel": "chat:control"})
        peer_pings: list[int] = []
        async with ponging(peer, [], peer_pings):  # a good client: it answers pings through the proxy...
            assert await until(lambda: len(peer_pings) >= 2)  # the second ping comes after the first pong's deadline
            assert value(await scrape(base_url), "gust_disconnects_total", code="3012") == 0
            proxy.frozen.set()  # ...until its path goes dead: nothing passes, yet no FIN or RST arrives either
        samples = await wait_for(base_url, lambda s: value(s, "gust_disconnects_total", code="3012") >= 1)
        assert value(samples, "gust_disconnects_total", code="3012") == 1
        assert await until(lambda: gust.node.hub.num_subscribers("chat:control") == 1)
        await control.send({"id": 100, "publish": {"channel": "chat:control", "data": {"after": True}}})
        assert await until(lambda: len(got) == 1)  # the control client kept its pings answered and still receives
        peer.close()


async def until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return bool(condition())


# --- pings and stale connections under load -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def ponging(client: RawClient, received: list[dict[str, Any]], pings: list[int] | None = None
                  ) -> AsyncIterator[asyncio.Task[None]]:
    """Read `client` in the background: answer pings (counted in `pings`), keep publications."""

    async def run() -> None:
        while True:
            frame = await client.conn.read_message()
            if frame is None:
                return
            for line in (frame if isinstance(frame, str) else frame.decode()).split("\n"):
                if line == "{}":
                    await client.send_raw("{}")
                    if pings is not None:
                        pings.append(1)
                elif '"pub"' in line:
                    received.append({"line": line})

    task = asyncio.ensure_future(run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"client": {"ping_interval": "1s", "pong_timeout": "400ms",
                                                          "stale_close_delay": "1s"}}])
async def test_pings_and_stale_closes_hold_under_load(
    client_factory: ClientFactory, base_url: str, config_overrides
) -> None:
    healthy_clients = [await client_factory() for _ in range(30)]
    for c in healthy_clients:
        await c.connect()
        assert "subscribe" in await c.command("subscribe", {"channel": "chat:load"})
    mute = [await client_factory() for _ in range(5)]  # connected, never answer pings → 3012
    for c in mute:
        await c.connect()
        await c.command("subscribe", {"channel": "chat:load"})
    stale = [await client_factory() for _ in range(5)]  # never send connect → 3502
    received: list[list[dict[str, Any]]] = [[] for _ in healthy_clients]
    async with contextlib.AsyncExitStack() as stack:
        for c, got in zip(healthy_clients, received, strict=True):
            await stack.enter_async_context(ponging(c, got))
        publisher = healthy_clients[0]
        sent = 0
        deadline = time.monotonic() + 20
        samples = await scrape(base_url)
        while time.monotonic() < deadline and not (
            value(samples, "gust_disconnects_total", code="3012") >= 5
            and value(samples, "gust_disconnects_total", code="3502") >= 5
        ):
            for _ in range(20):
                await publisher.send({"id": 10_000 + sent, "publish": {"channel": "chat:load", "data": {"n": sent}}})
                sent += 1
            await asyncio.sleep(0.05)
            samples = await scrape(base_url)
        assert value(samples, "gust_disconnects_total", code="3012") == 5
        assert value(samples, "gust_disconnects_total", code="3502") == 5
        while any(len(got) < sent for got in received) and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.05)
        assert [len(got) for got in received] == [sent] * len(healthy_clients)
    for c in mute:
        assert (await c.closed()).code == 3012
    for c in stale:
        assert (await c.closed()).code == 3502
