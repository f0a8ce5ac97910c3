"""Interoperability: the official Python SDK (centrifuge-python 0.7.0) against a real Gust server.

Every SDK client runs in-process on the test's asyncio loop (the same loop as the server), is driven only through
the SDK's public API and event handlers, and is disconnected in a `finally` block.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, TypeVar

import jwt
import pytest
from centrifuge import (
    Client,
    ClientState,
    ReplyError,
    StreamPosition,
    SubscribedContext,
    SubscriptionState,
    SubscriptionUnsubscribedError,
)

from server.app import Gust
from server.protocol import Disconnects

from .conftest import SECRET
from .sdkevents import SubEvents, next_event, sdk_client

pytestmark = pytest.mark.sdk

T = TypeVar("T")



def assert_empty(queue: asyncio.Queue[Any]) -> None:
    leftover = []
    while not queue.empty():
        leftover.append(queue.get_nowait())
    assert not leftover, f"unexpected events: {leftover}"


def unique_channel() -> str:
    return f"chat:py-{uuid.uuid4().hex}"


def connection_token(user: str, info: dict[str, Any]) -> str:
    claims = {"sub": user, "exp": int(time.time()) + 3600, "info": info}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def subscribe(client: Client, channel: str) -> tuple[Any, SubEvents, SubscribedContext]:
    events = SubEvents()
    sub = client.new_subscription(channel, events=events)
    await sub.subscribe()
    ctx = await next_event(events.subscribed)
    assert sub.state == SubscriptionState.SUBSCRIBED
    return sub, events, ctx


@pytest.mark.gen_test(timeout=20)
async def test_pubsub_presence_history_join_leave(ws_url: str) -> None:
    channel = unique_channel()
    token = connection_token("alice", {"name": "Alice"})
    async with (
        sdk_client(ws_url) as (anon, anon_events, anon_ctx),
        sdk_client(ws_url, token=token) as (alice, alice_events, alice_ctx),
    ):
        anon_id, alice_id = anon_ctx.client, alice_ctx.client
        assert anon_id and alice_id and anon_id != alice_id

        anon_sub, anon_sub_events, anon_sub_ctx = await subscribe(anon, channel)
        # The chat namespace forces recovery: a fresh stream, positioned and recoverable.
        assert anon_sub_ctx.channel == channel
        assert anon_sub_ctx.recoverable is True
        assert anon_sub_ctx.positioned is True
        assert anon_sub_ctx.was_recovering is False
        assert anon_sub_ctx.recovered is False
        position = anon_sub_ctx.stream_position
        assert position is not None
        assert position.offset == 0
        assert position.epoch
        epoch = position.epoch

        alice_sub, alice_sub_events, alice_sub_ctx = await subscribe(alice, channel)
        assert alice_sub_ctx.stream_position == StreamPosition(offset=0, epoch=epoch)

        # Join (force_push_join_leave): the anonymous subscriber sees alice with her connection info.
        join = await anon_sub_events.join_of(alice_id)
        assert join.info.user == "alice"
        assert join.info.conn_info == {"name": "Alice"}

        # Publications go to both subscribers, with the publisher's info attached.
        await alice_sub.publish({"text": "hello from alice"})
        for events in (anon_sub_events, alice_sub_events):
            pub = await next_event(events.pubs)
            assert pub.data == {"text": "hello from alice"}
            assert pub.offset == 1
            assert pub.info is not None
            assert (pub.info.client, pub.info.user) == (alice_id, "alice")
            assert pub.info.conn_info == {"name": "Alice"}

        await anon.publish(channel, {"text": "hello from anon"})
        for events in (anon_sub_events, alice_sub_events):
            pub = await next_event(events.pubs)
            assert pub.data == {"text": "hello from anon"}
            assert pub.offset == 2
            assert pub.info is not None
            assert (pub.info.client, pub.info.user) == (anon_id, "")
            assert pub.info.conn_info is None

        # Presence, from both sides: both clients, alice's conn_info visible.
        for sub in (anon_sub, alice_sub):
            presence = await sub.presence()
            assert set(presence.clients) == {anon_id, alice_id}
            assert presence.clients[alice_id].client == alice_id
            assert presence.clients[alice_id].user == "alice"
            assert presence.clients[alice_id].conn_info == {"name": "Alice"}
            assert presence.clients[anon_id].client == anon_id
            assert presence.clients[anon_id].user == ""
            assert presence.clients[anon_id].conn_info is None
        stats = await anon.presence_stats(channel)
        assert (stats.num_clients, stats.num_users) == (2, 2)

        # History: three more publications, then offsets, limit, reverse and since.
        for i in range(3, 6):
            await anon_sub.publish({"n": i})
        for events in (anon_sub_events, alice_sub_events):
            assert [(await next_event(events.pubs)).offset for _ in range(3)] == [3, 4, 5]

        everything = await anon_sub.history(limit=-1)
        assert everything.epoch == epoch
        assert everything.offset == 5
        assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
        assert [p.data for p in everything.publications] == [
            {"text": "hello from alice"},
            {"text": "hello from anon"},
            {"n": 3},
            {"n": 4},
            {"n": 5},
        ]
        first = everything.publications[0]
        assert first.info is not None
        assert (first.info.client, first.info.user, first.info.conn_info) == (alice_id, "alice", {"name": "Alice"})

        position_only = await alice.history(channel)
        assert (position_only.offset, position_only.epoch, position_only.publications) == (5, epoch, [])

        oldest = await alice_sub.history(limit=2)
        assert [p.offset for p in oldest.publications] == [1, 2]
        assert oldest.offset == 5

        newest = await alice_sub.history(limit=2, reverse=True)
        assert [p.offset for p in newest.publications] == [5, 4]
        assert [p.data for p in newest.publications] == [{"n": 5}, {"n": 4}]

        after_two = await anon_sub.history(limit=10, since=StreamPosition(offset=2, epoch=epoch))
        assert [p.offset for p in after_two.publications] == [3, 4, 5]

        before_four = await anon_sub.history(limit=10, since=StreamPosition(offset=4, epoch=epoch), reverse=True)
        assert [p.offset for p in before_four.publications] == [3, 2, 1]

        # Leave: alice unsubscribes; the anonymous subscriber sees her go, with her info.
        await alice_sub.unsubscribe()
        unsubscribed = await next_event(alice_sub_events.unsubscribed)
        assert unsubscribed.code == 0
        leave = await anon_sub_events.leave_of(alice_id)
        assert leave.info.user == "alice"
        assert leave.info.conn_info == {"name": "Alice"}
        presence = await anon_sub.presence()
        assert set(presence.clients) == {anon_id}

        for events in (anon_sub_events, alice_sub_events):
            assert_empty(events.pubs)
            assert not events.errors
        for client_events in (anon_events, alice_events):
            assert not client_events.disconnected
            assert not client_events.errors
            assert [c.code for c in client_events.connecting] == [0]


@pytest.mark.gen_test(timeout=30)
async def test_recovery_after_server_side_drop(ws_url: str, gust: Gust) -> None:
    channel = unique_channel()
    # A's reconnect waits at least 0.5 s (backoff min..2*min), so B's publications land while A is away.
    async with (
        sdk_client(ws_url, min_reconnect_delay=0.5, max_reconnect_delay=1.0) as (a, a_events, a_ctx),
        sdk_client(ws_url) as (b, b_events, _),
    ):
        a_sub, a_sub_events, first = await subscribe(a, channel)
        assert first.recoverable is True
        assert first.stream_position is not None
        epoch = first.stream_position.epoch

        for i in range(1, 4):
            await b.publish(channel, {"n": i})
        received = [await next_event(a_sub_events.pubs) for _ in range(3)]
        assert [p.offset for p in received] == [1, 2, 3]
        last = received[-1].offset

        session = gust.node.hub.session(a_ctx.client)
        assert session is not None
        session.close(Disconnects.SHUTDOWN)  # type: ignore[attr-defined]
        assert gust.node.hub.session(a_ctx.client) is None

        missed = [{"missed": i} for i in range(1, 6)]
        for data in missed:
            await b.publish(channel, data)
        # A was still away while all five went out: only B is connected.
        assert len(gust.node.hub.all_sessions()) == 1

        reconnected = await next_event(a_events.connected)
        assert reconnected.client != a_ctx.client
        assert [(c.code, c.reason) for c in a_events.connecting] == [(0, "connect called"), (3001, "shutdown")]

        resubscribing = [await next_event(a_sub_events.subscribing_q) for _ in range(2)]
        assert [c.code for c in resubscribing] == [0, 1]  # subscribe called, then transport closed

        again = await next_event(a_sub_events.subscribed)
        assert again.was_recovering is True
        assert again.recovered is True
        assert again.recoverable is True
        assert again.stream_position == StreamPosition(offset=last, epoch=epoch)

        recovered = [await next_event(a_sub_events.pubs) for _ in range(5)]
        assert [p.offset for p in recovered] == [last + i for i in range(1, 6)]
        assert [p.data for p in recovered] == missed

        await b.publish(channel, {"live": True})
        live = await next_event(a_sub_events.pubs)
        assert (live.offset, live.data) == (last + 6, {"live": True})

        await asyncio.sleep(0.2)
        assert_empty(a_sub_events.pubs)
        assert a_sub.state == SubscriptionState.SUBSCRIBED
        assert not a_sub_events.errors
        assert not a_events.disconnected
        assert not b_events.disconnected


@pytest.mark.gen_test(timeout=20)
async def test_sdk_errors(ws_url: str) -> None:
    async with sdk_client(ws_url) as (client, events, _):
        with pytest.raises(ReplyError) as unknown:
            await client.publish("nosuchns:py-x", {"text": "lost"})
        assert unknown.value.code == 102
        assert unknown.value.temporary is False

        private = f"$chat:py-{uuid.uuid4().hex}"
        sub_events = SubEvents()
        sub = client.new_subscription(private, events=sub_events)
        await sub.subscribe()
        unsubscribed = await next_event(sub_events.unsubscribed)
        assert unsubscribed.code == 103
        assert unsubscribed.reason == "permission denied"
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert sub_events.subscribed.empty()
        with pytest.raises(SubscriptionUnsubscribedError):
            await sub.ready()

        # Neither error costs the connection.
        assert client.state == ClientState.CONNECTED
        await client.publish(unique_channel(), {"still": "connected"})
        assert not events.disconnected
        assert [c.code for c in events.connecting] == [0]


@pytest.mark.parametrize("config_overrides", [{"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}])
@pytest.mark.gen_test(timeout=20)
async def test_sdk_answers_pings(ws_url: str, gust: Gust, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="centrifuge")
    async with sdk_client(ws_url) as (client, events, ctx):
        await asyncio.sleep(3.2)
        assert client.state == ClientState.CONNECTED
        session = gust.node.hub.session(ctx.client)
        assert session is not None
        assert session.close_code is None  # type: ignore[attr-defined]
        # The server pinged (first ping within 1 s, then every second) and the SDK ponged each time.
        pings = [r for r in caplog.records if r.name == "centrifuge" and r.getMessage() == "received ping from server"]
        pongs = [r for r in caplog.records if r.name == "centrifuge" and r.getMessage() == "respond with pong"]
        assert len(pings) >= 2
        assert len(pongs) == len(pings)
        assert events.connected.empty()
        assert [c.code for c in events.connecting] == [0]
        assert not events.disconnected
        assert not events.errors
