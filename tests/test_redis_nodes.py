"""Two Gust nodes, each a real `python -m server` process on its own port, sharing one Redis (our own
`redis-server`, never the shared one): publications, presence, `info`, `channels` and connection operations
cross nodes; a client that moves from one node to the other, or whose node is SIGKILLed, recovers what it
missed; two nodes publishing into one channel give unique contiguous offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from centrifuge import Client, SubscribedContext

from .procs import Api, GateProxy, GustProcess, chat_namespace
from .redisproc import RedisServer
from .sdkevents import SubEvents, next_event, sdk_client
from .wsclient import RawClient

pytestmark = [pytest.mark.redis]
PRESENCE_TTL = 3.0


def redis_extra(url: str, prefix: str, **more: Any) -> dict[str, Any]:
    return {
        "engine": {"type": "redis", "redis": {"address": url, "prefix": prefix, "io_timeout": "2s",
                                              "reconnect_max_delay": "1s"}},
        "client": {"presence_ttl": f"{PRESENCE_TTL}s", "presence_update_interval": "1s"},
        "channel": {"namespaces": [chat_namespace(presence=True, join_leave=True, force_push_join_leave=True,
                                                  allow_presence_for_client=True)]},
        **more,
    }


async def start_nodes(procs: list[GustProcess], tmp_path: Path, url: str, prefix: str,
                      count: int = 2) -> list[GustProcess]:
    nodes = [GustProcess(tmp_path / f"node{i}", extra=redis_extra(url, prefix)) for i in range(count)]
    procs.extend(nodes)
    for node in nodes:
        node.spawn()
    for node in nodes:
        await node.wait_ready_async()
    return nodes


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def subscribed(url: str, channel: str, **kwargs: Any) -> AsyncIterator[tuple[Client, SubEvents, str]]:
    """An SDK client subscribed to `channel`: (client, subscription events, client id)."""
    async with sdk_client(url, min_reconnect_delay=0.1, max_reconnect_delay=0.5, **kwargs) as (client, _, ctx):
        events = SubEvents()
        sub = client.new_subscription(channel, events=events)
        await sub.subscribe()
        await next_event(events.subscribed)
        yield client, events, ctx.client


async def reopen_to(proxy: GateProxy, port: int, events: SubEvents) -> SubscribedContext:
    """Open the proxy's gate towards `port`; the SDK reconnects through it: its next `subscribed` event."""
    proxy.upstream_port = port
    proxy.open = True
    return await next_event(events.subscribed, 15)


async def take(events: SubEvents, count: int) -> list[tuple[int, Any]]:
    return [(p.offset, p.data) for p in [await next_event(events.pubs, 10) for _ in range(count)]]


@pytest.mark.gen_test(timeout=60)
async def test_publication_via_node_a_reaches_subscribers_on_node_b(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    async with subscribed(b.ws_url, "chat:x") as (_, on_b, _), subscribed(a.ws_url, "chat:x") as (_, on_a, _):
        api_a, api_b = a.api(), b.api()
        first = api_a.publish("chat:x", {"from": "a"})
        second = api_b.publish("chat:x", {"from": "b"})
        assert (first["offset"], second["offset"]) == (1, 2) and first["epoch"] == second["epoch"]
        for events in (on_a, on_b):
            assert await take(events, 2) == [(1, {"from": "a"}), (2, {"from": "b"})]
        history = api_b.history("chat:x")
        assert [p["data"] for p in history["publications"]] == [{"from": "a"}, {"from": "b"}]


@pytest.mark.gen_test(timeout=60)
async def test_presence_info_and_channels_show_both_nodes(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    api_a, api_b = a.api(), b.api()
    async with subscribed(a.ws_url, "chat:p") as (_, _, id_a), subscribed(b.ws_url, "chat:p") as (_, _, id_b):
        for api in (api_a, api_b):
            presence = api.result("presence", {"channel": "chat:p"})["presence"]
            assert set(presence) == {id_a, id_b}
            assert api.result("presence_stats", {"channel": "chat:p"}) == {"num_clients": 2, "num_users": 1}

        def both_nodes() -> list[dict[str, Any]] | None:
            nodes: list[dict[str, Any]] = api_a.result("info", {})["nodes"]
            # another node's numbers are as of its last announcement (every 3 s), as in Centrifugo
            return nodes if sorted(n["num_clients"] for n in nodes) == [1, 1] else None

        nodes = await until(both_nodes, "info to list both nodes with one client each")
        assert len({n["uid"] for n in nodes}) == 2
        channels = api_b.result("channels", {"pattern": "chat:*"})["channels"]
        assert channels == {"chat:p": {"num_clients": 2}}


@pytest.mark.gen_test(timeout=60)
async def test_api_connection_operations_reach_clients_on_the_other_node(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    api_a = a.api()
    async with subscribed(b.ws_url, "chat:ops") as (client, events, client_id):
        # the anonymous user is ""; address the connection by its client id
        api_a.result("unsubscribe", {"user": "", "client": client_id, "channel": "chat:ops"})
        gone = await next_event(events.unsubscribed, 10)
        assert gone.code == 2000
        api_a.result("disconnect", {"user": "", "client": client_id,
                                    "disconnect": {"code": 4500, "reason": "moved"}})
        found = await until(lambda: client.state.value == "disconnected", "the client on node B to be disconnected")
        assert found


@pytest.mark.gen_test(timeout=90)
async def test_client_moving_from_node_a_to_node_b_recovers_what_it_missed(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    proxy = await GateProxy(a.port).start()
    try:
        async with subscribed(f"ws://127.0.0.1:{proxy.port}/connection/websocket", "chat:m") as (_, events, _):
            api_a, api_b = a.api(), b.api()
            for i in range(3):
                api_a.publish("chat:m", {"i": i})
            assert [o for o, _ in await take(events, 3)] == [1, 2, 3]
            proxy.open = False
            proxy.drop_connections()
            await until(lambda: proxy.refused >= 1, "a reconnect attempt while the gate is shut")
            for i in range(3, 8):
                api_b.publish("chat:m", {"i": i})
            resubscribed = await reopen_to(proxy, b.port, events)
            assert resubscribed.was_recovering and resubscribed.recovered
            assert await take(events, 5) == [(4 + i, {"i": 3 + i}) for i in range(5)]
            api_a.publish("chat:m", {"i": 8})
            assert await take(events, 1) == [(9, {"i": 8})]
            assert events.pubs.empty()
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=90)
async def test_sigkill_of_node_a_clients_move_to_b_and_its_presence_expires(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    proxy = await GateProxy(a.port).start()
    api_b = b.api()
    try:
        async with subscribed(f"ws://127.0.0.1:{proxy.port}/connection/websocket", "chat:k") as (_, events, old_id):
            api_b.publish("chat:k", {"n": 1})
            assert await take(events, 1) == [(1, {"n": 1})]
            assert old_id in api_b.result("presence", {"channel": "chat:k"})["presence"]
            proxy.open = False
            a.kill()
            await until(lambda: proxy.refused >= 1, "the SDK to try again while node A is dead")
            killed_at = time.monotonic()
            api_b.publish("chat:k", {"n": 2})
            api_b.publish("chat:k", {"n": 3})
            resubscribed = await reopen_to(proxy, b.port, events)
            assert resubscribed.recovered
            assert await take(events, 2) == [(2, {"n": 2}), (3, {"n": 3})]

            def old_entry_gone() -> bool:
                return old_id not in api_b.result("presence", {"channel": "chat:k"})["presence"]

            await until(old_entry_gone, "node A's presence entry to expire", timeout=PRESENCE_TTL + 10)
            assert time.monotonic() - killed_at < PRESENCE_TTL + 10
            assert len(api_b.result("presence", {"channel": "chat:k"})["presence"]) == 1  # the moved client
            await until(lambda: len(api_b.result("info", {})["nodes"]) == 1, "node A to drop out of info", 20)
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=90)
async def test_two_nodes_publishing_concurrently_give_contiguous_unique_offsets(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    per_node = 150
    async with subscribed(a.ws_url, "chat:c") as (_, on_a, _), subscribed(b.ws_url, "chat:c") as (_, on_b, _):

        def publish_many(node: GustProcess, tag: str) -> list[int]:
            api = Api(node.port)
            try:
                return [api.publish("chat:c", {"by": tag, "i": i})["offset"] for i in range(per_node)]
            finally:
                api.close()

        offsets_a, offsets_b = await asyncio.gather(asyncio.to_thread(publish_many, a, "a"),
                                                    asyncio.to_thread(publish_many, b, "b"))
        assert sorted(offsets_a + offsets_b) == list(range(1, 2 * per_node + 1))
        assert offsets_a == sorted(offsets_a) and offsets_b == sorted(offsets_b)
        for events in (on_a, on_b):
            got = await take(events, 2 * per_node)
            assert [o for o, _ in got] == list(range(1, 2 * per_node + 1))
            by_tag = {"a": [d["i"] for _, d in got if d["by"] == "a"], "b": [d["i"] for _, d in got if d["by"] == "b"]}
            assert by_tag == {"a": list(range(per_node)), "b": list(range(per_node))}


@pytest.mark.gen_test(timeout=120)
async def test_redis_restart_mid_stream_is_survived(
    tmp_path: Path, procs: list[GustProcess], own_redis: RedisServer
) -> None:
    """SHUTDOWN NOSAVE while publishing: publishes fail with error 100 (none hangs, none succeeds falsely),
    clients stay connected, and once Redis is back everything resumes by itself; subscribers see every
    acknowledged publication, or are told to resubscribe (new epoch) and then see every later one."""
    a, b = await start_nodes(procs, tmp_path, own_redis.url, "restart")
    api_a = a.api()
    async with subscribed(a.ws_url, "chat:r") as (client_a, on_a, _), \
            subscribed(b.ws_url, "chat:r") as (client_b, on_b, _):
        before = [api_a.publish("chat:r", {"phase": "before", "i": i}) for i in range(3)]
        for events in (on_a, on_b):
            assert [o for o, _ in await take(events, 3)] == [1, 2, 3]
        epoch = before[0]["epoch"]

        own_redis.shutdown_nosave()
        started = time.monotonic()
        reply = api_a.call("publish", {"channel": "chat:r", "data": {"phase": "down"}})
        assert reply.get("error", {}).get("code") == 100, reply
        assert time.monotonic() - started < 10, "a publish while Redis is down must fail, not hang"
        status, _ = await asyncio.to_thread(api_a.raw, "presence", {"channel": "chat:r"})
        assert status == 200
        raw = await RawClient.open(b.ws_url)  # a new subscription while Redis is down: temporary error 100
        try:
            assert "connect" in await raw.connect()
            reply = await raw.command("subscribe", {"channel": "chat:new"})
            assert reply.get("error", {}).get("code") == 100 and reply["error"].get("temporary"), reply
        finally:
            raw.close()

        own_redis.restart()

        def publish_after() -> dict[str, Any] | None:
            reply = api_a.call("publish", {"channel": "chat:r", "data": {"phase": "after"}})
            return reply.get("result")

        first_after = await until(publish_after, "publishing to work again after the Redis restart", 30)
        assert first_after["epoch"] != epoch  # the stream is gone: a new epoch, offsets from 1
        for client, events in ((client_a, on_a), (client_b, on_b)):
            assert client.state.value == "connected"
            # the subscription learns that the stream was reset (2500 → resubscribe), then goes on live
            resub = await next_event(events.subscribed, 20)
            assert resub.was_recovering and not resub.recovered
        live = api_a.publish("chat:r", {"phase": "live"})
        for events in (on_a, on_b):
            got: list[tuple[int, Any]] = []
            while not got or got[-1][1] != {"phase": "live"}:
                got += await take(events, 1)
            assert got[-1][0] == live["offset"]
            assert all(d["phase"] in ("after", "live") for _, d in got), got
            assert [o for o, _ in got] == sorted({o for o, _ in got}), got
        # presence comes back by itself (each node refreshes its entries every second)
        await until(lambda: len(api_a.result("presence", {"channel": "chat:r"})["presence"]) == 2,
                    "presence to be rebuilt after the Redis restart", 15)


@pytest.mark.gen_test(timeout=60)
async def test_idempotency_key_holds_across_nodes(
    tmp_path: Path, procs: list[GustProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = await start_nodes(procs, tmp_path, redis_url, redis_prefix)
    async with subscribed(a.ws_url, "chat:i") as (_, events, _):
        params = {"channel": "chat:i", "data": {"n": 1}, "idempotency_key": "order-17"}
        first = a.api().result("publish", params)
        again = b.api().result("publish", params)  # a retry that lands on the other node
        assert again == first == {"offset": 1, "epoch": first["epoch"]}
        b.api().publish("chat:i", {"n": 2})
        assert await take(events, 2) == [(1, {"n": 1}), (2, {"n": 2})]
        unpositioned = {"channel": "chat:i", "data": {"n": 3}, "idempotency_key": "x", "skip_history": True}
        assert a.api().result("publish", unpositioned) == b.api().result("publish", unpositioned) == {}
        assert await take(events, 1) == [(0, {"n": 3})]
        b.api().publish("chat:i", {"n": 4})
        assert await take(events, 1) == [(3, {"n": 4})]
