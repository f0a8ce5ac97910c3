"""The Centrifugo-compatible server HTTP API (`POST /api/<method>`) over raw HTTP against a real Gust server.

Checks the transport (auth, status codes, envelopes, error mode) and every method's result shape and effect on
real WebSocket connections (pushes, close codes, presence, history).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from .conftest import SECRET
from .wsclient import RawClient

ClientFactory = Callable[..., Awaitable[RawClient]]

KEY = "apikey-123"
API_CONFIG: dict[str, Any] = {"http_api": {"key": KEY}}
NO_KEY = object()


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Every test in this module runs with an API key unless it parametrizes `config_overrides` itself."""
    return API_CONFIG


# --- helpers -------------------------------------------------------------------------------------------------


def unique_channel(prefix: str = "chat:") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def unique_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def user_token(user: str, info: Any = None) -> str:
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 3600}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def post(
    base_url: str,
    method: str,
    body: Any = None,
    *,
    raw: bytes | str | None = None,
    key: Any = KEY,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> HTTPResponse:
    """POST /api/<method>; `key` goes into X-API-Key unless it is NO_KEY; never raises on HTTP errors."""
    hdrs = {"Content-Type": "application/json"}
    if key is not NO_KEY:
        hdrs["X-API-Key"] = str(key)
    hdrs.update(headers or {})
    payload = raw if raw is not None else orjson.dumps({} if body is None else body)
    return await AsyncHTTPClient().fetch(
        f"{base_url}/api/{method}{query}", method="POST", body=payload, headers=hdrs,
        raise_error=False, request_timeout=10,
    )


def decode(resp: HTTPResponse) -> Any:
    assert resp.body, (resp.code, resp.body)
    return orjson.loads(resp.body)


async def call(base_url: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A successful call: HTTP 200 and `{"result": {...}}`; returns the result."""
    resp = await post(base_url, method, params or {})
    assert resp.code == 200, (resp.code, resp.body)
    body = decode(resp)
    assert "error" not in body, body
    assert isinstance(body.get("result"), dict), body
    return body["result"]  # type: ignore[no-any-return]


async def call_error(base_url: str, method: str, params: Any, code: int) -> dict[str, Any]:
    """A failing call in the default error mode: HTTP 200 and `{"error": {"code", "message"}}`."""
    resp = await post(base_url, method, params)
    assert resp.code == 200, (resp.code, resp.body)
    body = decode(resp)
    assert "result" not in body, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return error  # type: ignore[no-any-return]


async def connect_user(client_factory: ClientFactory, user: str, info: Any = None) -> tuple[RawClient, str]:
    client = await client_factory()
    reply = await client.connect(token=user_token(user, info))
    client_id = reply["connect"]["client"]
    assert client_id
    return client, client_id


async def subscriber(client_factory: ClientFactory, channel: str, user: str | None = None) -> tuple[RawClient, str]:
    """A connected client (anonymous unless `user`) subscribed to `channel` by its own command."""
    if user is None:
        client = await client_factory()
        client_id = (await client.connect())["connect"]["client"]
    else:
        client, client_id = await connect_user(client_factory, user)
    reply = await client.command("subscribe", {"channel": channel})
    assert "subscribe" in reply, reply
    return client, client_id


async def barrier(client: RawClient) -> list[dict[str, Any]]:
    """A command round trip: every push the server wrote before it has arrived. Returns the pushes queued so far
    (without consuming them)."""
    await client.command("presence_stats", {"channel": "chat:barrier"})
    return [m["push"] for m in client.messages if "push" in m]


async def alive(client: RawClient) -> None:
    reply = await client.command("presence_stats", {"channel": "chat:barrier"})
    assert "presence_stats" in reply or "error" in reply, reply


# --- auth ----------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_key_in_x_api_key_header(base_url: str) -> None:
    assert "nodes" in await call(base_url, "info")


@pytest.mark.gen_test
async def test_key_in_authorization_apikey_header(base_url: str) -> None:
    resp = await post(base_url, "info", {}, key=NO_KEY, headers={"Authorization": f"apikey {KEY}"})
    assert resp.code == 200, (resp.code, resp.body)
    assert "nodes" in decode(resp)["result"]


AUTH_FAILURES: list[tuple[str, Any, dict[str, str], str]] = [
    ("no key", NO_KEY, {}, ""),
    ("wrong x-api-key", "apikey-124", {}, ""),
    ("empty x-api-key", "", {}, ""),
    ("key prefix only", KEY[:-1], {}, ""),
    ("wrong authorization apikey", NO_KEY, {"Authorization": "apikey nope"}, ""),
    ("authorization bearer", NO_KEY, {"Authorization": f"Bearer {KEY}"}, ""),
    ("bare authorization", NO_KEY, {"Authorization": KEY}, ""),
    ("key in query string only", NO_KEY, {}, f"?api_key={KEY}"),
    ("wrong header, right query", "nope", {}, f"?api_key={KEY}"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "key", "headers", "query"), AUTH_FAILURES, ids=[c[0] for c in AUTH_FAILURES])
async def test_unauthorized_is_401_with_empty_body(
    base_url: str, case: str, key: Any, headers: dict[str, str], query: str
) -> None:
    channel = unique_channel()
    resp = await post(base_url, "publish", {"channel": channel, "data": {"x": 1}}, key=key, headers=headers,
                      query=query)
    assert resp.code == 401, (case, resp.code, resp.body)
    assert resp.body == b"", (case, resp.body)
    # Nothing was published.
    history = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert history["publications"] == []


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{}], ids=["no key configured"])
async def test_no_key_configured_rejects_everything(base_url: str, config_overrides: dict[str, Any]) -> None:
    for key in (NO_KEY, "", KEY, "anything"):
        resp = await post(base_url, "info", {}, key=key)
        assert resp.code == 401, (key, resp.code, resp.body)
        assert resp.body == b""
    resp = await post(base_url, "info", {}, key=NO_KEY, headers={"Authorization": "apikey "})
    assert resp.code == 401
    assert resp.body == b""


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"http_api": {"insecure": True}}], ids=["insecure"])
async def test_insecure_mode_needs_no_key(
    base_url: str, client_factory: ClientFactory, config_overrides: dict[str, Any]
) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    resp = await post(base_url, "publish", {"channel": channel, "data": {"open": True}}, key=NO_KEY)
    assert resp.code == 200, (resp.code, resp.body)
    assert decode(resp)["result"]["offset"] == 1
    push = await client.push("pub")
    assert push["pub"]["data"] == {"open": True}


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"http_api": {"key": KEY, "insecure": True}}], ids=["insecure+key"])
async def test_insecure_mode_with_a_key_configured_ignores_the_key(
    base_url: str, config_overrides: dict[str, Any]
) -> None:
    for key in (NO_KEY, "wrong", KEY):
        resp = await post(base_url, "info", {}, key=key)
        assert resp.code == 200, (key, resp.code, resp.body)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(status_line.split()[1]), headers, body


REJECTIONS: list[tuple[str, dict[str, Any], str, int]] = [
    ("401 wrong key", API_CONFIG, "wrong", 10),
    ("413 too big", {"http_api": {"key": KEY, "max_body_size": 1024}}, KEY, 4096),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "config_overrides", "key", "size"), REJECTIONS, ids=[c[0] for c in REJECTIONS])
async def test_keep_alive_after_early_rejection(
    base_url: str, case: str, config_overrides: dict[str, Any], key: str, size: int
) -> None:
    """HTTP/1.1: a rejected request either leaves the connection usable or says `Connection: close` (pooling
    clients such as aiohttp, i.e. cent's AsyncClient, would otherwise send the next call into a dead socket)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = orjson.dumps({"channel": unique_channel(), "data": "x" * size})
        writer.write(
            f"POST /api/publish HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
            status, headers, _ = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AssertionError(f"{case}: the rejection could not be read: {exc!r}") from None
        assert status in (401, 413), (case, status)
        if headers.get("connection", "").lower() == "close":
            return
        writer.write(f"POST /api/info HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
                     f"Content-Length: 2\r\n\r\n{{}}".encode())
        await writer.drain()
        try:
            status, _, _ = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AssertionError(f"{case}: connection closed without `Connection: close`: {exc!r}") from None
        assert status == 200, (case, status)
    finally:
        writer.close()


# --- envelope and transport errors ---------------------------------------------------------------------------


BAD_BODIES: list[tuple[str, bytes]] = [
    ("not json", b"{not json"),
    ("truncated", b'{"channel": "chat:x"'),
    ("json array", b'[{"channel": "chat:x"}]'),
    ("json string", b'"hello"'),
    ("json number", b"42"),
    ("json null", b"null"),
    ("invalid utf-8", b'{"channel": "\xff\xfe"}'),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "raw"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_undecodable_body_is_400(base_url: str, case: str, raw: bytes) -> None:
    resp = await post(base_url, "publish", raw=raw)
    assert resp.code == 400, (case, resp.code, resp.body)


@pytest.mark.gen_test
async def test_unknown_method_is_404(base_url: str) -> None:
    for method in ("dance", "connections", "publish_all", "publish/extra"):
        resp = await post(base_url, method, {"channel": unique_channel(), "data": {}})
        assert resp.code == 404, (method, resp.code, resp.body)


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"http_api": {"key": KEY, "max_body_size": 1024}}], ids=["1KiB"])
async def test_body_over_max_body_size_is_413(base_url: str, config_overrides: dict[str, Any]) -> None:
    channel = unique_channel()
    small = orjson.dumps({"channel": channel, "data": {"text": "x" * 200}})
    assert len(small) < 1024
    resp = await post(base_url, "publish", raw=small)
    assert resp.code == 200, (resp.code, resp.body)

    big = orjson.dumps({"channel": channel, "data": {"text": "x" * 4096}})
    resp = await post(base_url, "publish", raw=big)
    assert resp.code == 413, (resp.code, resp.body)
    history = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert [p["data"]["text"] for p in history["publications"]] == ["x" * 200]


@pytest.mark.gen_test
async def test_default_max_body_size_accepts_half_a_megabyte(base_url: str) -> None:
    channel = unique_channel()
    text = "y" * (512 * 1024)
    result = await call(base_url, "publish", {"channel": channel, "data": {"text": text}})
    assert result["offset"] == 1


@pytest.mark.gen_test
async def test_default_max_body_size_rejects_two_megabytes(base_url: str) -> None:
    resp = await post(base_url, "publish", {"channel": unique_channel(), "data": {"text": "z" * (2 * 1024 * 1024)}})
    assert resp.code == 413, (resp.code, resp.body[:200])


WRONG_TYPES: list[tuple[str, str, dict[str, Any]]] = [
    ("publish channel number", "publish", {"channel": 5, "data": {}}),
    ("publish channel list", "publish", {"channel": ["chat:a"], "data": {}}),
    ("publish missing channel", "publish", {"data": {}}),
    ("publish tags not object", "publish", {"channel": "chat:t", "data": {}, "tags": ["a"]}),
    ("publish tags values not strings", "publish", {"channel": "chat:t", "data": {}, "tags": {"a": 1}}),
    ("publish skip_history string", "publish", {"channel": "chat:t", "data": {}, "skip_history": "yes"}),
    ("publish b64data not base64", "publish", {"channel": "chat:t", "b64data": "***not base64***"}),
    ("broadcast channels string", "broadcast", {"channels": "chat:a", "data": {}}),
    ("broadcast channels numbers", "broadcast", {"channels": [1, 2], "data": {}}),
    ("history limit string", "history", {"channel": "chat:h", "limit": "x"}),
    ("history reverse string", "history", {"channel": "chat:h", "limit": 1, "reverse": "true"}),
    ("history since not object", "history", {"channel": "chat:h", "limit": 1, "since": 3}),
    ("presence channel number", "presence", {"channel": 5}),
    ("presence_stats channel object", "presence_stats", {"channel": {}}),
    ("history_remove channel bool", "history_remove", {"channel": True}),
    ("subscribe user number", "subscribe", {"user": 5, "channel": "chat:s"}),
    ("unsubscribe channel number", "unsubscribe", {"user": "u", "channel": 5}),
    ("disconnect whitelist string", "disconnect", {"user": "u", "whitelist": "abc"}),
    ("disconnect code string", "disconnect", {"user": "u", "disconnect": {"code": "x", "reason": "r"}}),
    ("refresh expired string", "refresh", {"user": "u", "expired": "yes"}),
    ("refresh expire_at string", "refresh", {"user": "u", "expire_at": "soon"}),
    ("channels pattern number", "channels", {"pattern": 5}),
    ("batch commands object", "batch", {"commands": {"publish": {}}}),
    ("batch parallel string", "batch", {"commands": [], "parallel": "yes"}),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "method", "params"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
async def test_wrong_field_types_are_error_107(base_url: str, case: str, method: str, params: dict[str, Any]) -> None:
    await call_error(base_url, method, params, 107)


UNKNOWN_NAMESPACE: list[tuple[str, dict[str, Any]]] = [
    ("publish", {"channel": "nope:a", "data": {}}),
    ("history", {"channel": "nope:a", "limit": 10}),
    ("presence", {"channel": "nope:a"}),
    ("presence_stats", {"channel": "nope:a"}),
    ("history_remove", {"channel": "nope:a"}),
    ("subscribe", {"user": "u", "channel": "nope:a"}),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "params"), UNKNOWN_NAMESPACE, ids=[c[0] for c in UNKNOWN_NAMESPACE])
async def test_unknown_namespace_is_error_102(base_url: str, method: str, params: dict[str, Any]) -> None:
    await call_error(base_url, method, params, 102)


@pytest.mark.gen_test
async def test_history_and_presence_without_them_are_error_108(base_url: str) -> None:
    channel = unique_channel("plain-")  # no namespace: no history, no presence
    result = await call(base_url, "publish", {"channel": channel, "data": {"n": 1}})
    assert result.get("offset", 0) == 0
    await call_error(base_url, "history", {"channel": channel, "limit": 10}, 108)
    await call_error(base_url, "presence", {"channel": channel}, 108)
    await call_error(base_url, "presence_stats", {"channel": channel}, 108)


# --- X-Centrifugo-Error-Mode: transport ----------------------------------------------------------------------

TRANSPORT = {"X-Centrifugo-Error-Mode": "transport"}

ERROR_MODE_CASES: list[tuple[str, str, dict[str, Any], int, int]] = [
    ("unknown namespace", "publish", {"channel": "nope:x", "data": {}}, 102, 404),
    ("wrong type", "publish", {"channel": 5, "data": {}}, 107, 400),
    ("wrong limit type", "history", {"channel": "chat:h", "limit": "x"}, 107, 400),
    ("no history", "history", {"channel": "plain-x", "limit": 1}, 108, 400),
    ("no presence", "presence", {"channel": "plain-x"}, 108, 400),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("case", "method", "params", "code", "status"), ERROR_MODE_CASES,
                         ids=[c[0] for c in ERROR_MODE_CASES])
async def test_transport_error_mode_maps_codes_to_statuses(
    base_url: str, case: str, method: str, params: dict[str, Any], code: int, status: int
) -> None:
    resp = await post(base_url, method, params, headers=TRANSPORT)
    assert resp.code == status, (case, resp.code, resp.body)
    body = decode(resp)
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.gen_test
async def test_transport_error_mode_unrecoverable_position_is_416(base_url: str) -> None:
    channel = unique_channel()
    await call(base_url, "publish", {"channel": channel, "data": {"n": 1}})
    params = {"channel": channel, "limit": 10, "since": {"offset": 0, "epoch": "not-the-epoch"}}
    await call_error(base_url, "history", params, 112)
    resp = await post(base_url, "history", params, headers=TRANSPORT)
    assert resp.code == 416, (resp.code, resp.body)
    assert decode(resp)["code"] == 112


@pytest.mark.gen_test
async def test_transport_error_mode_success_keeps_the_result_envelope(base_url: str) -> None:
    channel = unique_channel()
    resp = await post(base_url, "publish", {"channel": channel, "data": {"n": 1}}, headers=TRANSPORT)
    assert resp.code == 200, (resp.code, resp.body)
    assert decode(resp)["result"]["offset"] == 1
    # Per-item errors inside a broadcast or a batch stay in the body.
    resp = await post(base_url, "broadcast", {"channels": [channel, "nope:x"], "data": {"n": 2}}, headers=TRANSPORT)
    assert resp.code == 200, (resp.code, resp.body)
    responses = decode(resp)["result"]["responses"]
    assert responses[0]["result"]["offset"] == 2
    assert responses[1]["error"]["code"] == 102


@pytest.mark.gen_test
async def test_transport_error_mode_keeps_401_and_400(base_url: str) -> None:
    resp = await post(base_url, "info", {}, key="wrong", headers=TRANSPORT)
    assert resp.code == 401
    assert resp.body == b""
    resp = await post(base_url, "info", raw=b"{nope", headers=TRANSPORT)
    assert resp.code == 400


@pytest.mark.gen_test
async def test_error_mode_header_with_another_value_keeps_the_200_envelope(base_url: str) -> None:
    resp = await post(base_url, "publish", {"channel": "nope:x", "data": {}}, headers={"X-Centrifugo-Error-Mode": "x"})
    assert resp.code == 200
    assert decode(resp)["error"]["code"] == 102


# --- publish -------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_publish_reaches_subscriber_and_history(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)

    first = await call(base_url, "publish", {"channel": channel, "data": {"text": "one"}, "tags": {"k": "v"}})
    assert first["offset"] == 1
    assert isinstance(first["epoch"], str) and first["epoch"]
    push = await client.push("pub")
    assert push["channel"] == channel
    assert push["pub"]["data"] == {"text": "one"}
    assert push["pub"]["offset"] == 1
    assert push["pub"]["tags"] == {"k": "v"}
    assert "info" not in push["pub"]  # no publisher client context over the server API

    second = await call(base_url, "publish", {"channel": channel, "data": ["two", 2]})
    assert second == {"offset": 2, "epoch": first["epoch"]}
    push = await client.push("pub")
    assert push["pub"]["data"] == ["two", 2]
    assert push["pub"]["offset"] == 2

    history = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert [p["data"] for p in history["publications"]] == [{"text": "one"}, ["two", 2]]
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert history["publications"][0]["tags"] == {"k": "v"}
    assert history["offset"] == 2
    assert history["epoch"] == first["epoch"]


@pytest.mark.gen_test
async def test_publish_scalar_and_empty_data(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    values: list[Any] = ["text", 42, True, [], {}]
    for data in values:
        await call(base_url, "publish", {"channel": channel, "data": data})
        push = await client.push("pub")
        assert push["pub"]["data"] == data


@pytest.mark.gen_test
async def test_publish_b64data_is_delivered_as_json(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    b64 = base64.b64encode(orjson.dumps({"binary": "yes", "n": [1, 2]})).decode()
    result = await call(base_url, "publish", {"channel": channel, "b64data": b64})
    assert result["offset"] == 1
    push = await client.push("pub")
    assert push["pub"]["data"] == {"binary": "yes", "n": [1, 2]}
    history = await call(base_url, "history", {"channel": channel, "limit": 1})
    assert history["publications"][0]["data"] == {"binary": "yes", "n": [1, 2]}


@pytest.mark.gen_test
async def test_publish_skip_history(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    await call(base_url, "publish", {"channel": channel, "data": {"kept": False}, "skip_history": True})
    push = await client.push("pub")
    assert push["pub"]["data"] == {"kept": False}
    kept = await call(base_url, "publish", {"channel": channel, "data": {"kept": True}})
    history = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert [p["data"] for p in history["publications"]] == [{"kept": True}]
    assert history["offset"] == kept["offset"]


@pytest.mark.gen_test
async def test_publish_idempotency_key(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    other = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    params = {"channel": channel, "data": {"n": 1}, "idempotency_key": "k-1"}
    first = await call(base_url, "publish", params)
    assert first["offset"] == 1
    again = await call(base_url, "publish", {**params, "data": {"n": "retry"}})
    assert again == first
    history = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert [p["data"] for p in history["publications"]] == [{"n": 1}]
    await client.push("pub")
    assert not [p for p in await barrier(client) if "pub" in p], "a duplicate publication was delivered"

    # The key acts per channel, and another key publishes again.
    assert (await call(base_url, "publish", {**params, "channel": other}))["offset"] == 1
    assert (await call(base_url, "publish", {**params, "idempotency_key": "k-2"}))["offset"] == 2


@pytest.mark.gen_test
async def test_publish_to_channel_without_history(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel("plain-")  # clients may not subscribe here themselves; the server API may
    user = unique_user()
    client, _ = await connect_user(client_factory, user)
    assert await call(base_url, "subscribe", {"user": user, "channel": channel}) == {}
    assert (await client.push("subscribe"))["channel"] == channel
    result = await call(base_url, "publish", {"channel": channel, "data": {"x": 1}})
    assert result.get("offset", 0) == 0
    push = await client.push("pub")
    assert push["pub"]["data"] == {"x": 1}


# --- broadcast -----------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_broadcast(base_url: str, client_factory: ClientFactory) -> None:
    a, b = unique_channel(), unique_channel()
    client_a, _ = await subscriber(client_factory, a)
    client_b, _ = await subscriber(client_factory, b)
    await call(base_url, "publish", {"channel": b, "data": {"first": True}})
    await client_b.push("pub")

    result = await call(base_url, "broadcast", {"channels": [a, "nope:x", b], "data": {"all": 1}, "tags": {"t": "1"}})
    responses = result["responses"]
    assert len(responses) == 3
    assert responses[0]["result"]["offset"] == 1
    assert responses[0]["result"]["epoch"]
    assert set(responses[1]) == {"error"}
    assert responses[1]["error"]["code"] == 102
    assert responses[1]["error"]["message"]
    assert responses[2]["result"]["offset"] == 2

    for client, channel in ((client_a, a), (client_b, b)):
        push = await client.push("pub")
        assert push["channel"] == channel
        assert push["pub"]["data"] == {"all": 1}
        assert push["pub"]["tags"] == {"t": "1"}


@pytest.mark.gen_test
async def test_broadcast_idempotency_key_per_channel(base_url: str) -> None:
    a, b = unique_channel(), unique_channel()
    params = {"channels": [a, b], "data": {"n": 1}, "idempotency_key": "same"}
    first = await call(base_url, "broadcast", params)
    again = await call(base_url, "broadcast", params)
    assert again == first
    for channel in (a, b):
        history = await call(base_url, "history", {"channel": channel, "limit": 10})
        assert len(history["publications"]) == 1


# --- subscribe / unsubscribe ---------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_server_subscribe_all_connections_of_a_user(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user, {"name": "One"})
    c2, id2 = await connect_user(client_factory, user, {"name": "One"})
    stranger, _ = await connect_user(client_factory, unique_user())

    assert await call(base_url, "subscribe", {"user": user, "channel": channel, "data": {"welcome": 1}}) == {}
    for client in (c1, c2):
        push = await client.push("subscribe")
        assert push["channel"] == channel
        assert push["subscribe"].get("data") == {"welcome": 1}
    assert not [p for p in await barrier(stranger) if "subscribe" in p]

    await call(base_url, "publish", {"channel": channel, "data": {"after": "subscribe"}})
    for client in (c1, c2):
        push = await client.push("pub")
        assert push["channel"] == channel
        assert push["pub"]["data"] == {"after": "subscribe"}

    presence = (await call(base_url, "presence", {"channel": channel}))["presence"]
    assert set(presence) == {id1, id2}
    assert presence[id1]["client"] == id1
    assert presence[id1]["user"] == user
    assert presence[id1]["conn_info"] == {"name": "One"}


@pytest.mark.gen_test
async def test_server_subscribe_one_client(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user)
    c2, _ = await connect_user(client_factory, user)
    watcher, watcher_id = await subscriber(client_factory, channel)
    assert await call(base_url, "subscribe", {"user": user, "channel": channel, "client": id1}) == {}
    push = await c1.push("subscribe")
    assert push["channel"] == channel
    # The namespace pushes join/leave: the watcher sees the server-side subscription join.
    joined = [(await watcher.push("join"))["join"]["info"] for _ in range(2)]
    assert [(i["client"], i["user"]) for i in joined if i["client"] != watcher_id] == [(id1, user)]
    assert not [p for p in await barrier(c2) if "subscribe" in p]
    await call(base_url, "publish", {"channel": channel, "data": {"only": "c1"}})
    assert (await c1.push("pub"))["pub"]["data"] == {"only": "c1"}
    assert not [p for p in await barrier(c2) if "pub" in p]
    presence = (await call(base_url, "presence", {"channel": channel}))["presence"]
    assert set(presence) == {id1, watcher_id}


@pytest.mark.gen_test
async def test_server_subscribe_unknown_user_is_a_no_op(base_url: str) -> None:
    assert await call(base_url, "subscribe", {"user": unique_user(), "channel": unique_channel()}) == {}


@pytest.mark.gen_test
async def test_server_unsubscribe(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    c1, id1 = await subscriber(client_factory, channel, user)
    c2, id2 = await subscriber(client_factory, channel, user)
    watcher, watcher_id = await subscriber(client_factory, channel)

    assert await call(base_url, "unsubscribe", {"user": user, "channel": channel, "client": id1}) == {}
    push = await c1.push("unsubscribe")
    assert push == {"channel": channel, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    assert not [p for p in await barrier(c2) if "unsubscribe" in p]

    assert await call(base_url, "unsubscribe", {"user": user, "channel": channel}) == {}
    push = await c2.push("unsubscribe")
    assert push == {"channel": channel, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}

    await call(base_url, "publish", {"channel": channel, "data": {"after": "unsubscribe"}})
    assert (await watcher.push("pub"))["pub"]["data"] == {"after": "unsubscribe"}
    for client in (c1, c2):
        assert not [p for p in await barrier(client) if "pub" in p]
    presence = (await call(base_url, "presence", {"channel": channel}))["presence"]
    assert set(presence) == {watcher_id}
    assert id2 not in presence


# --- disconnect ----------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_disconnect_user(base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    c1, _ = await connect_user(client_factory, user)
    c2, _ = await connect_user(client_factory, user)
    bystander, _ = await connect_user(client_factory, unique_user())
    assert await call(base_url, "disconnect", {"user": user}) == {}
    for client in (c1, c2):
        closed = await client.closed()
        assert (closed.code, closed.reason) == (3503, "force disconnect")
    await alive(bystander)


@pytest.mark.gen_test
async def test_disconnect_one_client_with_custom_code(base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user)
    c2, _ = await connect_user(client_factory, user)
    params = {"user": user, "client": id1, "disconnect": {"code": 4501, "reason": "bye"}}
    assert await call(base_url, "disconnect", params) == {}
    closed = await c1.closed()
    assert (closed.code, closed.reason) == (4501, "bye")
    await alive(c2)


@pytest.mark.gen_test
async def test_disconnect_whitelist(base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    c1, _ = await connect_user(client_factory, user)
    c2, id2 = await connect_user(client_factory, user)
    c3, id3 = await connect_user(client_factory, user)
    assert await call(base_url, "disconnect", {"user": user, "whitelist": [id2, id3]}) == {}
    closed = await c1.closed()
    assert closed.code == 3503
    await alive(c2)
    await alive(c3)


@pytest.mark.gen_test
async def test_disconnect_removes_presence(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    client, _ = await subscriber(client_factory, channel, user)
    watcher, watcher_id = await subscriber(client_factory, channel)
    await call(base_url, "disconnect", {"user": user})
    await client.closed()
    await watcher.push("leave")
    presence = (await call(base_url, "presence", {"channel": channel}))["presence"]
    assert set(presence) == {watcher_id}


@pytest.mark.gen_test
async def test_disconnect_unknown_user_is_a_no_op(base_url: str) -> None:
    assert await call(base_url, "disconnect", {"user": unique_user()}) == {}


# --- refresh -------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_refresh_expire_at_keeps_connection(base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    client, _ = await connect_user(client_factory, user)
    assert await call(base_url, "refresh", {"user": user, "expire_at": int(time.time()) + 3600}) == {}
    await alive(client)


@pytest.mark.gen_test
async def test_refresh_expired_closes_with_3005(base_url: str, client_factory: ClientFactory) -> None:
    user = unique_user()
    c1, id1 = await connect_user(client_factory, user)
    c2, _ = await connect_user(client_factory, user)
    assert await call(base_url, "refresh", {"user": user, "client": id1, "expired": True}) == {}
    closed = await c1.closed()
    assert closed.code == 3005
    await alive(c2)
    assert await call(base_url, "refresh", {"user": user, "expired": True}) == {}
    assert (await c2.closed()).code == 3005


@pytest.mark.gen_test
async def test_refresh_unknown_user_is_a_no_op(base_url: str) -> None:
    assert await call(base_url, "refresh", {"user": unique_user(), "expired": True}) == {}


# --- presence, presence_stats --------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_presence_and_stats(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    assert await call(base_url, "presence", {"channel": channel}) == {"presence": {}}
    assert await call(base_url, "presence_stats", {"channel": channel}) == {"num_clients": 0, "num_users": 0}

    alice, bob = unique_user(), unique_user()
    c1, id1 = await connect_user(client_factory, alice, {"name": "Alice"})
    c2, id2 = await connect_user(client_factory, alice, {"name": "Alice"})
    c3, id3 = await connect_user(client_factory, bob)
    for client in (c1, c2, c3):
        assert "subscribe" in await client.command("subscribe", {"channel": channel})

    presence = (await call(base_url, "presence", {"channel": channel}))["presence"]
    assert set(presence) == {id1, id2, id3}
    assert presence[id1] == {"client": id1, "user": alice, "conn_info": {"name": "Alice"}}
    assert presence[id3]["client"] == id3
    assert presence[id3]["user"] == bob
    assert presence[id3].get("conn_info") is None
    assert await call(base_url, "presence_stats", {"channel": channel}) == {"num_clients": 3, "num_users": 2}


# --- history, history_remove ---------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_history_paging(base_url: str) -> None:
    channel = unique_channel()
    empty = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert empty["publications"] == []
    assert empty.get("offset", 0) == 0

    epoch = ""
    for n in range(1, 5):
        result = await call(base_url, "publish", {"channel": channel, "data": {"n": n}})
        assert result["offset"] == n
        epoch = result["epoch"]

    def ns(result: dict[str, Any]) -> list[int]:
        return [p["data"]["n"] for p in result["publications"]]

    position_only = await call(base_url, "history", {"channel": channel})
    assert position_only["publications"] == []
    assert (position_only["offset"], position_only["epoch"]) == (4, epoch)

    first_two = await call(base_url, "history", {"channel": channel, "limit": 2})
    assert ns(first_two) == [1, 2]
    assert [p["offset"] for p in first_two["publications"]] == [1, 2]
    assert (first_two["offset"], first_two["epoch"]) == (4, epoch)

    assert ns(await call(base_url, "history", {"channel": channel, "limit": 2, "reverse": True})) == [4, 3]
    assert ns(await call(base_url, "history", {"channel": channel, "limit": 100})) == [1, 2, 3, 4]
    since = {"offset": 2, "epoch": epoch}
    assert ns(await call(base_url, "history", {"channel": channel, "limit": 10, "since": since})) == [3, 4]
    assert ns(await call(base_url, "history", {"channel": channel, "limit": 1, "since": since})) == [3]
    reverse_since = {"channel": channel, "limit": 10, "since": {"offset": 3, "epoch": epoch}, "reverse": True}
    assert ns(await call(base_url, "history", reverse_since)) == [2, 1]


@pytest.mark.gen_test
async def test_history_since_another_epoch_is_error_112(base_url: str) -> None:
    channel = unique_channel()
    await call(base_url, "publish", {"channel": channel, "data": {}})
    await call_error(base_url, "history", {"channel": channel, "limit": 5, "since": {"offset": 0, "epoch": "x"}}, 112)


@pytest.mark.gen_test
async def test_history_remove_keeps_stream_top(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    for n in range(3):
        await call(base_url, "publish", {"channel": channel, "data": {"n": n}})
    before = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert len(before["publications"]) == 3

    assert await call(base_url, "history_remove", {"channel": channel}) == {}
    after = await call(base_url, "history", {"channel": channel, "limit": 10})
    assert after["publications"] == []
    assert (after["offset"], after["epoch"]) == (before["offset"], before["epoch"])

    # The stream continues from the kept top.
    result = await call(base_url, "publish", {"channel": channel, "data": {"n": "next"}})
    assert (result["offset"], result["epoch"]) == (4, before["epoch"])
    # Removing history of a channel that never had any is fine too.
    assert await call(base_url, "history_remove", {"channel": unique_channel()}) == {}


# --- channels, info ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_channels(base_url: str, client_factory: ClientFactory) -> None:
    prefix = f"chat:{uuid.uuid4().hex}-"
    a, b, quiet = prefix + "a", prefix + "b", prefix + "quiet"
    await subscriber(client_factory, a)
    await subscriber(client_factory, a)
    await subscriber(client_factory, b)
    await call(base_url, "publish", {"channel": quiet, "data": {}})

    result = await call(base_url, "channels", {"pattern": prefix + "*"})
    assert result == {"channels": {a: {"num_clients": 2}, b: {"num_clients": 1}}}

    everything = (await call(base_url, "channels", {}))["channels"]
    assert everything[a] == {"num_clients": 2}
    assert everything[b] == {"num_clients": 1}
    assert quiet not in everything

    assert await call(base_url, "channels", {"pattern": prefix + "?"}) == (
        {"channels": {a: {"num_clients": 2}, b: {"num_clients": 1}}})
    assert await call(base_url, "channels", {"pattern": a}) == {"channels": {a: {"num_clients": 2}}}
    assert await call(base_url, "channels", {"pattern": "nothing-matches-*"}) == {"channels": {}}


@pytest.mark.gen_test
async def test_info(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    await subscriber(client_factory, channel, unique_user())
    await subscriber(client_factory, channel, unique_user())
    result = await call(base_url, "info")
    assert set(result) == {"nodes"}
    assert len(result["nodes"]) == 1
    node = result["nodes"][0]
    for key in ("uid", "name", "version"):
        assert isinstance(node[key], str) and node[key], node
    for key in ("num_clients", "num_users", "num_channels", "num_subs", "uptime"):
        assert isinstance(node[key], int), node
    assert node["num_clients"] >= 2
    assert node["num_users"] >= 2
    assert node["num_channels"] >= 1
    assert node["num_subs"] >= 2
    assert node["uptime"] >= 0
    assert (await call(base_url, "info"))["nodes"][0]["uid"] == node["uid"]


# --- batch ---------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
async def test_batch(base_url: str, client_factory: ClientFactory, parallel: bool) -> None:
    channel = unique_channel()
    client, client_id = await subscriber(client_factory, channel, unique_user())
    commands = [
        {"publish": {"channel": channel, "data": {"n": 1}}},
        {"publish": {"channel": "nope:x", "data": {}}},
        {"presence": {"channel": channel}},
        {"presence_stats": {"channel": channel}},
        {"info": {}},
        {"dance": {}},
        {"history": {"channel": "plain-x", "limit": 1}},
        {"channels": {"pattern": channel}},
    ]
    resp = await post(base_url, "batch", {"commands": commands, "parallel": parallel})
    assert resp.code == 200, (resp.code, resp.body)
    body = decode(resp)
    assert set(body) == {"replies"}, body  # no "result" wrapper
    replies = body["replies"]
    assert len(replies) == len(commands)
    assert set(replies[0]) == {"publish"}
    assert replies[0]["publish"]["offset"] == 1
    assert replies[1] == {"error": {"code": 102, "message": replies[1]["error"]["message"]}}
    assert replies[2] == {"presence": {"presence": {client_id: replies[2]["presence"]["presence"][client_id]}}}
    assert replies[3] == {"presence_stats": {"num_clients": 1, "num_users": 1}}
    assert len(replies[4]["info"]["nodes"]) == 1
    assert set(replies[5]) == {"error"}
    assert replies[5]["error"]["code"] == 104
    assert replies[6]["error"]["code"] == 108
    assert replies[7] == {"channels": {"channels": {channel: {"num_clients": 1}}}}
    assert (await client.push("pub"))["pub"]["data"] == {"n": 1}


@pytest.mark.gen_test
async def test_batch_sequential_runs_in_order(base_url: str) -> None:
    channel = unique_channel()
    commands: list[dict[str, Any]] = [{"publish": {"channel": channel, "data": {"n": n}}} for n in range(5)]
    commands.append({"history": {"channel": channel, "limit": 100}})
    commands.append({"history_remove": {"channel": channel}})
    commands.append({"history": {"channel": channel, "limit": 100}})
    body = decode(await post(base_url, "batch", {"commands": commands, "parallel": False}))
    replies = body["replies"]
    assert [r["publish"]["offset"] for r in replies[:5]] == [1, 2, 3, 4, 5]
    assert [p["data"]["n"] for p in replies[5]["history"]["publications"]] == [0, 1, 2, 3, 4]
    assert replies[6] == {"history_remove": {}}
    assert replies[7]["history"]["publications"] == []
    assert replies[7]["history"]["offset"] == 5


@pytest.mark.gen_test
async def test_batch_parallel_keeps_reply_order(base_url: str) -> None:
    channels = [unique_channel() for _ in range(10)]
    commands = [{"publish": {"channel": ch, "data": {"i": i}}} for i, ch in enumerate(channels)]
    commands.insert(5, {"publish": {"channel": "nope:x", "data": {}}})
    body = decode(await post(base_url, "batch", {"commands": commands, "parallel": True}))
    replies = body["replies"]
    assert len(replies) == 11
    assert replies[5]["error"]["code"] == 102
    assert all(r["publish"]["offset"] == 1 for i, r in enumerate(replies) if i != 5)
    for i, channel in enumerate(channels):
        history = await call(base_url, "history", {"channel": channel, "limit": 1})
        assert history["publications"][0]["data"] == {"i": i}


@pytest.mark.gen_test
async def test_batch_empty(base_url: str) -> None:
    body = decode(await post(base_url, "batch", {"commands": []}))
    assert body == {"replies": []}


@pytest.mark.gen_test
async def test_batch_subscribe_and_disconnect(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    user = unique_user()
    client, _ = await connect_user(client_factory, user)
    commands = [
        {"subscribe": {"user": user, "channel": channel}},
        {"publish": {"channel": channel, "data": {"via": "batch"}}},
        {"disconnect": {"user": user}},
    ]
    body = decode(await post(base_url, "batch", {"commands": commands}))
    assert body == {"replies": [{"subscribe": {}}, {"publish": body["replies"][1]["publish"]}, {"disconnect": {}}]}
    assert (await client.push("subscribe"))["channel"] == channel
    assert (await client.push("pub"))["pub"]["data"] == {"via": "batch"}
    assert (await client.closed()).code == 3503


# --- concurrency: the API and the WebSocket side share one loop ----------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_many_concurrent_publishes_arrive_in_offset_order(base_url: str, client_factory: ClientFactory) -> None:
    channel = unique_channel()
    client, _ = await subscriber(client_factory, channel)
    results = await asyncio.gather(*(
        call(base_url, "publish", {"channel": channel, "data": {"i": i}}) for i in range(50)
    ))
    assert sorted(r["offset"] for r in results) == list(range(1, 51))
    offsets = [(await client.push("pub"))["pub"]["offset"] for _ in range(50)]
    assert offsets == list(range(1, 51))
