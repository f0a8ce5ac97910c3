"""static/gust.js, our own JavaScript client, in real Chromium against a real Gust subprocess.

Every test opens pages of the server's `/` (so `/static/gust.js` is same-origin), then drives clients through the
`window.T` harness below: it records every event of every client and subscription, every WebSocket frame in and
out, and calls back into Python (`window.mintToken`) for JWTs. All waits are bounded `wait_for_function` calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests import procs
from tests.browser import browser  # noqa: F401  (the module-scoped Chromium fixture)

pytestmark = pytest.mark.browser

WAIT_MS = 10_000

# Installed in every page before its scripts run: a recording WebSocket and helpers for the tests.
HARNESS_JS = r"""
(() => {
  const frames = { in: [], out: [], sockets: 0 };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      frames.sockets++;
      this.addEventListener("message", (ev) => frames.in.push(ev.data));
    }
    send(data) { frames.out.push(data); super.send(data); }
  };
  const plain = (v) => (v === undefined ? null : JSON.parse(JSON.stringify(v)));
  const CLIENT_EVENTS = ["state", "connecting", "connected", "disconnected", "error", "message", "subscribing",
                         "subscribed", "unsubscribed", "publication", "join", "leave"];
  const SUB_EVENTS = ["state", "subscribing", "subscribed", "unsubscribed", "error", "publication", "join", "leave"];
  const record = (target, events, rec) => {
    for (const ev of events) target.on(ev, (ctx) => rec.log.push({ ev, ctx: plain(ctx), at: Date.now() }));
  };
  window.T = {
    frames,
    clients: {},
    // opts.getToken / subOpts.getToken are token specs for Python's mint(), not functions.
    async client(name, url, opts = {}) {
      const { Client } = await import("/static/gust.js");
      const rec = { log: [], subs: {}, tokenCalls: 0 };
      const o = { ...opts };
      if (opts.getToken) {
        o.getToken = async () => {
          if (++rec.tokenCalls <= (opts.getToken.failures || 0)) throw new Error("token backend down");
          return await window.mintToken(opts.getToken);
        };
      }
      rec.client = new Client(url, o);
      record(rec.client, CLIENT_EVENTS, rec);
      this.clients[name] = rec;
    },
    sub(name, channel, opts = {}) {
      const rec = this.clients[name];
      const srec = { log: [], pubs: [], tokenCalls: 0 };
      const o = { ...opts };
      if (opts.getToken) {
        o.getToken = async (ctx) => {
          srec.tokenCalls++;
          return await window.mintToken({ ...opts.getToken, channel: ctx.channel });
        };
      }
      srec.sub = rec.client.newSubscription(channel, o);
      record(srec.sub, SUB_EVENTS, srec);
      srec.sub.on("publication", (ctx) => srec.pubs.push(plain(ctx)));
      rec.subs[channel] = srec;
    },
    events(name, ev, channel) {
      const rec = channel ? this.clients[name].subs[channel] : this.clients[name];
      return rec.log.filter((e) => e.ev === ev).map((e) => e.ctx);
    },
    count(name, ev, channel) { return this.events(name, ev, channel).length; },
    // The commands the page sent, one object per line of every outgoing frame.
    sent() { return frames.out.flatMap((f) => f.split("\n")).map((l) => JSON.parse(l)); },
    async settle(promise) {
      try { return { ok: plain(await promise) }; } catch (e) { return { err: { code: e.code, message: e.message } }; }
    },
  };
})();
"""


def mint(spec: dict[str, Any]) -> str:
    """A JWT for a token spec `{sub, ttl (s, may be negative), channel?, channels?, empty?}` ("" when `empty`)."""
    if spec.get("empty"):
        return ""
    claims: dict[str, Any] = {"sub": spec.get("sub", "alice"), "exp": int(time.time()) + int(spec.get("ttl", 3600))}
    for key in ("channel", "channels"):
        if spec.get(key):
            claims[key] = spec[key]
    return jwt.encode(claims, procs.SECRET, algorithm="HS256")


def token(user: str, ttl: int = 3600, **claims: Any) -> str:
    return mint({"sub": user, "ttl": ttl, **claims})


@pytest.fixture(scope="module")
def gust(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.GustProcess]:
    chat = procs.chat_namespace(
        presence=True, join_leave=True, force_push_join_leave=True, allow_publish_for_subscriber=True,
        allow_presence_for_subscriber=True, allow_history_for_subscriber=True)
    extra = {
        "client": {
            "ping_interval": "1s", "pong_timeout": "500ms",  # pings keep flowing in every test
            "expired_close_delay": "2s", "expired_sub_close_delay": "2s",
            "allowed_origins": ["http://127.0.0.1:*"],  # pages of the server reach it through a proxy too
        },
        "channel": {"namespaces": [chat]},
    }
    server = procs.GustProcess(tmp_path_factory.mktemp("gustjs"), extra=extra).start()
    yield server
    server.cleanup()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:  # noqa: F811  (the fixture imported above)
    ctx = browser.new_context()
    ctx.expose_function("mintToken", mint)
    ctx.add_init_script(HARNESS_JS)
    yield ctx
    ctx.close()


class Page:
    """One browser page of the server with the harness, and shortcuts to it."""

    def __init__(self, context: Any, server: procs.GustProcess) -> None:
        self.page = context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        self.page.goto(server.base_url + "/")
        self.ws_url = server.ws_url

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def wait(self, expr: str, arg: Any = None, timeout: float = WAIT_MS) -> None:
        try:
            self.page.wait_for_function(expr, arg=arg, timeout=timeout, polling=50)
        except Exception as exc:
            log = self.js("() => Object.fromEntries(Object.entries(T.clients).map(([k, r]) => [k, r.log]))")
            raise AssertionError(f"timed out waiting for {expr}\nclient events: {json.dumps(log)[:4000]}\n"
                                 f"console: {self.console[-20:]}") from exc

    def client(self, name: str, url: str | None = None, **opts: Any) -> None:
        self.js("([n, u, o]) => T.client(n, u, o)", [name, url or self.ws_url, opts])

    def sub(self, name: str, channel: str, **opts: Any) -> None:
        self.js("([n, c, o]) => T.sub(n, c, o)", [name, channel, opts])

    def events(self, name: str, ev: str, channel: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.js("([n, e, c]) => T.events(n, e, c)", [name, ev, channel])
        return result

    def connect_and_subscribe(self, name: str, channel: str) -> str:
        """Subscribe `channel` then connect; the client ID once subscribed."""
        self.js("([n, c]) => { T.clients[n].subs[c].sub.subscribe(); T.clients[n].client.connect(); }", [name, channel])
        self.wait("([n, c]) => T.count(n, 'subscribed', c) >= 1", [name, channel])
        client_id: str = self.js("n => T.clients[n].client.clientId", name)
        return client_id

    def pubs(self, name: str, channel: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.js("([n, c]) => T.clients[n].subs[c].pubs", [name, channel])
        return result

    def sent(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.js("() => T.sent()")
        return result


def new_channel(prefix: str = "room") -> str:
    return f"chat:{prefix}-{secrets.token_hex(4)}"


class ThreadedProxy:
    """procs.GateProxy on an asyncio loop of its own thread, for plain synchronous tests."""

    def __init__(self, upstream_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = asyncio.run_coroutine_threadsafe(procs.GateProxy(upstream_port).start(), self.loop).result(5)

    @property
    def port(self) -> int:
        return self.proxy.port

    def set_open(self, value: bool) -> None:
        self.loop.call_soon_threadsafe(setattr, self.proxy, "open", value)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# --- tests ------------------------------------------------------------------------------------------------


def test_publish_both_ways_between_two_pages(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    a, b = Page(context, gust), Page(context, gust)
    a.client("a", token=token("alice"))
    a.sub("a", channel)
    a_id = a.connect_and_subscribe("a", channel)
    b.client("b", token=token("bob"))
    b.sub("b", channel)
    b_id = b.connect_and_subscribe("b", channel)
    assert a_id and b_id and a_id != b_id

    # connect and subscribe went out in one frame, with ids 1 and 2
    first = a.js("() => T.frames.out[0]").split("\n")
    assert [json.loads(line)["id"] for line in first] == [1, 2]
    assert "connect" in json.loads(first[0]) and json.loads(first[1])["subscribe"]["channel"] == channel
    connected = a.events("a", "connected")[0]
    assert connected["client"] == a_id and connected["transport"] == "websocket" and connected["version"]
    subscribed = a.events("a", "subscribed", channel)[0]
    assert subscribed["recoverable"] and subscribed["positioned"] and not subscribed["wasRecovering"]
    assert subscribed["streamPosition"]["epoch"]

    assert a.js("([c]) => T.settle(T.clients.a.subs[c].sub.publish({text: 'hi from alice'}))", [channel]) == {"ok": {}}
    b.wait("([c]) => T.clients.b.subs[c].pubs.length === 1", [channel])
    (pub,) = b.pubs("b", channel)
    assert pub["channel"] == channel and pub["data"] == {"text": "hi from alice"}
    assert pub["info"]["user"] == "alice" and pub["info"]["client"] == a_id and pub["offset"] > 0

    assert b.js("([c]) => T.settle(T.clients.b.client.publish(c, {text: 'hi from bob'}))", [channel]) == {"ok": {}}
    a.wait("([c]) => T.clients.a.subs[c].pubs.length === 2", [channel])
    mine, theirs = a.pubs("a", channel)
    assert mine["data"] == {"text": "hi from alice"} and theirs["data"] == {"text": "hi from bob"}
    assert theirs["info"]["user"] == "bob" and theirs["offset"] == mine["offset"] + 1


def test_calls_made_while_connecting_are_queued(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("alice"))
    page.sub("a", channel)
    outcome = page.js("""async ([c]) => {
        const { client, subs } = T.clients.a;
        const early = client.publish(c, {early: true});   // disconnected: waits for the connection
        const refused = client.ready(5000);                // disconnected: rejects at once
        subs[c].sub.subscribe();
        client.connect();
        const ready = client.ready(5000);                  // connecting: waits
        const viaSub = subs[c].sub.publish({viaSub: true});  // waits for the subscription
        return [await T.settle(refused), await T.settle(early), await T.settle(ready), await T.settle(viaSub),
                client.state];
    }""", [channel])
    assert outcome == [{"err": {"code": 3, "message": "client disconnected"}}, {"ok": {}}, {"ok": None}, {"ok": {}},
                       "connected"]
    page.wait("([c]) => T.clients.a.subs[c].pubs.length === 2", [channel])
    assert [p["data"] for p in page.pubs("a", channel)] == [{"early": True}, {"viaSub": True}]


def test_presence_history_join_leave_and_errors(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    api = gust.api()
    a, b = Page(context, gust), Page(context, gust)
    a.client("a", token=token("alice"))
    a.sub("a", channel)
    a_id = a.connect_and_subscribe("a", channel)
    b.client("b", token=token("bob"))
    b.sub("b", channel)
    b_id = b.connect_and_subscribe("b", channel)

    a.wait("([c]) => T.count('a', 'join', c) >= 1", [channel])
    join = a.events("a", "join", channel)[-1]
    assert join == {"channel": channel, "info": {"client": b_id, "user": "bob"}}

    presence = a.js("([c]) => T.settle(T.clients.a.subs[c].sub.presence())", [channel])["ok"]
    assert presence["clients"] == {a_id: {"client": a_id, "user": "alice"}, b_id: {"client": b_id, "user": "bob"}}
    stats = a.js("([c]) => T.settle(T.clients.a.client.presenceStats(c))", [channel])["ok"]
    assert stats == {"numClients": 2, "numUsers": 2}

    offsets = [api.publish(channel, {"n": n})["offset"] for n in range(3)]
    a.wait("([c]) => T.clients.a.subs[c].pubs.length === 3", [channel])
    full = a.js("([c]) => T.settle(T.clients.a.subs[c].sub.history({limit: -1}))", [channel])["ok"]
    assert [p["data"] for p in full["publications"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [p["offset"] for p in full["publications"]] == offsets and full["offset"] == offsets[-1] and full["epoch"]
    last2 = a.js("([c]) => T.settle(T.clients.a.client.history(c, {limit: 2, reverse: true}))", [channel])["ok"]
    assert [p["offset"] for p in last2["publications"]] == offsets[:0:-1]
    since = a.js("([c, o, e]) => T.settle(T.clients.a.client.history(c, {limit: 10, since: {offset: o, epoch: e}}))",
                 [channel, offsets[0], full["epoch"]])["ok"]
    assert [p["data"] for p in since["publications"]] == [{"n": 1}, {"n": 2}]
    position = a.js("([c]) => T.settle(T.clients.a.client.history(c))", [channel])["ok"]
    assert position == {"publications": [], "epoch": full["epoch"], "offset": offsets[-1]}

    b.js("([c]) => T.clients.b.subs[c].sub.unsubscribe()", [channel])
    a.wait("([c]) => T.count('a', 'leave', c) >= 1", [channel])
    assert a.events("a", "leave", channel)[-1] == {"channel": channel, "info": {"client": b_id, "user": "bob"}}
    assert b.events("b", "unsubscribed", channel) == [{"channel": channel, "code": 0, "reason": "unsubscribe called"}]
    assert b.js("([c]) => T.settle(T.clients.b.subs[c].sub.publish({}))", [channel])["err"]["code"] == 7

    # server errors reject with {code, message}; the connection stays up
    rpc = a.js("() => T.settle(T.clients.a.client.rpc('nope', {}))")
    assert rpc["err"]["code"] == 108 and rpc["err"]["message"]
    assert a.js("() => T.settle(T.clients.a.client.publish('nope:x', {}))")["err"]["code"] == 102
    assert a.js("() => T.clients.a.client.clientId") == a_id


def test_server_side_subscriptions(gust: procs.GustProcess, context: Any) -> None:
    """Server-side subscriptions from the token's `channels` (recovered across a reconnect through the connect
    command's `subs`) and from the server API's `subscribe`: client-level events."""
    token_channel, api_channel = new_channel("token"), new_channel("api")
    api = gust.api()
    page = Page(context, gust)
    page.client("a", token=token("carol", channels=[token_channel]), minReconnectDelay=100, maxReconnectDelay=200)
    page.js("() => T.clients.a.client.connect()")
    page.wait("([c]) => T.events('a', 'subscribed').some(e => e.channel === c)", [token_channel])
    first = page.events("a", "subscribed")[0]
    assert first["channel"] == token_channel and first["recoverable"] and not first["wasRecovering"]
    client_id = page.js("() => T.clients.a.client.clientId")

    api.result("subscribe", {"user": "carol", "channel": api_channel})
    page.wait("([c]) => T.events('a', 'subscribed').some(e => e.channel === c)", [api_channel])
    positions = [api.publish(token_channel, {"t": 1}), api.publish(api_channel, {"a": 1})]
    page.wait("() => T.count('a', 'publication') === 2")
    pubs = page.events("a", "publication")
    assert [(p["channel"], p["data"], p["offset"]) for p in pubs] == [
        (token_channel, {"t": 1}, positions[0]["offset"]), (api_channel, {"a": 1}, positions[1]["offset"])]

    api.result("disconnect", {"client": client_id, "disconnect": {"code": 3011, "reason": "force reconnect"}})
    page.wait("() => T.count('a', 'connected') === 2 && T.count('a', 'subscribed') === 3")
    connect = [cmd["connect"] for cmd in page.sent() if "connect" in cmd][-1]
    assert connect["subs"] == {  # the positions of every recoverable server-side subscription
        channel: {"recover": True, "offset": pos["offset"], "epoch": pos["epoch"]}
        for channel, pos in zip([token_channel, api_channel], positions, strict=True)}
    again = page.events("a", "subscribed")[-1]
    assert again["channel"] == token_channel and again["wasRecovering"] and again["recovered"]
    # the API subscription belonged to the old connection only: the server didn't renew it
    assert {"channel": api_channel} in page.events("a", "unsubscribed")
    assert page.events("a", "subscribing") == [{"channel": token_channel}, {"channel": api_channel}]


def test_subscription_errors_and_unsubscribe_push(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("carol"))
    page.sub("a", channel)
    page.sub("a", "nope:x")  # unknown namespace: error 102 is final
    page.js("() => T.clients.a.subs['nope:x'].sub.subscribe()")
    client_id = page.connect_and_subscribe("a", channel)
    page.wait("() => T.count('a', 'unsubscribed', 'nope:x') === 1")
    assert page.events("a", "unsubscribed", "nope:x") == [{"channel": "nope:x", "code": 102,
                                                           "reason": "unknown channel"}]
    assert page.js("() => T.settle(T.clients.a.subs['nope:x'].sub.ready())")["err"]["code"] == 7

    gust.api().result("unsubscribe", {"user": "carol", "channel": channel, "client": client_id})
    page.wait("([c]) => T.count('a', 'unsubscribed', c) === 1", [channel])
    assert page.events("a", "unsubscribed", channel) == [{"channel": channel, "code": 2000,
                                                          "reason": "server unsubscribe"}]
    assert page.js("([c]) => T.clients.a.subs[c].sub.state", [channel]) == "unsubscribed"
    assert page.js("() => T.clients.a.client.state") == "connected"


def test_token_refresh_keeps_connection_and_subscription(gust: procs.GustProcess, context: Any) -> None:
    """Tokens of 2 s: the server would close 2 s after expiry (expired_close_delay) without a refresh."""
    channel = new_channel("private")
    page = Page(context, gust)
    page.client("a", token=token("dave", ttl=2), getToken={"sub": "dave", "ttl": 2})
    page.sub("a", channel, token=mint({"sub": "dave", "ttl": 2, "channel": channel}),
             getToken={"sub": "dave", "ttl": 2})
    client_id = page.connect_and_subscribe("a", channel)
    # past both first tokens' deadlines (2 s + 2 s grace) with a margin, and refreshed at least twice each
    page.wait("""([c]) => {
        const rec = T.clients.a, sub = rec.subs[c];
        return Date.now() - rec.log[0].at > 5500 && rec.tokenCalls >= 2 && sub.tokenCalls >= 2;
    }""", [channel], timeout=20_000)
    sent = page.sent()
    assert sum("refresh" in cmd for cmd in sent) >= 2
    assert sum("sub_refresh" in cmd for cmd in sent) >= 2
    assert page.js("() => T.clients.a.client.clientId") == client_id
    assert [e["code"] for e in page.events("a", "connecting")] == [0]
    assert page.events("a", "error") == []
    assert page.events("a", "error", channel) == []
    assert len(page.events("a", "subscribed", channel)) == 1
    assert page.js("([c]) => T.clients.a.subs[c].sub.state", [channel]) == "subscribed"


def test_expired_connect_token_gets_a_new_one(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("erin", ttl=-60), getToken={"sub": "erin", "ttl": 3600})
    page.sub("a", channel)  # its subscribe shares the frame of the refused connect
    page.connect_and_subscribe("a", channel)
    (error,) = page.events("a", "error")
    assert error["type"] == "connect" and error["error"]["code"] == 109
    assert page.js("() => T.clients.a.tokenCalls") == 1
    assert page.js("() => T.frames.sockets") == 2
    tokens = [cmd["connect"]["token"] for cmd in page.sent() if "connect" in cmd]
    assert len(tokens) == 2 and jwt.decode(tokens[1], procs.SECRET, algorithms=["HS256"])["sub"] == "erin"


def test_failing_get_token_is_retried(gust: procs.GustProcess, context: Any) -> None:
    page = Page(context, gust)
    page.client("a", getToken={"sub": "erin", "failures": 2}, minReconnectDelay=100, maxReconnectDelay=200)
    page.js("() => T.clients.a.client.connect()")
    page.wait("() => T.count('a', 'connected') === 1")
    errors = page.events("a", "error")
    assert [e["type"] for e in errors] == ["connectToken", "connectToken"]
    assert errors[0]["error"]["code"] == 5 and "token backend down" in errors[0]["error"]["message"]
    assert page.js("() => [T.clients.a.tokenCalls, T.frames.sockets]") == [3, 1]


def test_empty_token_from_get_token_is_unauthorized(gust: procs.GustProcess, context: Any) -> None:
    page = Page(context, gust)
    page.client("a", token=token("erin", ttl=-60), getToken={"empty": True})
    page.js("() => T.clients.a.client.connect()")
    page.wait("() => T.count('a', 'disconnected') === 1")
    assert page.events("a", "disconnected") == [{"code": 3500, "reason": "unauthorized"}]
    assert page.js("() => T.clients.a.client.state") == "disconnected"
    assert page.js("() => T.settle(T.clients.a.client.ready())")["err"]["code"] == 3


def test_expired_subscription_token_gets_a_new_one(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel("private")
    page = Page(context, gust)
    page.client("a", token=token("frank"))
    page.sub("a", channel, token=mint({"sub": "frank", "ttl": -60, "channel": channel}),
             getToken={"sub": "frank", "ttl": 3600})
    page.connect_and_subscribe("a", channel)
    (error,) = page.events("a", "error", channel)
    assert error["type"] == "subscribe" and error["error"]["code"] == 109
    assert page.js("([c]) => T.clients.a.subs[c].tokenCalls", [channel]) == 1
    assert [e["code"] for e in page.events("a", "subscribing", channel)] == [0]


def test_reconnect_recovers_missed_publications(gust: procs.GustProcess, context: Any) -> None:
    """Server API disconnect with a reconnect code while a proxy refuses new connections: everything published
    meanwhile arrives after the reconnect through recovery, each publication once and in order."""
    channel = new_channel("recover")
    api = gust.api()
    proxy = ThreadedProxy(gust.port)
    try:
        page = Page(context, gust)
        url = f"ws://127.0.0.1:{proxy.port}/connection/websocket"
        page.client("a", url, token=token("grace"), minReconnectDelay=100, maxReconnectDelay=400)
        page.sub("a", channel)
        client_id = page.connect_and_subscribe("a", channel)
        before = [api.publish(channel, {"n": n}) for n in range(3)]
        page.wait("([c]) => T.clients.a.subs[c].pubs.length === 3", [channel])

        proxy.set_open(False)
        api.result("disconnect", {"client": client_id, "disconnect": {"code": 3333, "reason": "go away for a bit"}})
        page.wait("() => T.count('a', 'connecting') === 2")
        assert page.events("a", "connecting")[-1] == {"code": 3333, "reason": "go away for a bit"}
        assert page.events("a", "subscribing", channel)[-1] == {"channel": channel, "code": 1,
                                                                "reason": "transport closed"}
        page.wait("() => T.frames.sockets >= 3")  # attempts refused by the proxy: the client keeps trying
        missed = [api.publish(channel, {"n": n}) for n in range(3, 8)]
        proxy.set_open(True)

        page.wait("([c]) => T.count('a', 'subscribed', c) === 2 && T.clients.a.subs[c].pubs.length >= 8",
                  [channel])
        last = api.publish(channel, {"n": 8})
        page.wait("([c]) => T.clients.a.subs[c].pubs.length >= 9", [channel])

        pubs = page.pubs("a", channel)
        assert [p["data"]["n"] for p in pubs] == list(range(9))
        assert [p["offset"] for p in pubs] == [p["offset"] for p in [*before, *missed, last]]
        resubscribed = page.events("a", "subscribed", channel)[-1]
        assert resubscribed["wasRecovering"] and resubscribed["recovered"]
        subscribes = [cmd["subscribe"] for cmd in page.sent() if "subscribe" in cmd]
        assert "recover" not in subscribes[0] and subscribes[0]["recoverable"] and subscribes[0]["positioned"]
        assert subscribes[-1]["recover"] is True
        assert subscribes[-1]["offset"] == before[-1]["offset"] and subscribes[-1]["epoch"] == before[-1]["epoch"]
        assert page.js("() => T.clients.a.client.clientId") not in (None, client_id)
        assert page.js("() => T.clients.a.client.state") == "connected"
    finally:
        proxy.close()


def test_recovery_while_publishing(gust: procs.GustProcess, context: Any) -> None:
    """Publications keep coming while the client is made to reconnect three times: recovery and live delivery
    together give every publication exactly once, in order."""
    channel = new_channel("race")
    page = Page(context, gust)
    page.client("a", token=token("zed"), minReconnectDelay=100, maxReconnectDelay=200)
    page.sub("a", channel)
    page.connect_and_subscribe("a", channel)
    stop = threading.Event()
    published: list[int] = []

    def publish_until_stopped() -> None:
        api = gust.api()
        while not stop.is_set():
            published.append(api.publish(channel, {"i": len(published)})["offset"])

    publisher = threading.Thread(target=publish_until_stopped)
    publisher.start()
    api = gust.api()
    try:
        for reconnects in range(1, 4):
            page.wait(f"([c]) => T.clients.a.subs[c].pubs.length >= {50 * reconnects}", [channel])
            client_id = page.js("() => T.clients.a.client.clientId")
            api.result("disconnect", {"client": client_id, "disconnect": {"code": 3011, "reason": "again"}})
            page.wait(f"() => T.count('a', 'connected') === {reconnects + 1}")
    finally:
        stop.set()
        publisher.join(10)
    page.wait(f"([c]) => T.clients.a.subs[c].pubs.length >= {len(published)}", [channel])
    pubs = page.pubs("a", channel)
    assert [p["offset"] for p in pubs] == published == list(range(1, len(published) + 1))
    assert [p["data"]["i"] for p in pubs] == list(range(len(published)))
    assert all(s["recovered"] for s in page.events("a", "subscribed", channel)[1:])


@pytest.mark.parametrize(("code", "reconnects"), [(3501, False), (4501, False), (4001, True)])
def test_disconnect_codes(gust: procs.GustProcess, context: Any, code: int, reconnects: bool) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("heidi"), minReconnectDelay=100, maxReconnectDelay=200)
    page.sub("a", channel)
    client_id = page.connect_and_subscribe("a", channel)
    gust.api().result("disconnect", {"client": client_id, "disconnect": {"code": code, "reason": "bye"}})
    if reconnects:
        page.wait("([c]) => T.count('a', 'connected') === 2 && T.count('a', 'subscribed', c) === 2", [channel])
        assert page.events("a", "connecting")[-1] == {"code": code, "reason": "bye"}
        assert page.js("() => T.clients.a.client.clientId") != client_id
        return
    page.wait("() => T.count('a', 'disconnected') === 1")
    assert page.events("a", "disconnected") == [{"code": code, "reason": "bye"}]
    assert page.js("() => T.clients.a.client.state") == "disconnected"
    page.page.wait_for_timeout(800)  # several reconnect delays: still no new socket
    assert page.js("() => T.frames.sockets") == 1
    assert page.js("() => T.clients.a.client.state") == "disconnected"
    assert page.js("() => T.settle(T.clients.a.client.ready(100))")["err"]["code"] == 3


def test_server_pings_are_answered(gust: procs.GustProcess, context: Any) -> None:
    """client.ping_interval 1 s with a 0.5 s pong timeout: a client that didn't pong would be closed (3012)."""
    page = Page(context, gust)
    page.client("a", token=token("ivan"))
    page.js("() => T.clients.a.client.connect()")
    page.wait("() => T.count('a', 'connected') === 1")
    client_id = page.js("() => T.clients.a.client.clientId")
    page.wait("() => ['in', 'out'].every(way => T.frames[way].filter(f => f === '{}').length >= 3)")
    assert page.js("() => T.clients.a.client.clientId") == client_id
    assert [e["code"] for e in page.events("a", "connecting")] == [0]
    assert page.js("() => T.frames.sockets") == 1


def test_silent_server_triggers_reconnect(gust: procs.GustProcess, context: Any) -> None:
    """The server stops (SIGSTOP): no pings, so after ping + maxServerPingDelay the client gives up the socket
    (code 2 "no ping") and, once the server runs again, reconnects and resubscribes."""
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("judy"), maxServerPingDelay=700, timeout=2000, minReconnectDelay=100,
                maxReconnectDelay=300)
    page.sub("a", channel)
    client_id = page.connect_and_subscribe("a", channel)
    os.kill(gust.pid, signal.SIGSTOP)
    try:
        page.wait("() => T.count('a', 'connecting') === 2", timeout=8000)
    finally:
        os.kill(gust.pid, signal.SIGCONT)
    assert page.events("a", "connecting")[-1] == {"code": 2, "reason": "no ping"}
    page.wait("([c]) => T.count('a', 'connected') === 2 && T.count('a', 'subscribed', c) === 2", [channel],
              timeout=15_000)
    assert page.js("() => T.clients.a.client.clientId") != client_id


def test_command_timeout_rejects_and_reconnects(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("judy"), timeout=700, minReconnectDelay=100, maxReconnectDelay=300)
    page.sub("a", channel)
    client_id = page.connect_and_subscribe("a", channel)
    os.kill(gust.pid, signal.SIGSTOP)
    try:
        outcome = page.js("([c]) => T.settle(T.clients.a.client.publish(c, {lost: true}))", [channel])
        state = page.js("() => T.clients.a.client.state")
    finally:
        os.kill(gust.pid, signal.SIGCONT)
    assert outcome == {"err": {"code": 1, "message": "timeout"}}
    assert state == "connecting"
    assert page.events("a", "connecting")[-1] == {"code": 1, "reason": "publish timeout"}
    page.wait("([c]) => T.count('a', 'connected') === 2 && T.count('a', 'subscribed', c) === 2", [channel],
              timeout=15_000)
    assert page.js("() => T.clients.a.client.clientId") != client_id


def test_coalesced_frames(gust: procs.GustProcess, context: Any) -> None:
    """A burst of publishes: the server joins replies and pushes into newline-separated frames."""
    channel = new_channel("burst")
    n = 60
    page = Page(context, gust)
    page.client("a", token=token("kim"))
    page.sub("a", channel)
    page.connect_and_subscribe("a", channel)
    results = page.js("""async ([c, n]) => {
        const sub = T.clients.a.subs[c].sub;
        return Promise.all(Array.from({length: n}, (_, i) => T.settle(sub.publish({i}))));
    }""", [channel, n])
    assert results == [{"ok": {}}] * n
    page.wait("([c, n]) => T.clients.a.subs[c].pubs.length >= n", [channel, n])
    pubs = page.pubs("a", channel)
    assert [p["data"]["i"] for p in pubs] == list(range(n))
    assert [p["offset"] for p in pubs] == list(range(pubs[0]["offset"], pubs[0]["offset"] + n))
    multi = page.js("() => T.frames.in.filter(f => f.includes('\\n')).map(f => f.split('\\n').length)")
    assert multi and max(multi) > 2, "expected frames carrying several replies/pushes"


def test_pushes_injected_into_a_live_connection(gust: procs.GustProcess, context: Any) -> None:
    """Pushes Gust never sends over WebSocket (`message`, `disconnect`) and a frame with a blank line, injected
    with Playwright's WebSocket routing into a real connection whose other frames pass through unchanged."""
    routes: list[Any] = []

    def route(ws: Any) -> None:
        ws.connect_to_server()
        routes.append(ws)

    page = Page(context, gust)
    page.page.route_web_socket(re.compile(r"/connection/websocket$"), route)
    page.client("a", token=token("mallory"), minReconnectDelay=100, maxReconnectDelay=200)
    page.js("() => T.clients.a.client.connect()")
    page.wait("() => T.count('a', 'connected') === 1")
    routes[0].send('{"push":{"message":{"data":{"n":1}}}}\n\n{"push":{"message":{"data":{"n":2}}}}\n')
    page.wait("() => T.count('a', 'message') === 2")
    assert page.events("a", "message") == [{"data": {"n": 1}}, {"data": {"n": 2}}]

    routes[0].send('{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}')
    page.wait("() => T.count('a', 'connected') === 2")
    assert page.events("a", "connecting")[-1] == {"code": 3001, "reason": "shutdown"}
    routes[-1].send('{"push":{"disconnect":{"code":4503,"reason":"go away"}}}')
    page.wait("() => T.count('a', 'disconnected') === 1")
    assert page.events("a", "disconnected") == [{"code": 4503, "reason": "go away"}]
    assert len(routes) == 2 and page.js("() => T.clients.a.client.state") == "disconnected"


def test_listener_exceptions_do_not_break_dispatch(gust: procs.GustProcess, context: Any) -> None:
    channel = new_channel()
    page = Page(context, gust)
    page.client("a", token=token("leo"))
    page.sub("a", channel)
    page.js("""([c]) => {
        const { client, subs } = T.clients.a;
        client.on("connected", () => { throw new Error("boom in connected"); });
        subs[c].sub.on("publication", () => { throw new Error("boom in publication"); });
        const seen = [];
        subs[c].sub.once("publication", (ctx) => seen.push(ctx.data));
        window.seenOnce = seen;
    }""", [channel])
    page.connect_and_subscribe("a", channel)
    api = gust.api()
    api.publish(channel, {"k": 1})
    api.publish(channel, {"k": 2})
    page.wait("([c]) => T.clients.a.subs[c].pubs.length === 2", [channel])
    assert page.js("() => window.seenOnce") == [{"k": 1}]
    assert any("boom in publication" in line for line in page.console)
    assert page.js("() => T.clients.a.client.state") == "connected"


def test_module_is_dependency_free() -> None:
    source = (Path(__file__).resolve().parents[1] / "static" / "gust.js").read_text()
    assert "import " not in source.split("*/", 1)[1], "gust.js must not import anything"
    assert "export class Client" in source and "export class Subscription" in source
