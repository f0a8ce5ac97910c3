"""The outbound fast path: frames built once, written straight to Tornado's IOStream, one flush per turn.

`test_fast_path_is_active_on_this_tornado` is the canary the fast path promises: if a Tornado release changes
the IOStream internals it relies on, the transport silently falls back to the public `write_message` path, and
this test fails so that someone looks.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import orjson
import pytest

from server.app import Gust
from server.model import Publication
from server.outbound import ws_text_frame
from server.session import ClientSession
from server.websocket import TornadoTransport

from .rawws import TEXT, RawWebSocket
from .wsclient import RawClient


def parse_frame(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked frame, checking that the length header is exact."""
    first, second = frame[0], frame[1]
    assert not second & 0x80, "server frames are never masked"
    size, start = second & 0x7F, 2
    if size == 126:
        size, start = struct.unpack("!H", frame[2:4])[0], 4
    elif size == 127:
        size, start = struct.unpack("!Q", frame[2:10])[0], 10
    payload = frame[start:]
    assert len(payload) == size
    return first, payload


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_text_frame_lengths(size: int) -> None:
    payload = b"x" * size
    first, body = parse_frame(ws_text_frame(payload))
    assert first == 0x81 and body == payload  # FIN + text
    shortest = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(ws_text_frame(payload)) == size + shortest


def sessions(gust: Gust) -> list[ClientSession]:
    return [s for s in gust.node.hub.all_sessions() if isinstance(s, ClientSession)]


@pytest.mark.gen_test
async def test_fast_path_is_active_on_this_tornado(client_factory, gust: Gust) -> None:
    client: RawClient = await client_factory()
    await client.connect()
    (session,) = sessions(gust)
    transport = session.transport
    assert isinstance(transport, TornadoTransport)
    assert transport.fast, "Tornado's IOStream internals changed: the outbound fast path is off (see websocket.py)"
    assert transport.pending_bytes() == 0


@pytest.mark.gen_test(timeout=30)
async def test_big_frames_to_a_slow_reader_arrive_whole_and_in_order(client_factory, gust: Gust) -> None:
    """More than the socket takes at once: the rest waits in IOStream's buffer, in order, nothing lost."""
    reader: RawClient = await client_factory()
    await reader.connect()
    await reader.command("subscribe", {"channel": "chat:big"})
    (session,) = sessions(gust)
    transport = session.transport
    assert isinstance(transport, TornadoTransport) and transport._stream is not None
    transport._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a small kernel buffer
    blob = "y" * 60_000
    for i in range(10):  # 600 KB in one IOLoop turn: one frame, mostly left in IOStream's buffer
        gust.node.hub.broadcast("chat:big", Publication(data=orjson.dumps({"i": i, "blob": blob})))
    for _ in range(10):  # the flush runs within a loop iteration or two
        await asyncio.sleep(0)
        if not session._out:
            break
    assert not session._out
    assert transport.pending_bytes() > 0
    for _ in range(500):  # the client reads in the background; stay under queue_max_size (1 MiB) with batch 2
        if transport.pending_bytes() < 200_000:
            break
        await asyncio.sleep(0.01)
    for i in range(10):
        gust.node.hub.broadcast("chat:big", Publication(data=orjson.dumps({"i": 10 + i, "blob": blob})))
    seen: list[int] = []
    while len(seen) < 20:
        push = await reader.push("pub")
        assert push["pub"]["data"]["blob"] == blob
        seen.append(push["pub"]["data"]["i"])
    assert seen == list(range(20))
    assert transport.pending_bytes() == 0


@pytest.mark.gen_test
async def test_one_turn_of_output_is_one_frame_and_shared_frames_reach_everyone(client_factory, gust: Gust,
                                                                                 http_port: int) -> None:
    clients = []
    for _ in range(3):
        client: RawClient = await client_factory()
        await client.connect()
        await client.command("subscribe", {"channel": "chat:fan"})
        clients.append(client)
    raw = await RawWebSocket.connect(http_port)  # a raw reader, to see frame boundaries as they are on the wire
    await raw.send_commands({"id": 1, "connect": {}})
    await raw.read_messages()
    await raw.send_commands({"id": 2, "subscribe": {"channel": "chat:fan"}})
    await raw.read_messages()
    for i in range(3):  # published in one IOLoop turn: one frame per subscriber
        gust.node.hub.broadcast("chat:fan", Publication(data=orjson.dumps({"n": i})))
    for client in clients:
        got = [(await client.push("pub"))["pub"]["data"]["n"] for _ in range(3)]
        assert got == [0, 1, 2]
    opcode, frame = await raw.read_frame()
    raw.close()
    assert opcode == TEXT and raw.last_fin
    assert frame.count(b'"pub"') == 3 and frame.count(b"\n") == 2  # three pushes, newline-joined, one frame


class Recorder:
    """A session stand-in for FlushQueue: records which loop iteration flushed it and what it held then."""

    def __init__(self, name: str, log: list[tuple[int, str, list[str]]], clock: list[int]) -> None:
        self.name, self.log, self.clock = name, log, clock
        self.queued: list[str] = []

    def flush(self) -> None:
        self.log.append((self.clock[0], self.name, self.queued))
        self.queued = []


@pytest.mark.gen_test
async def test_a_big_flush_goes_in_chunks_and_output_queued_meanwhile_joins_the_sessions_not_written_yet() -> None:
    from server.outbound import FlushQueue

    flushes = FlushQueue(chunk=2)
    log: list[tuple[int, str, list[str]]] = []
    clock = [0]
    sessions = [Recorder(f"s{i}", log, clock) for i in range(5)]
    for s in sessions:
        s.queued.append("p1")
        flushes.add(s)
    while len(log) < 2:  # the first chunk
        await asyncio.sleep(0)
        clock[0] += 1
    for s in sessions:  # a second publication lands between chunks; sessions already written are queued again
        if not s.queued:
            flushes.add(s)
        s.queued.append("p2")
    while len(log) < 7:
        await asyncio.sleep(0)
        clock[0] += 1
    assert [(name, queued) for _, name, queued in log] == [
        ("s0", ["p1"]), ("s1", ["p1"]),  # chunk 1
        ("s2", ["p1", "p2"]), ("s3", ["p1", "p2"]),  # not written yet: both publications in one write
        ("s4", ["p1", "p2"]),
        ("s0", ["p2"]), ("s1", ["p2"]),  # already written: queued again at the end
    ]
    iterations = sorted({t for t, _, _ in log})
    assert len(iterations) == 4, log  # at most `chunk` sessions per loop iteration


@pytest.mark.gen_test
async def test_an_open_connection_keeps_nothing_of_the_http_upgrade_on_this_tornado(client_factory, gust: Gust) -> None:
    """The memory trims of websocket.py (`slim_after_open`, `RecordingProtocol.reader`) are in effect: if a Tornado
    release renames what they rely on, this fails (the connection still works, with ~5 KiB more per client)."""
    from server.websocket import HANDLER_DROPPED_AFTER_OPEN, RecordingProtocol

    client: RawClient = await client_factory()
    await client.connect()
    (session,) = sessions(gust)
    assert isinstance(session.transport, TornadoTransport)
    handler = session.transport._handler
    assert not HANDLER_DROPPED_AFTER_OPEN & set(vars(handler)), "dropped attributes are back"
    assert len(vars(handler)) <= 21, sorted(vars(handler))  # a compact dict: at most 21 entries fit 32 slots
    assert not handler.request.headers and handler.request.connection is None
    protocol = handler.ws_connection
    assert isinstance(protocol, RecordingProtocol)
    assert protocol.reader is not None and not protocol.reader.done(), "Tornado's frame loop is not our task"
    await client.command("subscribe", {"channel": "chat:slim"})  # reading and writing still work
    gust.node.hub.broadcast("chat:slim", Publication(data=b'{"n":1}'))
    assert (await client.push("pub"))["pub"]["data"] == {"n": 1}
    client.close()
    for _ in range(200):
        if protocol.reader is None:
            break
        await asyncio.sleep(0.01)
    assert protocol.reader is None and not sessions(gust)  # the loop ended with the connection
