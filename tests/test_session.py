"""The session state machine under a fake transport (no sockets): ordering, coalescing, recovery buffering,
slow consumers."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from server.auth import TokenVerifier
from server.engines import HistoryOptions
from server.engines.memory import MemoryEngine
from server.handlers import HANDLERS
from server.model import ClientInfo, StreamPosition
from server.node import Node
from server.outbound import ws_text_frame
from server.session import ClientSession, State

from .conftest import make_config


class FakeTransport:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.pending = 0

    def write(self, payload: bytes, framed: bytes | None = None) -> int:
        if framed is not None:  # the hub's shared frame must carry exactly this payload
            assert framed == ws_text_frame(payload), (framed, payload)
        self.frames.append(payload)
        if self.pending:  # a peer that stopped reading: everything written stays pending
            self.pending += len(payload) + 2
        return self.pending

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def pending_bytes(self) -> int:
        return self.pending

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for frame in self.frames for line in frame.split(b"\n")]


class InterleavingEngine(MemoryEngine):
    """A memory engine where other publications land while a subscriber reads history."""

    def __init__(self) -> None:
        super().__init__()
        self.during_history: list[bytes] = []

    async def history(self, channel: str, since: StreamPosition | None, limit: int, reverse: bool,
                      meta_ttl: float) -> tuple[list[Any], StreamPosition]:
        result = await super().history(channel, since, limit, reverse, meta_ttl)
        for data in self.during_history:
            await self.publish(channel, data, None, {}, HistoryOptions(100, 3600, 3600))
        self.during_history = []
        return result


async def make_node(engine: MemoryEngine | None = None, **overrides: Any) -> Node:
    node = Node(make_config(overrides), engine or MemoryEngine())
    await node.start()
    return node


def make_session(node: Node) -> tuple[ClientSession, FakeTransport]:
    transport = FakeTransport()
    return ClientSession(node, transport, TokenVerifier(node.config.client.token), HANDLERS), transport


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.gen_test
async def test_connect_and_subscribes_in_one_frame_are_processed_in_order() -> None:
    node = await make_node()
    session, transport = make_session(node)
    await session.handle_frame(
        b'{"id":1,"connect":{"name":"js"}}\n{"id":2,"subscribe":{"channel":"chat:a","flag":1}}\n'
        b'{"id":3,"subscribe":{"channel":"chat:b","flag":1}}'
    )
    await settle()
    assert len(transport.frames) == 1, "replies of one frame are coalesced into one frame"
    ids = [m["id"] for m in transport.messages() if "id" in m]
    assert ids == [1, 2, 3]
    assert session.state is State.CONNECTED and set(session.subs) == {"chat:a", "chat:b"}
    await node.close()


@pytest.mark.gen_test
async def test_recovery_buffers_publications_that_arrive_during_subscribe() -> None:
    engine = InterleavingEngine()
    node = await make_node(engine)
    opts = HistoryOptions(100, 3600, 3600)
    first = await engine.publish("chat:r", b'{"n":1}', None, {}, opts)
    await engine.publish("chat:r", b'{"n":2}', None, {}, opts)
    session, transport = make_session(node)
    await session.handle_frame(b'{"id":1,"connect":{}}')
    engine.during_history = [b'{"n":3}', b'{"n":4}']
    await session.handle_frame(orjson.dumps(
        {"id": 2, "subscribe": {"channel": "chat:r", "recover": True, "offset": 1, "epoch": first.epoch}}))
    await settle()
    await engine.publish("chat:r", b'{"n":5}', None, {}, opts)
    await settle()
    msgs = transport.messages()
    result = next(m["subscribe"] for m in msgs if m.get("id") == 2)
    assert result["recovered"] is True and result["was_recovering"] is True and result["offset"] == 1
    replayed = [p["offset"] for p in result["publications"]]
    pushed = [m["push"]["pub"]["offset"] for m in msgs if "pub" in m.get("push", {})]
    assert replayed + pushed == [2, 3, 4, 5], "no gap, no duplicate"
    await node.close()


@pytest.mark.gen_test
async def test_failed_recovery_reports_current_top() -> None:
    node = await make_node()
    opts = HistoryOptions(100, 3600, 3600)
    top = StreamPosition()
    for i in range(3):
        top = await node.engine.publish("chat:f", b"%d" % i, None, {}, opts)
    session, transport = make_session(node)
    await session.handle_frame(b'{"id":1,"connect":{}}')
    await session.handle_frame(orjson.dumps(
        {"id": 2, "subscribe": {"channel": "chat:f", "recover": True, "offset": 1, "epoch": "other"}}))
    await settle()
    result = next(m["subscribe"] for m in transport.messages() if m.get("id") == 2)
    assert result["recovered"] is False and result["publications"] == []
    assert (result["offset"], result["epoch"]) == (top.offset, top.epoch)
    await node.close()


@pytest.mark.gen_test
async def test_gap_in_positioned_stream_unsubscribes_with_2500() -> None:
    node = await make_node()
    session, transport = make_session(node)
    await session.handle_frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:g"}}')
    await settle()
    sub = session.subs["chat:g"]
    # a publication that skips an offset (as after a lost message in a distributed engine)
    from server.model import Publication
    from server.protocol import encode_pub_push
    pub = Publication(data=b"1", offset=sub.offset + 2)
    session.deliver_publication("chat:g", pub, encode_pub_push("chat:g", pub))
    await settle()
    push = transport.messages()[-1]["push"]
    assert push == {"channel": "chat:g", "unsubscribe": {"code": 2500, "reason": "insufficient state"}}
    assert "chat:g" not in session.subs
    await node.close()


@pytest.mark.gen_test
async def test_slow_consumer_is_closed_with_3008() -> None:
    node = await make_node(client={"queue_max_size": 10000})
    session, transport = make_session(node)
    await session.handle_frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:s"}}')
    await settle()
    transport.pending = 9000  # the peer stopped reading
    for _ in range(5):
        await node.publish("chat:s", orjson.dumps("x" * 500))
    await settle()
    assert transport.closed == (3008, "slow")
    assert session.state is State.CLOSED
    assert not node.hub.has_subscribers("chat:s")
    await node.close()


@pytest.mark.gen_test
async def test_close_releases_subscriptions_presence_and_sends_leave() -> None:
    node = await make_node()
    a, ta = make_session(node)
    b, _ = make_session(node)
    for s in (a, b):
        await s.handle_frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:p"}}')
    await settle()
    assert len(await node.presence("chat:p")) == 2
    b.on_transport_closed()
    await settle()
    assert list(await node.presence("chat:p")) == [a.client_id]
    leaves = [m["push"]["leave"] for m in ta.messages() if "leave" in m.get("push", {})]
    assert leaves == [{"info": {"user": "", "client": b.client_id}}]
    assert node.hub.num_clients == 1
    await node.close()


@pytest.mark.gen_test
async def test_presence_expires_without_refresh() -> None:
    engine = MemoryEngine()
    await engine.add_presence("chat:x", "c1", ClientInfo("u", "c1"), ttl=0.05)
    assert len(await engine.presence("chat:x")) == 1
    await asyncio.sleep(0.1)
    assert await engine.presence("chat:x") == {}
