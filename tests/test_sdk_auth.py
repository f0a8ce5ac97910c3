"""Token expiry and refresh with the official SDKs (centrifuge-python 0.7.0 in-process, centrifuge-js 5.8.0 in Node).

Tokens live 1-2 s and the server's grace periods after expiry (`client.expired_close_delay`,
`client.expired_sub_close_delay`) are 1.5 s, so a refresh that does not reach the server costs the connection
(close 3005) or the subscription (unsubscribe push 2501) within about 3.5 s.

Why 1.5 s and not 1 s: `ttl` in connect/subscribe/refresh results is counted in whole unix seconds
(`exp - int(now)`, as Centrifuge does), so the SDKs, which refresh exactly `ttl` seconds after the reply, send the
refresh up to 1 s *after* the token's `exp`. The grace period has to cover that second plus a round trip.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import jwt
import orjson
import pytest
from centrifuge import (
    Client,
    ClientState,
    ConnectedContext,
    ReplyError,
    SubscriptionState,
    UnauthorizedError,
)
from tornado.httpclient import AsyncHTTPClient

from server.app import Gust
from server.config import DEVELOPMENT_PRESET

from .conftest import SECRET
from .nodejs import run_script
from .sdkevents import WAIT, ClientEvents, SubEvents, next_event
from .sdkevents import sdk_client as shared_sdk_client

pytestmark = pytest.mark.sdk

T = TypeVar("T")

TOKEN_TTL = 2  # seconds a refreshable token lives
GRACE = 1.5  # client.expired_close_delay and client.expired_sub_close_delay (see the module docstring)
USER = "alice"
PRIVATE_CHANNEL = "$priv:room"
API_KEY = "auth-test-api-key"

CHAT_NAMESPACE = next(ns for ns in DEVELOPMENT_PRESET["channel"]["namespaces"] if ns["name"] == "chat")
PRIV_NAMESPACE = {"name": "priv", "history_size": 10, "history_ttl": "1h", "force_recovery": True}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    # `channel.namespaces` is a list: the override replaces the preset's, so `chat` is repeated here.
    return {
        "http_api": {"key": API_KEY},
        "client": {"expired_close_delay": f"{GRACE}s", "expired_sub_close_delay": f"{GRACE}s"},
        "channel": {"namespaces": [CHAT_NAMESPACE, PRIV_NAMESPACE]},
    }


# --- helpers -------------------------------------------------------------------------------------------------


def exp_in(seconds: float) -> int:
    """Unix seconds `seconds` from now, rounded up: the token is valid for at least `seconds`."""
    return math.ceil(time.time() + seconds)


def refreshable_exp() -> int:
    """`exp` of a refreshable token, minted as apps usually do (`int(now) + ttl`): the server answers ttl = TOKEN_TTL,
    so the SDK refreshes every TOKEN_TTL seconds."""
    return int(time.time()) + TOKEN_TTL


def connection_token(exp: int, user: str = USER) -> str:
    return jwt.encode({"sub": user, "exp": exp}, SECRET, algorithm="HS256")


def subscription_token(channel: str, exp: int, user: str = USER) -> str:
    return jwt.encode({"sub": user, "channel": channel, "exp": exp}, SECRET, algorithm="HS256")


async def api_publish(base_url: str, channel: str, data: Any) -> None:
    """Publish through the server HTTP API (not through a client connection)."""
    resp = await AsyncHTTPClient().fetch(
        f"{base_url}/api/publish", method="POST", body=orjson.dumps({"channel": channel, "data": data}),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY}, raise_error=False, request_timeout=10,
    )
    assert resp.code == 200, (resp.code, resp.body)
    assert "error" not in orjson.loads(resp.body), resp.body


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def sleep_until(start: float, offset: float) -> None:
    """Sleep until `offset` seconds after `start` (a loop.time() value)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start + offset - loop.time()))


def error_codes(errors: list[Any]) -> list[tuple[int, int | None]]:
    """(SDK error-context code, server reply code if the error is a ReplyError) for each error event."""
    return [(e.code, e.error.code if isinstance(e.error, ReplyError) else None) for e in errors]


def sdk_client(url: str, **kwargs: Any) -> AbstractAsyncContextManager[tuple[Client, ClientEvents, ConnectedContext]]:
    """The shared SDK client with quick reconnects (expiry and refresh tests wait on them)."""
    return shared_sdk_client(url, min_reconnect_delay=0.1, max_reconnect_delay=0.5, **kwargs)


def server_session(gust: Gust, client_id: str) -> Any:
    session = gust.node.hub.session(client_id)
    assert session is not None, f"no server session for client {client_id}"
    return session


# --- Python SDK ----------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
async def test_py_connection_token_refresh(ws_url: str, base_url: str, gust: Gust) -> None:
    calls: list[int] = []

    async def get_token() -> str:
        exp = refreshable_exp()
        calls.append(exp)
        return connection_token(exp)

    first_exp = refreshable_exp()
    channel = f"chat:auth-{secrets.token_hex(4)}"
    loop = asyncio.get_running_loop()
    async with sdk_client(ws_url, token=connection_token(first_exp), get_token=get_token) as (client, events, ctx):
        start = loop.time()
        session = server_session(gust, ctx.client)
        assert session.user == USER
        assert session.expire_at == first_exp
        assert not calls, "the initial token is used for connect, get_token is only for refreshes"

        sub_events = SubEvents()
        sub = client.new_subscription(channel, events=sub_events)
        await sub.subscribe()
        await next_event(sub_events.subscribed)

        # Past the first token's expiry plus the grace period: only refreshes keep the connection open.
        await sleep_until(start, 4.0)
        assert time.time() >= first_exp + GRACE
        assert client.state == ClientState.CONNECTED
        await api_publish(base_url, channel, {"after": "4s"})
        pub = await next_event(sub_events.pubs)
        assert pub.data == {"after": "4s"}

        await sleep_until(start, 5.0)
        await wait_until(lambda: len(calls) >= 2, WAIT, "a second get_token call")
        assert client.state == ClientState.CONNECTED
        assert sub.state == SubscriptionState.SUBSCRIBED
        # The same server connection, its expiry moved forward by the refreshes.
        assert server_session(gust, ctx.client) is session
        assert session.close_code is None
        assert session.expire_at == calls[-1]
        assert session.expire_at > first_exp
        assert events.connected.empty()
        assert [c.code for c in events.connecting] == [0]
        assert not events.disconnected
        assert not events.errors, error_codes(events.errors)
        assert [c.code for c in sub_events.subscribing] == [0]
        assert sub_events.unsubscribed.empty()
        assert not sub_events.errors


@pytest.mark.gen_test(timeout=20)
async def test_py_connection_expires_without_refresh(ws_url: str, gust: Gust) -> None:
    """No get_token: the server closes with 3005 after expiry + grace; the SDK reconnects with the same token,
    gets 109 and, having no way to get a new token, ends disconnected as unauthorized."""
    exp = exp_in(1)
    async with sdk_client(ws_url, token=connection_token(exp)) as (client, events, ctx):
        session = server_session(gust, ctx.client)
        assert session.expire_at == exp

        disconnected = await next_event(events.disconnected_q, timeout=exp - time.time() + GRACE + WAIT)

        assert session.close_code == 3005
        assert gust.node.hub.session(ctx.client) is None
        seen = [(c.code, c.reason) for c in events.connecting]
        assert seen == [(0, "connect called"), (3005, "connection expired")], seen
        # Not closed before the token's expiry plus the grace period.
        assert events.connecting_at[1] >= exp + GRACE - 0.05
        assert (disconnected.code, disconnected.reason) == (1, "unauthorized")
        assert client.state == ClientState.DISCONNECTED
        # The reconnect attempt with the expired token got 109; then the SDK had no get_token to call.
        assert error_codes(events.errors) == [(13, 109), (12, None)], error_codes(events.errors)
        assert events.connected.empty()
        assert not gust.node.hub.all_sessions()


@pytest.mark.gen_test(timeout=20)
async def test_py_subscription_token_refresh(ws_url: str, base_url: str, gust: Gust) -> None:
    calls: list[tuple[str, int]] = []

    async def get_sub_token(channel: str) -> str:
        exp = refreshable_exp()
        calls.append((channel, exp))
        return subscription_token(channel, exp)

    loop = asyncio.get_running_loop()
    async with sdk_client(ws_url, token=connection_token(exp_in(3600))) as (client, events, ctx):
        first_exp = refreshable_exp()
        sub_events = SubEvents()
        sub = client.new_subscription(
            PRIVATE_CHANNEL, events=sub_events, token=subscription_token(PRIVATE_CHANNEL, first_exp),
            get_token=get_sub_token,
        )
        await sub.subscribe()
        subscribed = await next_event(sub_events.subscribed)
        start = loop.time()
        assert subscribed.recoverable is True  # the priv namespace forces recovery
        server_sub = server_session(gust, ctx.client).subs[PRIVATE_CHANNEL]
        assert server_sub.expire_at == first_exp
        assert not calls

        # Publications at about 1 s, 3 s and 5 s: before, between and after the refreshes.
        for n, at in enumerate((1.0, 3.0, 5.0), start=1):
            await sleep_until(start, at)
            assert sub.state == SubscriptionState.SUBSCRIBED, f"not subscribed at {at} s"
            await api_publish(base_url, PRIVATE_CHANNEL, {"n": n})
            pub = await next_event(sub_events.pubs)
            assert (pub.data, pub.offset) == ({"n": n}, n)

        assert time.time() >= first_exp + GRACE  # the last publication came after the first token's expiry + grace
        await wait_until(lambda: len(calls) >= 2, WAIT, "a second subscription get_token call")
        assert {channel for channel, _ in calls} == {PRIVATE_CHANNEL}
        # Still the first subscription on the server, its expiry moved forward by sub_refresh.
        assert server_session(gust, ctx.client).subs[PRIVATE_CHANNEL] is server_sub
        assert server_sub.expire_at == calls[-1][1]
        assert server_sub.expire_at > first_exp
        assert [c.code for c in sub_events.subscribing] == [0]
        assert sub_events.subscribed.empty()
        assert sub_events.unsubscribed.empty()
        assert not sub_events.errors, error_codes(sub_events.errors)
        assert client.state == ClientState.CONNECTED
        assert [c.code for c in events.connecting] == [0]
        assert not events.disconnected
        assert not events.errors


@pytest.mark.gen_test(timeout=20)
async def test_py_subscription_expires_without_get_token(ws_url: str, gust: Gust) -> None:
    """A fixed 1 s subscription token and no get_token: the server unsubscribes with 2501 after expiry + grace;
    the SDK resubscribes with the same token, gets 109 and ends unsubscribed as unauthorized."""
    async with sdk_client(ws_url, token=connection_token(exp_in(3600))) as (client, events, ctx):
        exp = exp_in(1)
        sub_events = SubEvents()
        sub = client.new_subscription(
            PRIVATE_CHANNEL, events=sub_events, token=subscription_token(PRIVATE_CHANNEL, exp))
        await sub.subscribe()
        await next_event(sub_events.subscribed)
        session = server_session(gust, ctx.client)
        assert session.subs[PRIVATE_CHANNEL].expire_at == exp

        unsubscribed = await next_event(sub_events.unsubscribed, timeout=exp - time.time() + GRACE + WAIT)

        seen = [(c.code, c.reason) for c in sub_events.subscribing]
        assert seen == [(0, "subscribe called"), (2501, "subscription expired")], seen
        assert sub_events.subscribing_at[1] >= exp + GRACE - 0.05
        assert (unsubscribed.code, unsubscribed.reason) == (1, "unauthorized")
        assert sub.state == SubscriptionState.UNSUBSCRIBED
        assert error_codes(sub_events.errors) == [(12, None)], error_codes(sub_events.errors)
        assert sub_events.subscribed.empty()
        assert PRIVATE_CHANNEL not in session.subs
        # Only the subscription ended: the connection is untouched.
        assert client.state == ClientState.CONNECTED
        assert server_session(gust, ctx.client) is session
        assert [c.code for c in events.connecting] == [0]
        assert not events.disconnected
        assert not events.errors


@pytest.mark.gen_test(timeout=20)
async def test_py_subscription_expires_when_refresh_stalls(ws_url: str, gust: Gust) -> None:
    """get_token: call 1 (subscribe) returns a 1 s token, call 2 (the refresh) never answers in time, call 3+
    raise UnauthorizedError. The server unsubscribes with 2501; the SDK resubscribes with the kept token, gets 109
    (temporary: the token is dropped), asks get_token again and ends unsubscribed as unauthorized."""
    exp = exp_in(1)
    calls: list[int] = []
    release = asyncio.Event()

    async def get_sub_token(channel: str) -> str:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            return subscription_token(channel, exp)
        if len(calls) == 2:
            await release.wait()  # a stalled token backend
        raise UnauthorizedError()

    try:
        async with sdk_client(ws_url, token=connection_token(exp_in(3600))) as (client, events, ctx):
            sub_events = SubEvents()
            sub = client.new_subscription(PRIVATE_CHANNEL, events=sub_events, get_token=get_sub_token)
            await sub.subscribe()
            await next_event(sub_events.subscribed)
            session = server_session(gust, ctx.client)
            assert session.subs[PRIVATE_CHANNEL].expire_at == exp

            unsubscribed = await next_event(sub_events.unsubscribed, timeout=exp - time.time() + GRACE + WAIT)

            seen = [(c.code, c.reason) for c in sub_events.subscribing]
            assert seen == [(0, "subscribe called"), (2501, "subscription expired")], seen
            assert sub_events.subscribing_at[1] >= exp + GRACE - 0.05
            assert (unsubscribed.code, unsubscribed.reason) == (1, "unauthorized")
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert calls == [1, 2, 3]
            # 14 = subscribe error: the resubscribe with the expired token was answered 109.
            assert error_codes(sub_events.errors) == [(14, 109)], error_codes(sub_events.errors)
            assert sub_events.subscribed.empty()
            assert PRIVATE_CHANNEL not in session.subs
            assert client.state == ClientState.CONNECTED
            assert [c.code for c in events.connecting] == [0]
            assert not events.disconnected
            assert not events.errors
    finally:
        release.set()
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=20)
async def test_py_expired_token_at_connect(ws_url: str, gust: Gust) -> None:
    """An expired token at connect: error 109, then the SDK gets a new token from get_token and connects."""
    calls: list[int] = []

    async def get_token() -> str:
        exp = exp_in(3600)
        calls.append(exp)
        return connection_token(exp)

    expired = connection_token(int(time.time()) - 10)
    async with sdk_client(ws_url, token=expired, get_token=get_token) as (client, events, ctx):
        assert len(calls) == 1
        assert client.state == ClientState.CONNECTED
        session = server_session(gust, ctx.client)
        assert (session.user, session.expire_at) == (USER, calls[0])
        # The failed attempt stays in `connecting`: one connecting event, one error event with 109.
        assert [c.code for c in events.connecting] == [0]
        assert error_codes(events.errors) == [(13, 109)], error_codes(events.errors)
        assert not events.disconnected
        assert len(gust.node.hub.all_sessions()) == 1


# --- JavaScript SDK ------------------------------------------------------------------------------------------

JS_TIMEOUT = 30.0


async def run_js(ws_url: str, base_url: str, scenario: str, *args: str) -> list[dict[str, Any]]:
    """Run auth.mjs `scenario`; return its JSON event lines."""
    env = dict(os.environ, GUST_SECRET=SECRET, GUST_API_URL=f"{base_url}/api", GUST_API_KEY=API_KEY,
               AUTH_USER=USER, AUTH_TOKEN_TTL_S=str(TOKEN_TTL))
    code, text, stderr = await run_script("auth.mjs", ws_url, scenario, *args, timeout=JS_TIMEOUT, env=env)
    sys.stderr.write(text + stderr)  # shown by pytest when the test fails
    assert code == 0, f"auth.mjs {scenario} exited with {code}"
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert events and events[-1]["event"] == "done", events[-1:] if events else text
    return events


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


@pytest.mark.gen_test(timeout=40)
async def test_js_connection_token_refresh(ws_url: str, base_url: str) -> None:
    channel = f"chat:auth-js-{secrets.token_hex(4)}"
    events = await run_js(ws_url, base_url, "connection-refresh", channel)
    done = events[-1]
    assert not of(events, "wait_timeout"), of(events, "wait_timeout")
    assert done["state"] == "connected"
    assert done["subState"] == "subscribed"
    assert done["getTokenCalls"] >= 2, done
    assert len(of(events, "get_token")) == done["getTokenCalls"]
    assert [e["code"] for e in of(events, "connecting")] == [0]
    assert len(of(events, "connected")) == 1
    assert not of(events, "disconnected"), of(events, "disconnected")
    assert not of(events, "error"), of(events, "error")
    assert not of(events, "sub_error")
    assert [e["status"] for e in of(events, "api_publish")] == [200]
    assert [e["data"] for e in of(events, "publication")] == [{"n": 1, "after": "4s"}]
    # The publication was sent after the first token's expiry plus the grace period.
    checkpoint = of(events, "checkpoint")[0]
    assert checkpoint["state"] == "connected"
    assert checkpoint["wall"] >= of(events, "start")[0]["firstExp"] + GRACE
    assert done["heldMs"] >= 5000


@pytest.mark.gen_test(timeout=40)
async def test_js_subscription_token_refresh(ws_url: str, base_url: str) -> None:
    events = await run_js(ws_url, base_url, "subscription-refresh", PRIVATE_CHANNEL)
    done = events[-1]
    assert not of(events, "wait_timeout"), of(events, "wait_timeout")
    assert done["state"] == "connected"
    assert done["subState"] == "subscribed"
    assert done["getTokenCalls"] >= 2, done
    assert {e["ctx"]["channel"] for e in of(events, "sub_get_token")} == {PRIVATE_CHANNEL}
    subscribed = of(events, "subscribed")
    assert len(subscribed) == 1
    assert subscribed[0]["recoverable"] is True
    assert [e["code"] for e in of(events, "subscribing")] == [0]
    assert not of(events, "unsubscribed"), of(events, "unsubscribed")
    assert not of(events, "sub_error"), of(events, "sub_error")
    assert not of(events, "error"), of(events, "error")
    assert not of(events, "disconnected")
    assert [e["status"] for e in of(events, "api_publish")] == [200, 200, 200]
    assert [(e["data"], e["offset"]) for e in of(events, "publication")] == [({"n": n}, n) for n in (1, 2, 3)]
    last_publish = of(events, "checkpoint")[-1]
    assert last_publish["subState"] == "subscribed"
    assert last_publish["wall"] >= of(events, "start")[0]["firstExp"] + GRACE
    assert done["heldMs"] >= 5000


@pytest.mark.gen_test(timeout=40)
async def test_js_expired_token_at_connect(ws_url: str, base_url: str) -> None:
    events = await run_js(ws_url, base_url, "expired-connect")
    done = events[-1]
    assert not of(events, "wait_timeout"), of(events, "wait_timeout")
    assert done["state"] == "connected"
    assert done["getTokenCalls"] == 1
    assert len(of(events, "connected")) == 1
    assert [e["code"] for e in of(events, "connecting")] == [0]
    errors = of(events, "error")
    assert [(e["type"], e["error"]["code"]) for e in errors] == [("connect", 109)], errors
    assert not of(events, "disconnected")
    # get_token ran after the 109 reply.
    assert events.index(errors[0]) < events.index(of(events, "get_token")[0])
