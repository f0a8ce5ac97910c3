"""Every bad input gets its documented code over a real socket, and a healthy client beside it keeps receiving."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest

from .conftest import SECRET
from .wsclient import RawClient

ClientFactory = Callable[..., Awaitable[RawClient]]


def token(sub: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


async def healthy(client_factory: ClientFactory) -> RawClient:
    control = await client_factory()
    await control.connect()
    reply = await control.command("subscribe", {"channel": "chat:control"})
    assert "subscribe" in reply
    return control


async def assert_still_served(control: RawClient, text: str = "still here") -> None:
    reply = await control.command("publish", {"channel": "chat:control", "data": {"text": text}})
    assert reply == {"id": reply["id"], "publish": {}}
    push = await control.push("pub")
    assert push["pub"]["data"] == {"text": text}


async def closed_with(client: RawClient, code: int) -> None:
    closed = await client.closed()
    assert closed.code == code, (closed.code, closed.reason)


# --- close codes ----------------------------------------------------------------------------------------------

CLOSE_CASES: list[tuple[str, list[str], int]] = [
    ("malformed json", ['{"id":1,"connect":{}'], 3501),
    ("truncated json", ['{"id":1,"connect":{"token":"abc'], 3501),
    ("empty object with an id only", ['{"id":1,"connect":{}}', '{"id":7}'], 3501),
    ("id as a string", ['{"id":"1","connect":{}}'], 3501),
    ("negative id", ['{"id":-1,"connect":{}}'], 3501),
    ("id beyond uint32", ['{"id":4294967296,"connect":{}}'], 3501),
    ("fractional id", ['{"id":1.5,"connect":{}}'], 3501),
    ("null request", ['{"id":1,"connect":{}}', '{"id":2,"history":null}'], 3501),
    ("json array", ["[1,2,3]"], 3501),
    ("json scalar", ["42"], 3501),
    ("command before connect", ['{"id":1,"subscribe":{"channel":"chat:a"}}'], 3501),
    ("id-less command", ['{"connect":{}}'], 3501),
    ("unknown command", ['{"id":1,"connect":{}}', '{"id":2,"dance":{}}'], 3501),
    ("second connect", ['{"id":1,"connect":{}}', '{"id":2,"connect":{}}'], 3501),
    ("stray pong", ['{"id":1,"connect":{}}', "{}"], 3501),
    ("invalid token", ['{"id":1,"connect":{"token":"not.a.jwt"}}'], 3500),
    ("token signed with another key", [
        '{"id":1,"connect":{"token":"' + jwt.encode({"sub": "x"}, "other-key-other-key-other-key-32", "HS256") + '"}}'
    ], 3500),
    ("send without handler", ['{"id":1,"connect":{}}', '{"send":{"data":{}}}'], 3508),
    ("subscribe with empty channel", ['{"id":1,"connect":{}}', '{"id":2,"subscribe":{"channel":""}}'], 3501),
    ("refresh with invalid token", ['{"id":1,"connect":{}}', '{"id":2,"refresh":{"token":"bad"}}'], 3500),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "frames", "code"), CLOSE_CASES, ids=[c[0] for c in CLOSE_CASES])
async def test_protocol_violation_closes_with_code(client_factory, case: str, frames: list[str], code: int) -> None:
    control = await healthy(client_factory)
    victim = await client_factory()
    for frame in frames:
        await victim.send_raw(frame)
    await closed_with(victim, code)
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_violation_in_a_batch_still_answers_earlier_commands(client_factory) -> None:
    victim = await client_factory()
    await victim.send_raw('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:b"}}\nnot json')
    assert "connect" in await victim.reply(1)
    assert "subscribe" in await victim.reply(2)
    await closed_with(victim, 3501)


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"client": {"allow_anonymous_connect_without_token": False}}])
async def test_connect_without_credentials_is_refused_when_anonymous_is_off(client_factory, config_overrides) -> None:
    victim = await client_factory()
    await victim.send_raw('{"id":1,"connect":{}}')
    await closed_with(victim, 3501)


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize("config_overrides", [{"client": {"stale_close_delay": "300ms"}}])
async def test_no_connect_in_time_is_stale(client_factory, config_overrides) -> None:
    control = await healthy(client_factory)
    victim = await client_factory()
    await closed_with(victim, 3502)
    await assert_still_served(control)


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize("config_overrides", [{"client": {"ping_interval": "1s", "pong_timeout": "300ms"}}])
async def test_no_pong_closes_3012_and_pong_keeps_connection(client_factory, config_overrides) -> None:
    victim = await client_factory()
    reply = await victim.connect()
    assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
    # A client that answers pings stays; one that does not is closed with 3012.
    good = await client_factory()
    await good.connect()
    for _ in range(2):
        assert await good.recv(timeout=3) == {}
        await good.send_raw("{}")
    await closed_with(victim, 3012)
    assert await _subscribe(good, "chat:control")
    await assert_still_served(good)


async def _subscribe(client: RawClient, channel: str) -> bool:
    return "subscribe" in await client.command("subscribe", {"channel": channel})


@pytest.mark.gen_test
async def test_oversized_frame_closes_1009(client_factory) -> None:
    control = await healthy(client_factory)
    victim = await client_factory()
    await victim.connect()
    big = '{"id":2,"publish":{"channel":"chat:control","data":"%s"}}' % ("x" * 70000)
    await victim.send_raw(big)
    await closed_with(victim, 1009)
    await assert_still_served(control)


# --- error replies -------------------------------------------------------------------------------------------

REPLY_CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("unknown namespace", "subscribe", {"channel": "nope:1"}, 102),
    ("channel too long", "subscribe", {"channel": "chat:" + "x" * 251}, 107),
    ("non-ascii channel", "subscribe", {"channel": "chat:ünï"}, 107),
    ("wrong type", "subscribe", {"channel": 5}, 107),
    ("params not an object", "publish", [1], 107),  # type: ignore[list-item]
    ("subscribe not allowed", "subscribe", {"channel": "plain"}, 103),
    ("private channel without token", "subscribe", {"channel": "$chat:secret"}, 103),
    ("publish without data", "publish", {"channel": "chat:a"}, 107),
    ("publish not allowed", "publish", {"channel": "plain", "data": {}}, 103),
    ("publish to unknown namespace", "publish", {"channel": "nope:1", "data": {}}, 102),
    ("history not enabled", "history", {"channel": "plain"}, 108),
    ("presence not enabled", "presence", {"channel": "plain"}, 108),
    ("presence_stats not enabled", "presence_stats", {"channel": "plain"}, 108),
    ("history from another epoch", "history", {"channel": "chat:h", "since": {"offset": 1, "epoch": "zz"}}, 112),
    ("reverse history from offset 0", "history", {"channel": "chat:h", "since": {"offset": 0}, "reverse": True}, 107),
    ("history with wrong limit type", "history", {"channel": "chat:h", "limit": "10"}, 107),
    ("rpc without handler", "rpc", {"method": "x", "data": {}}, 108),
    ("sub_refresh when not subscribed", "sub_refresh", {"channel": "chat:a", "token": "t"}, 103),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "method", "params", "code"), REPLY_CASES, ids=[c[0] for c in REPLY_CASES])
async def test_bad_request_gets_error_reply(client_factory, case: str, method: str, params: Any, code: int) -> None:
    control = await healthy(client_factory)
    client = await client_factory()
    await client.connect()
    reply = await client.command(method, params)
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    # the connection survives an error reply
    assert "presence_stats" in await client.command("presence_stats", {"channel": "chat:a"})
    await assert_still_served(control)


# A wrong JSON type in any field a handler reads: error 107, the connection stays (Centrifuge's "bad request").
WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("subscribe", {"channel": "chat:w", "token": 1}),
    ("subscribe", {"channel": "chat:w", "recover": "yes"}),
    ("subscribe", {"channel": "chat:w", "offset": "1"}),
    ("subscribe", {"channel": "chat:w", "epoch": 1}),
    ("subscribe", {"channel": "chat:w", "positioned": 1}),
    ("subscribe", {"channel": "chat:w", "recoverable": []}),
    ("subscribe", {"channel": "chat:w", "join_leave": {}}),
    ("subscribe", {"channel": ["chat:w"]}),
    ("unsubscribe", {"channel": 1}),
    ("publish", {"channel": {"a": 1}, "data": {}}),
    ("presence", {"channel": True}),
    ("presence_stats", {"channel": 1.5}),
    ("history", {"channel": "chat:w", "limit": 1.5}),
    ("history", {"channel": "chat:w", "since": "1"}),
    ("history", {"channel": "chat:w", "since": {"offset": "1"}}),
    ("history", {"channel": "chat:w", "since": {"offset": 1, "epoch": 5}}),
    ("history", {"channel": "chat:w", "reverse": "true"}),
    ("refresh", {"token": 5}),
    ("sub_refresh", {"channel": 5, "token": "t"}),
    ("subscribe", "chat:w"),  # type: ignore[list-item]
    ("history", [1]),  # type: ignore[list-item]
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "params"), WRONG_TYPES, ids=[f"{m}-{p}" for m, p in WRONG_TYPES])
async def test_wrong_type_in_any_field_is_107(client_factory, method: str, params: Any) -> None:
    control = await healthy(client_factory)
    client = await client_factory()
    await client.connect()
    cmd_id = client.next_id()
    await client.send_raw(orjson.dumps({"id": cmd_id, method: params}))
    reply = await client.reply(cmd_id)
    assert reply["error"]["code"] == 107, reply
    assert "presence_stats" in await client.command("presence_stats", {"channel": "chat:control"})
    await assert_still_served(control)


@pytest.mark.gen_test
async def test_connect_with_a_wrong_token_type_is_107(client_factory) -> None:
    client = await client_factory()
    reply = await client.command("connect", {"token": 12})
    assert reply["error"]["code"] == 107
    assert "connect" in await client.command("connect", {})


@pytest.mark.gen_test
async def test_already_subscribed_is_105(client_factory) -> None:
    client = await client_factory()
    await client.connect()
    assert "subscribe" in await client.command("subscribe", {"channel": "chat:dup"})
    reply = await client.command("subscribe", {"channel": "chat:dup"})
    assert reply["error"] == {"code": 105, "message": "already subscribed"}


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"client": {"channel_limit": 2}}])
async def test_channel_limit_is_106(client_factory, config_overrides) -> None:
    client = await client_factory()
    await client.connect()
    assert await _subscribe(client, "chat:1") and await _subscribe(client, "chat:2")
    reply = await client.command("subscribe", {"channel": "chat:3"})
    assert reply["error"]["code"] == 106
    await client.command("unsubscribe", {"channel": "chat:1"})
    assert await _subscribe(client, "chat:3")


@pytest.mark.gen_test
async def test_expired_connection_token_is_109(client_factory) -> None:
    client = await client_factory()
    reply = await client.command("connect", {"token": token(exp=int(time.time()) - 10)})
    assert reply["error"]["code"] == 109
    ok = await client.command("connect", {"token": token(exp=int(time.time()) + 3600)})
    assert ok["connect"]["expires"] is True and 3500 < ok["connect"]["ttl"] <= 3600


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "config_overrides",
    [{"channel": {"namespaces": [{"name": "rx", "channel_regex": "^[a-z]+$", "allow_subscribe_for_client": True,
                                  "allow_subscribe_for_anonymous": True}]}}],
)
async def test_channel_regex_mismatch_is_107(client_factory, config_overrides) -> None:
    client = await client_factory()
    await client.connect()
    assert await _subscribe(client, "rx:lobby")
    reply = await client.command("subscribe", {"channel": "rx:Lobby1"})
    assert reply["error"]["code"] == 107


# --- origins ------------------------------------------------------------------------------------------------


async def _upgrade_status(ws_url: str, origin: str | None) -> int:
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Origin": origin} if origin else {}
    try:
        conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    return 101


@pytest.mark.gen_test
async def test_origin_defaults_to_same_host(ws_url: str, http_port: int) -> None:
    assert await _upgrade_status(ws_url, None) == 101
    assert await _upgrade_status(ws_url, f"http://127.0.0.1:{http_port}") == 101
    assert await _upgrade_status(ws_url, "https://evil.example") == 403


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"client": {"allowed_origins": ["https://*.example.com"]}}])
async def test_allowed_origins_are_glob_patterns(ws_url: str, config_overrides) -> None:
    assert await _upgrade_status(ws_url, "https://chat.example.com") == 101
    assert await _upgrade_status(ws_url, "https://example.org") == 403
    assert await _upgrade_status(ws_url, None) == 101
