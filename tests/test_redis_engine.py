"""The Redis engine beyond the shared contract: sharding channels over several Redis instances, the pub/sub
link's recovery (publications missed while it was down are read back from history, in order, exactly once;
a reset stream makes positioned subscribers resubscribe), and Redis being unreachable at start or paused.
Each test runs its own `redis-server`(s)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from server.config_load import from_dict
from server.engines import EngineError, HistoryOptions
from server.engines.redis import RedisEngine
from server.engines.redis_codec import shard_index
from server.model import ClientInfo

from .redisproc import REDIS_MISSING, RedisServer, redis_available
from .test_engine_contract import RecordingEvents

pytestmark = [pytest.mark.redis]
HISTORY = HistoryOptions(size=100, ttl=3600, meta_ttl=3600)


@asynccontextmanager
async def engine(addresses: list[str], prefix: str = "t", node: str = "n1",
                 **redis: object) -> AsyncIterator[tuple[RedisEngine, RecordingEvents]]:
    cfg = from_dict({"engine": {"type": "redis", "redis": {
        "address": addresses, "prefix": prefix, "io_timeout": "1s", "reconnect_max_delay": "0.5s", **redis}}})
    made = RedisEngine(cfg.engine.redis, 3600)
    events = RecordingEvents()
    await made.start(events, node)
    try:
        yield made, events
    finally:
        await made.close()


@pytest.fixture
def two_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    servers = [RedisServer(workdir=tmp_path / f"r{i}") for i in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.cleanup()


def test_shard_of_a_channel_is_stable() -> None:
    """Changing the hash would move every channel's history to another instance on upgrade: pinned here."""
    assert [shard_index(f"chat:{i}", 2) for i in range(12)] == [1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0]
    assert [shard_index(f"chat:{i}", 3) for i in range(12)] == [1, 0, 0, 1, 2, 2, 2, 0, 1, 1, 0, 2]
    assert {shard_index(f"c{i}", 1) for i in range(50)} == {0}
    spread = [shard_index(f"chat:{i}", 3) for i in range(3000)]
    assert all(800 < spread.count(k) < 1200 for k in range(3)), [spread.count(k) for k in range(3)]
    # adding a fourth instance moves only the channels that land on it
    moved = [i for i in range(3000) if shard_index(f"chat:{i}", 4) != spread[i]]
    assert all(shard_index(f"chat:{i}", 4) == 3 for i in moved)


@pytest.mark.gen_test(timeout=60)
async def test_channels_are_sharded_over_two_redis_and_cross_nodes(two_redis: list[RedisServer]) -> None:
    urls = [s.url for s in two_redis]
    channels = [f"chat:{i}" for i in range(40)]
    async with engine(urls, node="a") as (a, _), engine(urls, node="b") as (b, on_b):
        for channel in channels:
            await b.subscribe(channel)
        for channel in channels:
            assert (await a.publish(channel, b'{"x":1}', None, {}, HISTORY)).offset == 1
        await on_b.until(lambda: len(on_b.pubs) == len(channels), "b to receive every publication")
        assert sorted(ch for ch, _ in on_b.pubs) == sorted(channels)
        await a.publish_control(b"to-all")  # the control channel lives on the first instance
        await on_b.until(lambda: on_b.controls == [b"to-all"], "the control message")
        await a.add_presence("chat:1", "c1", ClientInfo("u", "c1"), 30)
        assert set(await b.presence("chat:1")) == {"c1"}
    for index, server in enumerate(two_redis):
        held = {key.decode().split(".meta.", 1)[1] for key in server.command("KEYS", "t.meta.*")}
        assert held == {ch for ch in channels if shard_index(ch, 2) == index}
        assert held, f"instance {index} holds no channel"


@pytest.mark.gen_test(timeout=60)
async def test_publications_missed_while_the_link_was_down_are_read_back(own_redis: RedisServer) -> None:
    """Node a connects as its own ACL user, so the test can keep it out of Redis (user off, connections
    killed) while node b publishes: those publications certainly miss a's pub/sub link."""
    own_redis.command("ACL", "SETUSER", "node-a", "on", ">secret-a", "~*", "&*", "+@all")
    url_a = own_redis.url.replace("redis://", "redis://node-a:secret-a@")
    async with engine([url_a], node="a") as (a, on_a), engine([own_redis.url], node="b") as (b, _):
        await a.subscribe("chat:g")
        await a.history("chat:g", None, 0, False, 3600)  # as a subscribing session does
        for i in range(3):
            await b.publish("chat:g", b'{"before":%d}' % i, None, {}, HISTORY)
        await on_a.until(lambda: len(on_a.pubs) == 3, "the first three")
        link = a._links[0]
        own_redis.command("ACL", "SETUSER", "node-a", "off")
        own_redis.command("CLIENT", "KILL", "USER", "node-a")
        await on_a.until(lambda: not link.up.is_set(), "a to notice the lost link")
        for i in range(3, 8):
            await b.publish("chat:g", b'{"during":%d}' % i, None, {}, HISTORY)
        await asyncio.sleep(0.5)
        assert len(on_a.pubs) == 3 and not link.up.is_set()
        own_redis.command("ACL", "SETUSER", "node-a", "on")
        await on_a.until(lambda: len(on_a.pubs) >= 8, "the missed publications")
        await b.publish("chat:g", b'{"after":8}', None, {}, HISTORY)
        await on_a.until(lambda: len(on_a.pubs) >= 9, "the next live publication")
        await asyncio.sleep(0.2)
        offsets = [p.offset for _, p in on_a.pubs]
        assert offsets == list(range(1, 10)), offsets  # in order, none twice, none lost
        assert on_a.insufficient == []
        assert link.connects == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_reset_stream_makes_subscribers_resubscribe(own_redis: RedisServer) -> None:
    async with engine([own_redis.url], node="a") as (a, on_a):
        await a.subscribe("chat:e")
        await a.history("chat:e", None, 0, False, 3600)
        await a.publish("chat:e", b"1", None, {}, HISTORY)
        await on_a.until(lambda: len(on_a.pubs) == 1, "the first publication")
        own_redis.shutdown_nosave()
        with pytest.raises(EngineError):
            await asyncio.wait_for(a.publish("chat:e", b"2", None, {}, HISTORY), 10)
        own_redis.restart()
        await on_a.until(lambda: on_a.insufficient == ["chat:e"], "the reset to be noticed", 15)
        position = None
        deadline = time.monotonic() + 15
        while position is None:
            with contextlib.suppress(EngineError):
                position = await a.publish("chat:e", b"3", None, {}, HISTORY)
            assert time.monotonic() < deadline, "publishing never worked again"
            await asyncio.sleep(0.1)
        assert position.offset == 1
        await on_a.until(lambda: len(on_a.pubs) == 2, "the publication in the new epoch")


@pytest.mark.gen_test(timeout=60)
async def test_unreachable_at_start_then_redis_appears(tmp_path: Path) -> None:
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    server = RedisServer(workdir=tmp_path / "late")  # port chosen, nothing listening yet
    async with engine([server.url], node="a") as (a, on_a):
        with pytest.raises(EngineError):
            await asyncio.wait_for(a.publish("chat:l", b"1", None, {}, HISTORY), 10)
        with pytest.raises(EngineError):
            await asyncio.wait_for(a.subscribe("chat:l"), 10)
        server.start()
        try:
            await asyncio.wait_for(a._links[0].up.wait(), 15)
            await a.subscribe("chat:l")
            await a.publish("chat:l", b"2", None, {}, HISTORY)
            await on_a.until(lambda: len(on_a.pubs) == 1, "a publication once Redis is there")
        finally:
            server.cleanup()


@pytest.mark.gen_test(timeout=60)
async def test_a_paused_redis_fails_operations_within_the_io_timeout(own_redis: RedisServer) -> None:
    async with engine([own_redis.url], node="a") as (a, _):
        await a.publish("chat:z", b"1", None, {}, HISTORY)
        own_redis.pause()
        try:
            with pytest.raises(EngineError):
                await asyncio.wait_for(a.publish("chat:z", b"2", None, {}, HISTORY), 10)
        finally:
            own_redis.resume()
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(EngineError):
                await a.publish("chat:z", b"3", None, {}, HISTORY)
                break
            assert time.monotonic() < deadline, "publishing never worked again after the pause"
            await asyncio.sleep(0.1)
        pubs, top = await a.history("chat:z", None, -1, False, 3600)
        # the paused publish may or may not have been applied by Redis after the pause: never twice
        assert [p.offset for p in pubs] == list(range(1, top.offset + 1))
