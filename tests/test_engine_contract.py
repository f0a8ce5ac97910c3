"""The engine contract, run against every engine: the memory engine (RAM only, and with its SQLite store) and the
Redis engine (our own `redis-server`, a unique key prefix per test).

Deliveries from Redis arrive asynchronously (a pub/sub listener task), the memory engine calls back in the same
call stack: tests always wait for what they expect with a bounded timeout, and prove "nothing more came" by
sending a marker afterwards and waiting for the marker. Nothing here asserts on speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop

from server.config_load import from_dict
from server.engines import Engine, EngineError, HistoryOptions, create_engine
from server.engines.memory import MemoryEngine
from server.engines.sqlite_db import SqliteDb
from server.model import ClientInfo, PresenceStats, Publication, StreamPosition

from .procs import free_port

WAIT = 10.0  # the bound on any wait for a delivery or an expiry; a hang fails the test, a slow run does not
gen_test = pytest.mark.gen_test(timeout=60)

HISTORY = HistoryOptions(size=100, ttl=3600, meta_ttl=3600)
META_TTL = 3600.0


# --- recording events -----------------------------------------------------------------------------------------


class RecordingEvents:
    """An `EngineEvents` that records every callback and lets a test await a condition on the records."""

    def __init__(self) -> None:
        self.pubs: list[tuple[str, Publication]] = []
        self.joins: list[tuple[str, ClientInfo]] = []
        self.leaves: list[tuple[str, ClientInfo]] = []
        self.insufficient: list[str] = []
        self.controls: list[bytes] = []
        self._changed = asyncio.Event()

    def on_publication(self, channel: str, pub: Publication) -> None:
        self.pubs.append((channel, pub))
        self._changed.set()

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self._changed.set()

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self._changed.set()

    def on_insufficient_state(self, channel: str) -> None:
        self.insufficient.append(channel)
        self._changed.set()

    async def on_control(self, data: bytes) -> None:
        self.controls.append(data)
        self._changed.set()

    # --- waiting ---

    def publications(self, channel: str) -> list[Publication]:
        return [pub for ch, pub in self.pubs if ch == channel]

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; recorded: {self!r}")
            self._changed.clear()
            if condition():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_publications(self, channel: str, count: int, timeout: float = WAIT) -> list[Publication]:
        """At least `count` publications of `channel` (returns all of them so far)."""
        await self.until(lambda: len(self.publications(channel)) >= count, f"{count} publication(s) on {channel}",
                         timeout)
        return self.publications(channel)

    def __repr__(self) -> str:
        return (f"RecordingEvents(pubs={[(c, p.offset, p.data) for c, p in self.pubs][-20:]}, "
                f"joins={len(self.joins)}, leaves={len(self.leaves)}, controls={self.controls[-10:]})")


# --- engine factories -----------------------------------------------------------------------------------------


@dataclass
class Harness:
    """Builds engines of one kind on one backend: every `make()` on the same SQLite file / Redis prefix."""

    kind: str
    build: Callable[[], Engine]
    shared_backend: bool  # a second engine (a restart, another node) sees the same history/presence/channels
    started: list[Engine] = field(default_factory=list)

    async def make(self, node_id: str = "n1", build: Callable[[], Engine] | None = None
                   ) -> tuple[Engine, RecordingEvents]:
        engine = (build or self.build)()
        events = RecordingEvents()
        await asyncio.wait_for(engine.start(events, node_id=node_id), WAIT)
        self.started.append(engine)
        return engine, events

    async def close(self, engine: Engine) -> None:
        if engine in self.started:
            self.started.remove(engine)
        await asyncio.wait_for(engine.close(), WAIT)

    @property
    def is_redis(self) -> bool:
        return self.kind == "redis"


def _redis_build(url: str, prefix: str) -> Callable[[], Engine]:
    def build() -> Engine:
        config = from_dict({"engine": {"type": "redis", "redis": {"address": url, "prefix": prefix}}})
        return create_engine(config)

    return build


@pytest.fixture(params=["memory", "memory-sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def harness(request: pytest.FixtureRequest, io_loop: tornado.ioloop.IOLoop, tmp_path: Path) -> Iterator[Harness]:
    kind = request.param
    if kind == "memory":
        made = Harness(kind, MemoryEngine, shared_backend=False)
    elif kind == "memory-sqlite":
        path = tmp_path / "h.sqlite3"
        made = Harness(kind, lambda: MemoryEngine.with_store(SqliteDb(path, "NORMAL")), shared_backend=True)
    else:
        if importlib.util.find_spec("server.engines.redis") is None:
            pytest.skip("RedisEngine not implemented yet")
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        made = Harness(kind, _redis_build(server.url, prefix), shared_backend=True)
    yield made

    async def close_all() -> None:
        for engine in list(made.started):
            with contextlib.suppress(Exception):  # teardown goes on; the test's own failure is what matters
                await asyncio.wait_for(engine.close(), WAIT)

    io_loop.run_sync(close_all, timeout=WAIT * 3)


Started = tuple[Engine, RecordingEvents]


@pytest.fixture
def make(harness: Harness) -> Callable[..., Awaitable[Started]]:
    return harness.make


# --- helpers --------------------------------------------------------------------------------------------------


async def publish(engine: Engine, channel: str, data: bytes, opts: HistoryOptions = HISTORY,
                  info: ClientInfo | None = None, tags: dict[str, str] | None = None) -> StreamPosition:
    return await engine.publish(channel, data, info, tags or {}, opts)


async def publish_n(engine: Engine, channel: str, n: int, opts: HistoryOptions = HISTORY) -> list[StreamPosition]:
    return [await publish(engine, channel, b'{"n":%d}' % i, opts) for i in range(1, n + 1)]


async def marker(engine: Engine, events: RecordingEvents, channel: str = "marker") -> None:
    """Publish on a subscribed marker channel and wait for it: whatever was published before it on this node's
    connection has been delivered by then (publications are delivered in order)."""
    await engine.subscribe(channel)
    before = len(events.publications(channel))
    await publish(engine, channel, b'{"marker":true}', HistoryOptions())
    await events.wait_publications(channel, before + 1)


async def history(engine: Engine, channel: str, since: StreamPosition | None = None, limit: int = -1,
                  reverse: bool = False, meta_ttl: float = META_TTL) -> tuple[list[int], StreamPosition]:
    pubs, top = await engine.history(channel, since, limit, reverse, meta_ttl)
    return [p.offset for p in pubs], top


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


# --- publish and deliver --------------------------------------------------------------------------------------


@gen_test
async def test_offsets_are_contiguous_from_one_in_one_epoch(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    positions = await publish_n(engine, "ch", 5)
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1 and positions[0].epoch
    pubs = await events.wait_publications("ch", 5)
    assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]
    assert [p.data for p in pubs] == [b'{"n":%d}' % i for i in range(1, 6)]
    _, top = await history(engine, "ch", limit=0)
    assert top == positions[-1]


@gen_test
async def test_each_publication_is_delivered_exactly_once_in_order(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    positions = await publish_n(engine, "ch", 10)
    await events.wait_publications("ch", 10)
    await marker(engine, events)
    pubs = events.publications("ch")
    assert [p.offset for p in pubs] == [p.offset for p in positions]
    assert [p.data for p in pubs] == [b'{"n":%d}' % i for i in range(1, 11)]


@gen_test
async def test_history_off_gives_offset_zero_and_still_delivers(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    position = await publish(engine, "ch", b'{"a":1}', HistoryOptions())
    assert position.offset == 0
    pubs = await events.wait_publications("ch", 1)
    assert pubs[0].offset == 0 and pubs[0].data == b'{"a":1}'
    got, top = await history(engine, "ch")
    assert got == [] and top.offset == 0


@gen_test
async def test_publication_fields_round_trip(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    data = '{"text":"héllo ☃ \\"q\\"","n":[1,2.5,null],"e":{}}'.encode()
    full = ClientInfo("user-1", "client-1", conn_info=b'{"name":"Ann","x":[1]}', chan_info=b'{"role":"mod"}')
    bare = ClientInfo("", "client-2")
    tags = {"kind": "note", "ü": "ß", "empty": ""}
    await publish(engine, "ch", data, info=full, tags=tags)
    await publish(engine, "ch", b"{}", info=bare)
    await publish(engine, "ch", b"[]", info=None)
    delivered = await events.wait_publications("ch", 3)
    stored, _ = await engine.history("ch", None, -1, False, META_TTL)
    for pubs in (delivered, stored):
        assert [p.data for p in pubs] == [data, b"{}", b"[]"]
        assert pubs[0].info == full
        assert pubs[0].tags == tags
        assert pubs[1].info == bare  # None stays None (b"" would be invalid raw JSON on the wire)
        assert pubs[1].tags == {}
        assert pubs[2].info is None
        assert all(p.time > 0 for p in pubs)
    assert [p.offset for p in stored] == [1, 2, 3]
    assert [p.time for p in stored] == [p.time for p in delivered]


@gen_test
async def test_concurrent_publishes_get_unique_contiguous_offsets(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    n = 200
    positions = await asyncio.gather(*(publish(engine, "ch", b'{"i":%d}' % i) for i in range(n)))
    assert sorted(p.offset for p in positions) == list(range(1, n + 1))
    assert len({p.epoch for p in positions}) == 1
    await events.wait_publications("ch", n)
    await marker(engine, events)
    pubs = events.publications("ch")
    assert [p.offset for p in pubs] == list(range(1, n + 1))  # each once, in offset order
    sent = {positions[i].offset: b'{"i":%d}' % i for i in range(n)}  # gather keeps argument order
    assert {p.offset: p.data for p in pubs} == sent
    got, top = await history(engine, "ch", limit=-1)
    assert got == list(range(n - HISTORY.size + 1, n + 1))  # the newest `size` of them
    assert top.offset == n


@gen_test
async def test_subscribe_and_unsubscribe_gate_delivery(make: Any, harness: Harness) -> None:
    engine, events = await make()
    await engine.subscribe("a")
    await publish(engine, "a", b'{"a":1}')
    await events.wait_publications("a", 1)
    await engine.unsubscribe("a")
    await publish(engine, "a", b'{"a":2}')
    await publish(engine, "never-subscribed", b'{"b":1}')
    await marker(engine, events)
    if harness.is_redis:  # a node only hears channels it subscribed to; the memory engine delivers everything
        assert [p.data for p in events.publications("a")] == [b'{"a":1}']
        assert events.publications("never-subscribed") == []
    await engine.subscribe("a")
    await publish(engine, "a", b'{"a":3}')
    pubs = await events.wait_publications("a", 2)
    assert pubs[-1].data == b'{"a":3}' and pubs[-1].offset == 3


@gen_test
async def test_join_and_leave_reach_a_subscribed_channel(make: Any) -> None:
    engine, events = await make()
    await engine.subscribe("ch")
    info = ClientInfo("u1", "c1", conn_info=b'{"n":"Ann"}', chan_info=b"[1]")
    await engine.publish_join("ch", info)
    await engine.publish_leave("ch", info)
    await engine.publish_join("ch", ClientInfo("u2", "c2"))
    await events.until(lambda: len(events.joins) >= 2 and len(events.leaves) >= 1, "2 joins and 1 leave")
    assert events.joins == [("ch", info), ("ch", ClientInfo("u2", "c2"))]
    assert events.leaves == [("ch", info)]


@gen_test
async def test_publish_control_reaches_on_control_in_order(make: Any) -> None:
    engine, events = await make()
    messages = [b'{"op":"disconnect","user":"u1"}', bytes(range(256)), b"x" * 10000]
    for data in messages:
        await engine.publish_control(data)
    await events.until(lambda: len(events.controls) >= len(messages), f"{len(messages)} control messages")
    assert events.controls == messages


# --- history --------------------------------------------------------------------------------------------------


@gen_test
async def test_history_directions_limits_and_since(make: Any) -> None:
    engine, _ = await make()
    positions = await publish_n(engine, "ch", 5)
    epoch = positions[0].epoch
    top = StreamPosition(5, epoch)

    assert await history(engine, "ch") == ([1, 2, 3, 4, 5], top)
    assert await history(engine, "ch", limit=2) == ([1, 2], top)
    assert await history(engine, "ch", limit=0) == ([], top)  # 0 = the position only
    assert await history(engine, "ch", limit=100) == ([1, 2, 3, 4, 5], top)
    assert await history(engine, "ch", reverse=True) == ([5, 4, 3, 2, 1], top)
    assert await history(engine, "ch", reverse=True, limit=2) == ([5, 4], top)

    since = StreamPosition(2, epoch)
    assert await history(engine, "ch", since=since) == ([3, 4, 5], top)  # strictly after since
    assert await history(engine, "ch", since=since, limit=1) == ([3], top)
    assert await history(engine, "ch", since=StreamPosition(0, epoch)) == ([1, 2, 3, 4, 5], top)
    assert await history(engine, "ch", since=top) == ([], top)
    assert await history(engine, "ch", since=StreamPosition(4, epoch), reverse=True) == ([3, 2, 1], top)
    assert await history(engine, "ch", since=StreamPosition(4, epoch), reverse=True, limit=2) == ([3, 2], top)

    pubs, _ = await engine.history("ch", None, -1, False, META_TTL)
    assert [p.data for p in pubs] == [b'{"n":%d}' % i for i in range(1, 6)]


@gen_test
async def test_history_of_an_unknown_channel_is_empty_and_its_epoch_is_kept(make: Any) -> None:
    engine, _ = await make()
    got, top = await history(engine, "fresh")
    assert got == [] and top.offset == 0 and top.epoch
    position = await publish(engine, "fresh", b"{}")
    assert position == StreamPosition(1, top.epoch)  # a subscriber that read the top can recover from it


@gen_test
async def test_channels_have_separate_streams(make: Any) -> None:
    engine, _ = await make()
    await publish_n(engine, "a", 3)
    position = await publish(engine, "b", b"{}")
    assert position.offset == 1
    assert (await history(engine, "a"))[0] == [1, 2, 3]
    assert (await history(engine, "b"))[0] == [1]


@gen_test
async def test_history_is_trimmed_to_size(make: Any) -> None:
    engine, _ = await make()
    opts = HistoryOptions(size=3, ttl=3600, meta_ttl=3600)
    positions = await publish_n(engine, "ch", 7, opts)
    got, top = await history(engine, "ch")
    assert got == [5, 6, 7]
    assert top == positions[-1] and top.offset == 7
    assert (await history(engine, "ch", reverse=True, limit=2))[0] == [7, 6]


@gen_test
async def test_history_items_expire_after_ttl(make: Any) -> None:
    engine, _ = await make()
    opts = HistoryOptions(size=10, ttl=1, meta_ttl=3600)
    positions = await publish_n(engine, "ch", 3, opts)
    assert (await history(engine, "ch"))[0] == [1, 2, 3]

    async def gone() -> bool:
        await engine.maintain()
        return (await history(engine, "ch"))[0] == []

    await poll(gone, "history items to expire")
    _, top = await history(engine, "ch")
    assert top == positions[-1]  # the stream position outlives its items while the metadata lives
    assert (await publish(engine, "ch", b"{}", opts)) == StreamPosition(4, top.epoch)


@gen_test
async def test_a_new_epoch_when_meta_ttl_passes(make: Any) -> None:
    engine, _ = await make()
    opts = HistoryOptions(size=10, ttl=1, meta_ttl=1)
    positions = await publish_n(engine, "ch", 2, opts)
    epoch = positions[0].epoch

    async def new_epoch() -> bool:  # meta_ttl 0 while polling, so reading does not keep the metadata alive
        await engine.maintain()
        _, top = await history(engine, "ch", meta_ttl=0)
        return top.epoch != epoch

    await poll(new_epoch, "the stream metadata to expire")
    got, top = await history(engine, "ch", meta_ttl=0)
    assert got == [] and top.offset == 0 and top.epoch and top.epoch != epoch
    position = await publish(engine, "ch", b"{}", opts)
    assert position.offset == 1 and position.epoch == top.epoch


@gen_test
async def test_remove_history_keeps_the_position(make: Any) -> None:
    engine, _ = await make()
    positions = await publish_n(engine, "ch", 3)
    await engine.remove_history("ch")
    got, top = await history(engine, "ch")
    assert got == [] and top == positions[-1]
    assert await publish(engine, "ch", b"{}") == StreamPosition(4, top.epoch)
    assert (await history(engine, "ch"))[0] == [4]
    await engine.remove_history("no-such-channel")  # nothing to remove: no error


# --- presence -------------------------------------------------------------------------------------------------


@gen_test
async def test_presence_add_remove_and_stats(make: Any) -> None:
    engine, _ = await make()
    assert await engine.presence("room") == {}
    assert await engine.presence_stats("room") == PresenceStats(0, 0)
    c1 = ClientInfo("u1", "c1", conn_info=b'{"name":"Ann"}', chan_info=b'{"r":1}')
    c2 = ClientInfo("u1", "c2")
    c3 = ClientInfo("u2", "c3", conn_info=b"[]")
    for info in (c1, c2, c3):
        await engine.add_presence("room", info.client, info, 60)
    await engine.add_presence("other", "c9", ClientInfo("u9", "c9"), 60)
    assert await engine.presence("room") == {"c1": c1, "c2": c2, "c3": c3}
    assert await engine.presence_stats("room") == PresenceStats(num_clients=3, num_users=2)

    c1b = ClientInfo("u1", "c1", conn_info=b'{"name":"Ann B"}')
    await engine.add_presence("room", "c1", c1b, 60)  # the same client again: replaced, not added
    assert await engine.presence("room") == {"c1": c1b, "c2": c2, "c3": c3}

    await engine.remove_presence("room", "c2")
    assert await engine.presence("room") == {"c1": c1b, "c3": c3}
    assert await engine.presence_stats("room") == PresenceStats(num_clients=2, num_users=2)
    await engine.remove_presence("room", "c3")
    assert await engine.presence_stats("room") == PresenceStats(num_clients=1, num_users=1)
    await engine.remove_presence("room", "nobody")  # no error
    await engine.remove_presence("empty-room", "nobody")
    assert await engine.presence("other") == {"c9": ClientInfo("u9", "c9")}


@gen_test
async def test_presence_expires_after_ttl(make: Any) -> None:
    engine, _ = await make()
    await engine.add_presence("room", "short", ClientInfo("u1", "short"), 1)
    await engine.add_presence("room", "long", ClientInfo("u2", "long"), 3600)
    assert set(await engine.presence("room")) == {"short", "long"}

    async def expired() -> bool:
        await engine.maintain()
        return set(await engine.presence("room")) == {"long"}

    await poll(expired, "the short presence entry to expire")
    assert await engine.presence_stats("room") == PresenceStats(1, 1)


@gen_test
async def test_refresh_presence_keeps_entries_alive(make: Any) -> None:
    engine, _ = await make()
    a = ClientInfo("u1", "a")
    b = ClientInfo("u2", "b")
    a2 = ClientInfo("u1", "a", chan_info=b'{"v":2}')
    await engine.add_presence("room", "a", a, 1)
    await engine.add_presence("room", "b", b, 1)
    await engine.add_presence("hall", "a", a, 1)
    refreshed: dict[str, ClientInfo] = {}

    async def only_refreshed_left() -> bool:
        await engine.refresh_presence([("room", "a", a2), ("hall", "a", a)], 1)
        room = await engine.presence("room")
        hall = await engine.presence("hall")
        assert "a" in room and "a" in hall, "a refreshed entry expired"  # just refreshed for 1 s
        refreshed.update(room)
        return "b" not in room

    await poll(only_refreshed_left, "the entry that was not refreshed to expire", every=0.2)
    assert refreshed["a"] == a2  # a refresh also updates the info
    assert await engine.presence_stats("room") == PresenceStats(1, 1)
    await engine.refresh_presence([], 1)  # nothing to refresh: no error


# --- lifecycle and failures -----------------------------------------------------------------------------------


@gen_test
async def test_a_closed_engine_refuses_work(make: Any, harness: Harness) -> None:
    engine, _ = await make()
    await publish(engine, "ch", b"{}")
    await harness.close(engine)
    with pytest.raises(EngineError):
        await asyncio.wait_for(publish(engine, "ch", b"{}"), WAIT)


@gen_test
async def test_a_new_engine_on_the_same_backend_sees_the_stream(make: Any, harness: Harness) -> None:
    if not harness.shared_backend:
        pytest.skip("the plain memory engine keeps nothing across instances")
    first, _ = await make()
    positions = await publish_n(first, "ch", 3)
    await harness.close(first)
    second, _ = await make()
    got, top = await history(second, "ch")
    assert got == [1, 2, 3] and top == positions[-1]
    assert await publish(second, "ch", b"{}") == StreamPosition(4, top.epoch)


@gen_test
async def test_two_nodes_share_channels_presence_and_control(make: Any, harness: Harness) -> None:
    if not harness.is_redis:
        pytest.skip("only the Redis engine connects nodes")
    one, events1 = await make("n1")
    two, events2 = await make("n2")
    await one.subscribe("ch")
    await two.subscribe("ch")
    p1 = await publish(one, "ch", b'{"from":1}')
    p2 = await publish(two, "ch", b'{"from":2}')
    assert (p1.offset, p2.offset) == (1, 2) and p1.epoch == p2.epoch
    for events in (events1, events2):
        pubs = await events.wait_publications("ch", 2)
        assert [(p.offset, p.data) for p in pubs] == [(1, b'{"from":1}'), (2, b'{"from":2}')]
    await one.add_presence("ch", "c1", ClientInfo("u1", "c1"), 60)
    assert await two.presence("ch") == {"c1": ClientInfo("u1", "c1")}
    await two.publish_join("ch", ClientInfo("u2", "c2"))
    await events1.until(lambda: events1.joins == [("ch", ClientInfo("u2", "c2"))], "the join from the other node")
    await one.publish_control(b'{"c":1}')
    # every node, the sender included
    await events1.until(lambda: events1.controls == [b'{"c":1}'], "the control message on the sender")
    await events2.until(lambda: events2.controls == [b'{"c":1}'], "the control message on the other node")


@gen_test
async def test_redis_unreachable_raises_engine_error(harness: Harness) -> None:
    if not harness.is_redis:
        pytest.skip("only the Redis engine has a server to lose")
    port = free_port()  # nothing listens here
    build = _redis_build(f"redis://127.0.0.1:{port}", "gunreach")
    try:
        engine, _ = await harness.make(build=build)
    except EngineError:
        return  # refusing to start is an acceptable way to report it
    for attempt in (
        lambda: publish(engine, "ch", b"{}"),
        lambda: history(engine, "ch"),
        lambda: engine.add_presence("ch", "c1", ClientInfo("u", "c1"), 60),
        lambda: engine.presence("ch"),
    ):
        with pytest.raises(EngineError):
            await asyncio.wait_for(attempt(), WAIT)  # a hang fails with TimeoutError, not EngineError
