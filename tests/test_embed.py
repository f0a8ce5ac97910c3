"""Embedding: the example application (examples/embedded_app.py) mounts Gust at /rt in its own Tornado app, logs
users in with its own signed cookie, and drives Gust through Python hooks and the Python server API. Driven with
the real centrifuge-python and centrifuge-js SDKs over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop
import tornado.web
from centrifuge import Client, ClientState, ConnectedContext, ReplyError, SubscriptionState
from tornado.httpclient import AsyncHTTPClient

from examples.embedded_app import CONFIG, ExampleApp
from server.embed import ErrorCode, Refuse, RpcRequest, RpcResult, StreamPosition

from .nodejs import run_script
from .sdkevents import ClientEvents, SubEvents, next_event, sdk_client

pytestmark = pytest.mark.sdk


class ExampleUnderTest(ExampleApp):
    """The example, plus an rpc method whose hook fails (the internal error path)."""

    async def on_rpc(self, req: RpcRequest) -> RpcResult:
        if req.method == "fail":
            raise RuntimeError("the backend broke")
        return await super().on_rpc(req)


@pytest.fixture
def example(io_loop: tornado.ioloop.IOLoop, tmp_path: Path) -> Iterator[ExampleUnderTest]:
    ex = ExampleUnderTest("test-cookie-secret", {**CONFIG, "data_dir": str(tmp_path / "data")})
    app = ex.make_app()
    io_loop.run_sync(lambda: ex.gust.mount(app, "/rt"))
    ex.app = app  # type: ignore[attr-defined]
    yield ex
    io_loop.run_sync(ex.gust.close)


@pytest.fixture
def app(example: ExampleUnderTest) -> tornado.web.Application:
    return example.app  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def rt_url(http_server: Any, http_port: int) -> str:
    return f"ws://127.0.0.1:{http_port}/rt/connection/websocket"


async def login(base: str, name: str) -> str:
    """Log in through the example's own form; the `Cookie` header value its session cookie makes."""
    response = await AsyncHTTPClient().fetch(
        f"{base}/login", method="POST", body=f"name={name}", follow_redirects=False, raise_error=False)
    assert response.code == 302
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return f"user={jar['user'].coded_value}"


def client_as(url: str, cookie: str | None
              ) -> AbstractAsyncContextManager[tuple[Client, ClientEvents, ConnectedContext]]:
    """A connected SDK client that sends the example app's login cookie with its upgrade request."""
    return sdk_client(url, headers={"Cookie": cookie} if cookie else None)


@pytest.mark.gen_test(timeout=30)
async def test_hooks_and_python_api(example: ExampleUnderTest, rt_url: str, http_port: int) -> None:
    gust = example.gust
    cookie = await login(f"http://127.0.0.1:{http_port}", "alice")
    async with client_as(rt_url, cookie) as (client, events, ctx):
        assert ctx.data == {"hello": "alice"}
        assert example.online[ctx.client] == "alice"

        # rpc → the on_rpc hook
        assert (await client.rpc("whoami", {})).data == {"user": "alice", "client": ctx.client}
        assert (await client.rpc("echo", {"a": [1, 2]})).data == {"a": [1, 2]}
        with pytest.raises(ReplyError) as unknown:
            await client.rpc("nope", {})
        assert unknown.value.code == 104

        # subscribe → on_subscribe allows chat:*, refuses admin:* (103)
        sub_events = SubEvents()
        sub = client.new_subscription("chat:lobby", events=sub_events)
        await sub.subscribe()
        await next_event(sub_events.subscribed)
        denied_events = SubEvents()
        denied = client.new_subscription("admin:ops", events=denied_events)
        await denied.subscribe()
        assert (await next_event(denied_events.unsubscribed)).code == 103
        assert denied.state == SubscriptionState.UNSUBSCRIBED

        # publish → on_publish rewrites the data (author), or refuses (107)
        await sub.publish({"text": "  hi  "})
        pub = await next_event(sub_events.pubs)
        assert pub.data == {"text": "hi", "author": "alice"}
        assert pub.info is not None and pub.info.user == "alice" and pub.info.client == ctx.client
        with pytest.raises(ReplyError) as refused:
            await sub.publish({"text": " "})
        assert refused.value.code == 107 and refused.value.message == "text required"

        # the Python server API, awaited directly
        position = await gust.publish("chat:lobby", {"text": "from the server", "author": "system"})
        assert isinstance(position, StreamPosition) and position.offset == 2
        assert (await next_event(sub_events.pubs)).data == {"text": "from the server", "author": "system"}
        presence = await gust.presence("chat:lobby")
        assert [(i.user, i.client) for i in presence.values()] == [("alice", ctx.client)]
        chan_info = presence[ctx.client].chan_info
        assert chan_info is not None and json.loads(chan_info) == {"joined_as": "alice"}
        stats = await gust.presence_stats("chat:lobby")
        assert (stats.num_clients, stats.num_users) == (1, 1)
        history = await gust.history("chat:lobby", limit=-1)
        assert [json.loads(p.data)["text"] for p in history.publications] == ["hi", "from the server"]
        assert history.position.offset == 2
        results = await gust.broadcast(["chat:lobby", "nosuchns:x"], {"text": "both", "author": "system"})
        assert isinstance(results[0], StreamPosition) and results[0].offset == 3
        assert isinstance(results[1], Exception) and results[1].code == ErrorCode.UNKNOWN_CHANNEL
        channels = await gust.channels("chat:*")
        assert channels == {"chat:lobby": 1}
        assert (await gust.info())["nodes"][0]["num_users"] == 1
        with pytest.raises(Exception) as no_history:
            await gust.history("personal:alice", limit=1)
        assert getattr(no_history.value, "code", None) == ErrorCode.NOT_AVAILABLE

        await gust.disconnect("alice", code=4503, reason="bye")
        disconnected = await next_event(events.disconnected_q)
        assert disconnected.code == 4503
        assert client.state == ClientState.DISCONNECTED
    for _ in range(50):
        if example.disconnects:
            break
        await asyncio.sleep(0.02)
    assert [(e.user, e.code, e.reason) for e in example.disconnects] == [("alice", 4503, "bye")]
    assert not example.online


@pytest.mark.gen_test(timeout=20)
async def test_connect_without_login_is_refused(rt_url: str) -> None:
    events = ClientEvents()
    client = Client(rt_url, events=events, proxy=None)
    try:
        await client.connect()
        disconnected = await next_event(events.disconnected_q)
        assert disconnected.code == ErrorCode.UNAUTHORIZED
        assert client.state == ClientState.DISCONNECTED
    finally:
        await client.disconnect()
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=20)
async def test_forged_cookie_is_refused(rt_url: str) -> None:
    events = ClientEvents()
    client = Client(rt_url, events=events, proxy=None, headers={"Cookie": "user=admin"})
    try:
        await client.connect()
        assert (await next_event(events.disconnected_q)).code == ErrorCode.UNAUTHORIZED
    finally:
        await client.disconnect()
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=20)
async def test_hook_exception_is_internal_error_and_logged(
    rt_url: str, http_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = await login(f"http://127.0.0.1:{http_port}", "bob")
    async with client_as(rt_url, cookie) as (client, _, _ctx):
        with caplog.at_level(logging.ERROR, logger="gust.session"), pytest.raises(ReplyError) as failed:
            await client.rpc("fail", {})
        assert failed.value.code == 100 and failed.value.temporary is True
        records = [r for r in caplog.records if r.name == "gust.session" and "rpc failed" in r.getMessage()]
        assert records and records[0].exc_info is not None
        assert "the backend broke" in str(records[0].exc_info[1])
        # the connection is still usable
        assert (await client.rpc("whoami", {})).data["user"] == "bob"


@pytest.mark.gen_test(timeout=20)
async def test_slow_hook_blocks_only_its_connection(rt_url: str, http_port: int) -> None:
    base = f"http://127.0.0.1:{http_port}"
    async with (
        client_as(rt_url, await login(base, "slow")) as (slow, _, _s),
        client_as(rt_url, await login(base, "fast")) as (fast, _, _f),
    ):
        sleeping = asyncio.ensure_future(slow.rpc("sleep", {"seconds": 3.0}, timeout=10))
        await asyncio.sleep(0.1)
        for _ in range(5):  # served while the other connection's hook is still sleeping: no wall-clock check
            assert (await fast.rpc("whoami", {})).data["user"] == "fast"
        assert not sleeping.done()
        assert (await sleeping).data == {"slept": 3.0}


@pytest.mark.gen_test(timeout=20)
async def test_refuse_codes() -> None:
    assert Refuse(ErrorCode.PERMISSION_DENIED).message == "permission denied"
    custom = Refuse(403, "over quota")
    assert (custom.code, custom.message, custom.temporary) == (403, "over quota", False)


@pytest.mark.gen_test(timeout=60)
async def test_centrifuge_js_calls_rpc_and_send(rt_url: str, http_port: int) -> None:
    cookie = await login(f"http://127.0.0.1:{http_port}", "carol")
    code, stdout, stderr = await run_script("embed.mjs", rt_url, cookie, timeout=30)
    sys.stderr.write(stderr)
    assert code == 0, f"embed.mjs exited with {code}"
    lines = [line for line in stdout.splitlines() if line.strip()]
    summary: dict[str, Any] = json.loads(lines[-1])
    assert summary["connectedData"] == {"hello": "carol"}
    assert summary["whoami"] == {"user": "carol", "client": summary["client"]}
    assert summary["echo"] == {"n": 42}
    assert summary["unknown"]["code"] == 104
    assert summary["sendEcho"] == {"channel": "personal:carol", "data": {"echo": {"ping": 1}}}
