"""Interoperability: the official server API SDK `cent` 5.2.0 (sync `Client` and `AsyncClient`) against Gust.

Each test runs twice, once per client flavour. The sync client blocks, so it runs in a worker thread; the async
client (aiohttp) runs on the test's loop, which is also the server's loop. Effects are checked on raw WebSocket
connections.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import requests
from cent import (
    AsyncClient,
    BatchRequest,
    BatchResult,
    BroadcastRequest,
    BroadcastResult,
    CentApiResponseError,
    CentTransportError,
    CentUnauthorizedError,
    ChannelsRequest,
    ChannelsResult,
    Client,
    ConnectionsRequest,
    Disconnect,
    DisconnectRequest,
    DisconnectResult,
    HistoryRemoveRequest,
    HistoryRemoveResult,
    HistoryRequest,
    HistoryResult,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    RefreshRequest,
    RefreshResult,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)

from .test_api import (
    API_CONFIG,
    KEY,
    ClientFactory,
    barrier,
    connect_user,
    subscriber,
    unique_channel,
    unique_user,
)

pytestmark = pytest.mark.sdk


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return API_CONFIG


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Api:
    """One `cent` client of either flavour behind the same awaitable interface: `await api.publish(req)`."""

    def __init__(self, flavour: str, api_url: str, key: str) -> None:
        self.flavour = flavour
        self.sync: Client | None = None
        self.async_: AsyncClient | None = None
        if flavour == "sync":
            session = requests.Session()
            session.trust_env = False  # never route loopback through a proxy from the environment
            self.sync = Client(api_url, key, timeout=10.0, session=session)
        else:
            self.async_ = AsyncClient(api_url, key, timeout=10.0)

    async def send(self, method: str, request: Any) -> Any:
        if self.sync is not None:
            return await asyncio.to_thread(getattr(self.sync, method), request)
        assert self.async_ is not None
        return await getattr(self.async_, method)(request)

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.async_ is not None:
            await self.async_.close()

    async def publish(self, request: PublishRequest) -> PublishResult:
        return await self.send("publish", request)  # type: ignore[no-any-return]

    async def broadcast(self, request: BroadcastRequest) -> BroadcastResult:
        return await self.send("broadcast", request)  # type: ignore[no-any-return]

    async def subscribe(self, request: SubscribeRequest) -> SubscribeResult:
        return await self.send("subscribe", request)  # type: ignore[no-any-return]

    async def unsubscribe(self, request: UnsubscribeRequest) -> UnsubscribeResult:
        return await self.send("unsubscribe", request)  # type: ignore[no-any-return]

    async def disconnect(self, request: DisconnectRequest) -> DisconnectResult:
        return await self.send("disconnect", request)  # type: ignore[no-any-return]

    async def refresh(self, request: RefreshRequest) -> RefreshResult:
        return await self.send("refresh", request)  # type: ignore[no-any-return]

    async def presence(self, request: PresenceRequest) -> PresenceResult:
        return await self.send("presence", request)  # type: ignore[no-any-return]

    async def presence_stats(self, request: PresenceStatsRequest) -> PresenceStatsResult:
        return await self.send("presence_stats", request)  # type: ignore[no-any-return]

    async def history(self, request: HistoryRequest) -> HistoryResult:
        return await self.send("history", request)  # type: ignore[no-any-return]

    async def history_remove(self, request: HistoryRemoveRequest) -> HistoryRemoveResult:
        return await self.send("history_remove", request)  # type: ignore[no-any-return]

    async def channels(self, request: ChannelsRequest) -> ChannelsResult:
        return await self.send("channels", request)  # type: ignore[no-any-return]

    async def info(self, request: InfoRequest) -> InfoResult:
        return await self.send("info", request)  # type: ignore[no-any-return]

    async def batch(self, request: BatchRequest) -> BatchResult:
        return await self.send("batch", request)  # type: ignore[no-any-return]


@asynccontextmanager
async def cent_api(flavour: str, base_url: str, key: str = KEY) -> AsyncIterator[Api]:
    api = Api(flavour, f"{base_url}/api", key)
    try:
        yield api
    finally:
        await api.close()


# --- publish, broadcast --------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_publish(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    async with cent_api(flavour, base_url) as api:
        result = await api.publish(PublishRequest(channel=channel, data={"text": "hi"}, tags={"k": "v"}))
        assert isinstance(result, PublishResult)
        assert result.offset == 1
        assert result.epoch
        push = await client.push("pub")
        assert push["channel"] == channel
        assert push["pub"]["data"] == {"text": "hi"}
        assert push["pub"]["offset"] == 1
        assert push["pub"]["tags"] == {"k": "v"}

        second = await api.publish(PublishRequest(channel=channel, data=[1, 2, 3]))
        assert (second.offset, second.epoch) == (2, result.epoch)
        assert (await client.push("pub"))["pub"]["data"] == [1, 2, 3]

        history = await api.history(HistoryRequest(channel=channel, limit=10))
        assert [p.data for p in history.publications] == [{"text": "hi"}, [1, 2, 3]]
        assert history.publications[0].tags == {"k": "v"}
        assert history.publications[0].info is None


@pytest.mark.gen_test(timeout=20)
async def test_publish_b64data_skip_history_idempotency(
    flavour: str, base_url: str, client_factory: ClientFactory
) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    async with cent_api(flavour, base_url) as api:
        b64 = base64.b64encode(orjson.dumps({"bin": True})).decode()
        result = await api.publish(PublishRequest(channel=channel, data=None, b64data=b64))
        assert result.offset == 1
        assert (await client.push("pub"))["pub"]["data"] == {"bin": True}

        await api.publish(PublishRequest(channel=channel, data={"skipped": True}, skip_history=True))
        assert (await client.push("pub"))["pub"]["data"] == {"skipped": True}

        request = PublishRequest(channel=channel, data={"once": True}, idempotency_key=uuid.uuid4().hex)
        first = await api.publish(request)
        again = await api.publish(request)
        assert first.offset == 2
        assert (again.offset, again.epoch) == (first.offset, first.epoch)

        history = await api.history(HistoryRequest(channel=channel, limit=10))
        assert [p.data for p in history.publications] == [{"bin": True}, {"once": True}]
        assert history.offset == 2
        await client.push("pub")
        assert not [p for p in await barrier(client) if "pub" in p]


@pytest.mark.gen_test(timeout=20)
async def test_broadcast(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    a, b = unique_channel(), unique_channel()
    client_a, _ = await subscriber(client_factory, a)
    client_b, _ = await subscriber(client_factory, b)
    async with cent_api(flavour, base_url) as api:
        result = await api.broadcast(BroadcastRequest(channels=[a, "nope:x", b], data={"all": True}))
        assert isinstance(result, BroadcastResult)
        assert len(result.responses) == 3
        ok_a, bad, ok_b = result.responses
        assert ok_a.error is None and ok_a.result is not None
        assert ok_a.result.offset == 1 and ok_a.result.epoch
        assert bad.result is None and bad.error is not None
        assert bad.error.code == 102
        assert ok_b.result is not None and ok_b.result.offset == 1
        for client in (client_a, client_b):
            assert (await client.push("pub"))["pub"]["data"] == {"all": True}


# --- subscribe, unsubscribe, disconnect, refresh -------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_subscribe_and_unsubscribe(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user, {"name": "Sub"})
    c2, id2 = await connect_user(client_factory, user, {"name": "Sub"})
    async with cent_api(flavour, base_url) as api:
        result = await api.subscribe(SubscribeRequest(user=user, channel=channel, data={"hello": 1}))
        assert isinstance(result, SubscribeResult)
        for client in (c1, c2):
            push = await client.push("subscribe")
            assert push["channel"] == channel
            assert push["subscribe"].get("data") == {"hello": 1}

        await api.publish(PublishRequest(channel=channel, data={"n": 1}))
        for client in (c1, c2):
            assert (await client.push("pub"))["pub"]["data"] == {"n": 1}

        presence = await api.presence(PresenceRequest(channel=channel))
        assert set(presence.presence) == {id1, id2}
        assert presence.presence[id1].user == user
        assert presence.presence[id1].client == id1
        assert presence.presence[id1].conn_info == {"name": "Sub"}

        unsub = await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel, client=id1))
        assert isinstance(unsub, UnsubscribeResult)
        push = await c1.push("unsubscribe")
        assert push == {"channel": channel, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
        assert not [p for p in await barrier(c2) if "unsubscribe" in p]
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (1, 1)

        await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
        assert (await c2.push("unsubscribe"))["unsubscribe"]["code"] == 2000
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (0, 0)


@pytest.mark.gen_test(timeout=20)
async def test_subscribe_one_client(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user)
    c2, _ = await connect_user(client_factory, user)
    async with cent_api(flavour, base_url) as api:
        await api.subscribe(SubscribeRequest(user=user, channel=channel, client=id1))
        assert (await c1.push("subscribe"))["channel"] == channel
        assert not [p for p in await barrier(c2) if "subscribe" in p]
        presence = await api.presence(PresenceRequest(channel=channel))
        assert set(presence.presence) == {id1}


@pytest.mark.gen_test(timeout=20)
async def test_disconnect(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user)
    c2, id2 = await connect_user(client_factory, user)
    c3, _ = await connect_user(client_factory, user)
    async with cent_api(flavour, base_url) as api:
        custom = DisconnectRequest(user=user, client=id1, disconnect=Disconnect(code=4501, reason="bye"))
        assert isinstance(await api.disconnect(custom), DisconnectResult)
        closed = await c1.closed()
        assert (closed.code, closed.reason) == (4501, "bye")

        await api.disconnect(DisconnectRequest(user=user, whitelist=[id2]))
        closed = await c3.closed()
        assert (closed.code, closed.reason) == (3503, "force disconnect")
        assert "presence_stats" in await c2.command("presence_stats", {"channel": "chat:barrier"})

        await api.disconnect(DisconnectRequest(user=user))
        assert (await c2.closed()).code == 3503


@pytest.mark.gen_test(timeout=20)
async def test_refresh(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    client, client_id = await connect_user(client_factory, user)
    async with cent_api(flavour, base_url) as api:
        result = await api.refresh(RefreshRequest(user=user, expire_at=int(time.time()) + 3600))
        assert isinstance(result, RefreshResult)
        assert "presence_stats" in await client.command("presence_stats", {"channel": "chat:barrier"})
        await api.refresh(RefreshRequest(user=user, client=client_id, expired=True))
        assert (await client.closed()).code == 3005


# --- presence, history, channels, info -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_empty_results_validate(flavour: str, base_url: str) -> None:
    """Collections are always present, so cent's models validate even when there is nothing to report."""
    channel = unique_channel()
    async with cent_api(flavour, base_url) as api:
        presence = await api.presence(PresenceRequest(channel=channel))
        assert isinstance(presence, PresenceResult)
        assert presence.presence == {}
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (0, 0)
        history = await api.history(HistoryRequest(channel=channel, limit=10))
        assert isinstance(history, HistoryResult)
        assert history.publications == []
        assert history.offset == 0
        channels = await api.channels(ChannelsRequest(pattern=f"{channel}*"))
        assert isinstance(channels, ChannelsResult)
        assert channels.channels == {}
        assert isinstance(await api.history_remove(HistoryRemoveRequest(channel=channel)), HistoryRemoveResult)


@pytest.mark.gen_test(timeout=20)
async def test_presence_and_stats(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    alice, bob = unique_user(), unique_user()
    _, id1 = await subscriber(client_factory, channel, alice)
    _, id2 = await subscriber(client_factory, channel, alice)
    _, id3 = await subscriber(client_factory, channel, bob)
    async with cent_api(flavour, base_url) as api:
        presence = await api.presence(PresenceRequest(channel=channel))
        assert set(presence.presence) == {id1, id2, id3}
        assert {info.user for info in presence.presence.values()} == {alice, bob}
        for client_id, info in presence.presence.items():
            assert info.client == client_id
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert isinstance(stats, PresenceStatsResult)
        assert (stats.num_clients, stats.num_users) == (3, 2)


@pytest.mark.gen_test(timeout=20)
async def test_history_and_history_remove(flavour: str, base_url: str) -> None:
    channel = unique_channel()
    async with cent_api(flavour, base_url) as api:
        epoch = ""
        for n in range(1, 6):
            epoch = (await api.publish(PublishRequest(channel=channel, data={"n": n}))).epoch

        def ns(result: HistoryResult) -> list[int]:
            return [p.data["n"] for p in result.publications]

        top = await api.history(HistoryRequest(channel=channel))
        assert (top.publications, top.offset, top.epoch) == ([], 5, epoch)
        first = await api.history(HistoryRequest(channel=channel, limit=3))
        assert ns(first) == [1, 2, 3]
        assert [p.offset for p in first.publications] == [1, 2, 3]
        assert (first.offset, first.epoch) == (5, epoch)
        assert ns(await api.history(HistoryRequest(channel=channel, limit=2, reverse=True))) == [5, 4]
        since = StreamPosition(offset=3, epoch=epoch)
        assert ns(await api.history(HistoryRequest(channel=channel, limit=10, since=since))) == [4, 5]

        with pytest.raises(CentApiResponseError) as excinfo:
            await api.history(HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=1, epoch="x")))
        assert excinfo.value.code == 112

        await api.history_remove(HistoryRemoveRequest(channel=channel))
        after = await api.history(HistoryRequest(channel=channel, limit=10))
        assert (after.publications, after.offset, after.epoch) == ([], 5, epoch)


@pytest.mark.gen_test(timeout=20)
async def test_channels(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    prefix = f"chat:{uuid.uuid4().hex}-"
    await subscriber(client_factory, prefix + "a")
    await subscriber(client_factory, prefix + "a")
    await subscriber(client_factory, prefix + "b")
    async with cent_api(flavour, base_url) as api:
        result = await api.channels(ChannelsRequest(pattern=prefix + "*"))
        assert {name: info.num_clients for name, info in result.channels.items()} == {prefix + "a": 2, prefix + "b": 1}
        everything = await api.channels(ChannelsRequest())
        assert everything.channels[prefix + "a"].num_clients == 2


@pytest.mark.gen_test(timeout=20)
async def test_info(flavour: str, base_url: str, client_factory: ClientFactory) -> None:
    await subscriber(client_factory, unique_channel(), unique_user())
    async with cent_api(flavour, base_url) as api:
        result = await api.info(InfoRequest())
        assert isinstance(result, InfoResult)
        assert len(result.nodes) == 1
        node = result.nodes[0]
        assert node.uid and node.name and node.version
        assert node.num_clients >= 1
        assert node.num_users >= 1
        assert node.num_channels >= 1
        assert node.num_subs >= 1
        assert node.uptime >= 0


# --- batch ---------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
async def test_batch(flavour: str, base_url: str, client_factory: ClientFactory, parallel: bool) -> None:
    channel = unique_channel()
    client, client_id = await subscriber(client_factory, channel, unique_user())
    async with cent_api(flavour, base_url) as api:
        result = await api.batch(BatchRequest(requests=[
            PublishRequest(channel=channel, data={"n": 1}),
            PublishRequest(channel=channel, data={"n": 2}),
            PresenceRequest(channel=channel),
            PresenceStatsRequest(channel=channel),
            InfoRequest(),
            ChannelsRequest(pattern=channel),
        ], parallel=parallel))
        assert isinstance(result, BatchResult)
        pub1, pub2, presence, stats, info, channels = result.replies
        assert isinstance(pub1, PublishResult) and isinstance(pub2, PublishResult)
        assert sorted([pub1.offset, pub2.offset]) == [1, 2]
        assert isinstance(presence, PresenceResult)
        assert set(presence.presence) == {client_id}
        assert isinstance(stats, PresenceStatsResult)
        assert (stats.num_clients, stats.num_users) == (1, 1)
        assert isinstance(info, InfoResult)
        assert len(info.nodes) == 1
        assert isinstance(channels, ChannelsResult)
        assert channels.channels[channel].num_clients == 1
        datas = [(await client.push("pub"))["pub"]["data"] for _ in range(2)]
        assert sorted(d["n"] for d in datas) == [1, 2]
        if not parallel:
            assert (pub1.offset, pub2.offset) == (1, 2)
            assert datas == [{"n": 1}, {"n": 2}]


@pytest.mark.gen_test(timeout=20)
async def test_batch_history_and_commands_on_users(
    flavour: str, base_url: str, client_factory: ClientFactory
) -> None:
    channel = unique_channel()
    user = unique_user()
    client, _ = await connect_user(client_factory, user)
    async with cent_api(flavour, base_url) as api:
        result = await api.batch(BatchRequest(requests=[
            SubscribeRequest(user=user, channel=channel),
            PublishRequest(channel=channel, data={"x": 1}),
            HistoryRequest(channel=channel, limit=10),
            HistoryRemoveRequest(channel=channel),
            UnsubscribeRequest(user=user, channel=channel),
            RefreshRequest(user=user, expire_at=int(time.time()) + 600),
            DisconnectRequest(user=user),
        ]))
        sub, pub, history, removed, unsub, refresh, disc = result.replies
        assert isinstance(sub, SubscribeResult)
        assert isinstance(pub, PublishResult) and pub.offset == 1
        assert isinstance(history, HistoryResult)
        assert [p.data for p in history.publications] == [{"x": 1}]
        assert isinstance(removed, HistoryRemoveResult)
        assert isinstance(unsub, UnsubscribeResult)
        assert isinstance(refresh, RefreshResult)
        assert isinstance(disc, DisconnectResult)
        assert (await client.push("subscribe"))["channel"] == channel
        assert (await client.push("pub"))["pub"]["data"] == {"x": 1}
        assert (await client.push("unsubscribe"))["unsubscribe"]["code"] == 2000
        assert (await client.closed()).code == 3503


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_api_errors(flavour: str, base_url: str) -> None:
    async with cent_api(flavour, base_url) as api:
        with pytest.raises(CentApiResponseError) as excinfo:
            await api.publish(PublishRequest(channel="nope:x", data={}))
        assert excinfo.value.code == 102
        assert excinfo.value.message

        with pytest.raises(CentApiResponseError) as excinfo:
            await api.history(HistoryRequest(channel=unique_channel("plain-"), limit=1))
        assert excinfo.value.code == 108

        with pytest.raises(CentApiResponseError) as excinfo:
            await api.publish(PublishRequest(channel="", data={}))
        assert excinfo.value.code == 107

        with pytest.raises(CentApiResponseError) as excinfo:
            await api.subscribe(SubscribeRequest(user="u", channel="nope:x"))
        assert excinfo.value.code == 102


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("key", ["wrong-key", ""], ids=["wrong key", "no key"])
async def test_unauthorized(flavour: str, base_url: str, key: str) -> None:
    channel = unique_channel()
    async with cent_api(flavour, base_url, key=key) as api:
        with pytest.raises(CentUnauthorizedError):
            await api.publish(PublishRequest(channel=channel, data={}))
        with pytest.raises(CentUnauthorizedError):
            await api.info(InfoRequest())
    async with cent_api(flavour, base_url) as api:
        assert (await api.history(HistoryRequest(channel=channel, limit=10))).publications == []


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("config_overrides", [{"http_api": {"insecure": True}}], ids=["insecure"])
async def test_insecure_mode_without_key(flavour: str, base_url: str, config_overrides: dict[str, Any]) -> None:
    async with cent_api(flavour, base_url, key="") as api:
        assert (await api.publish(PublishRequest(channel=unique_channel(), data={}))).offset == 1


@pytest.mark.gen_test(timeout=20)
async def test_method_the_server_does_not_have_is_a_transport_error(flavour: str, base_url: str) -> None:
    async with cent_api(flavour, base_url) as api:
        with pytest.raises(CentTransportError) as excinfo:
            await api.send("connections", ConnectionsRequest(user="u", expression=""))
        assert excinfo.value.status_code == 404


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("config_overrides", [{"http_api": {"key": KEY, "max_body_size": 2048}}], ids=["2KiB"])
async def test_oversized_body_is_a_transport_error(
    flavour: str, base_url: str, config_overrides: dict[str, Any]
) -> None:
    async with cent_api(flavour, base_url) as api:
        with pytest.raises(CentTransportError) as excinfo:
            await api.publish(PublishRequest(channel=unique_channel(), data={"text": "x" * 8192}))
        assert excinfo.value.status_code == 413
        assert (await api.publish(PublishRequest(channel=unique_channel(), data={"text": "small"}))).offset == 1
