"""Authentication over a real socket: connection tokens (HMAC, RSA, ECDSA, JWKS), expiry and refresh, user limits,
server-side subscriptions from token claims, and subscription tokens with their expiry and `sub_refresh`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from server.app import Gust
from server.config import DEVELOPMENT_PRESET, ConfigError
from server.config_load import deep_merge

from .conftest import SECRET, make_config
from .wsclient import Closed, RawClient

ClientFactory = Callable[..., Awaitable[RawClient]]

API_KEY = "auth-tests-api-key"
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"
SUB_SECRET = "subscription-secret-long-enough-for-hs256-tokens"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(private_key: Any) -> str:
    data: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data.decode()


# "priv" has no allow_* option at all; "pres" has presence readable by subscribers.
NAMESPACES = [*DEVELOPMENT_PRESET["channel"]["namespaces"], {"name": "priv"},
              {"name": "pres", "presence": True, "allow_presence_for_subscriber": True}]
BASE: dict[str, Any] = {
    "chat": {"enabled": False},  # the chat mints HS256 tokens: it refuses RSA/ECDSA/JWKS-only configs
    "http_api": {"key": API_KEY},
    "channel": {"namespaces": NAMESPACES},
    "client": {"expired_close_delay": 0.2, "expired_sub_close_delay": 0.2},
}
ALL_KEYS = {"client": {"token": {"rsa_public_key": pem(RSA_KEY), "ecdsa_public_key": pem(EC_KEY)}}}
RSA_ONLY = {"client": {"token": {"hmac_secret_key": "", "rsa_public_key": pem(RSA_KEY)}}}
AUDIENCE = {"client": {"token": {"audience": "gust"}}}
ISSUER = {"client": {"token": {"issuer": "auth.example"}}}


def jwks_endpoint(port: int) -> dict[str, Any]:
    return {"client": {"token": {"jwks_public_endpoint": f"http://127.0.0.1:{port}/jwks"}}}


def dead_jwks_endpoint(_port: int) -> dict[str, Any]:
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there any more
    return jwks_endpoint(port)


@pytest.fixture
def config_overrides(request: pytest.FixtureRequest, http_port: int) -> dict[str, Any]:
    """BASE plus the test's `indirect` parameter: a dict, or a function of the server's port."""
    extra = getattr(request, "param", {})
    return deep_merge(BASE, extra(http_port) if callable(extra) else extra)


def configured(overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config_overrides", [overrides], indirect=True, ids=["cfg"])


# --- helpers -------------------------------------------------------------------------------------------------


def now(delta: int = 0) -> int:
    return int(time.time()) + delta


def token(key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A signed JWT; `sub` defaults to "alice"."""
    claims.setdefault("sub", "alice")
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def sub_token(channel: str, key: Any = SECRET, **claims: Any) -> str:
    return token(key, channel=channel, **claims)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A JWT PyJWT refuses to make: unsigned (`alg: none`) or HMAC-signed with an arbitrary byte key."""
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    sig = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


async def outcome(client: RawClient, method: str, params: dict[str, Any]) -> tuple[str, int]:
    """("ok", 0), ("error", reply code) or ("close", close code) for one command."""
    cmd_id = client.next_id()
    await client.send({"id": cmd_id, method: params})
    try:
        reply = await client.reply(cmd_id)
    except Closed as exc:
        return "close", exc.code or 0
    if "error" in reply:
        return "error", reply["error"]["code"]
    assert method in reply, reply
    return "ok", 0


async def connected(client_factory: ClientFactory, **claims: Any) -> tuple[RawClient, dict[str, Any]]:
    client = await client_factory()
    reply = await client.connect(token=token(**claims))
    return client, reply["connect"]


async def subscribed(client: RawClient, channel: str, tok: str | None = None) -> dict[str, Any]:
    params = {"channel": channel} if tok is None else {"channel": channel, "token": tok}
    reply = await client.command("subscribe", params)
    assert "subscribe" in reply, reply
    return reply["subscribe"]  # type: ignore[no-any-return]


async def assert_open(client: RawClient) -> None:
    """A round trip on an accepted connection (also flushes every push written before it)."""
    reply = await client.command("presence_stats", {"channel": "chat:probe"})
    assert "presence_stats" in reply, reply


async def api(base_url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    resp = await AsyncHTTPClient().fetch(
        f"{base_url}/api/{method}", method="POST", body=orjson.dumps(params), raise_error=False,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    return orjson.loads(resp.body)  # type: ignore[no-any-return]


def pushes(client: RawClient, kind: str) -> list[dict[str, Any]]:
    return [m["push"] for m in client.messages if kind in m.get("push", {})]


# --- connection tokens -----------------------------------------------------------------------------------------

VALID_CASES = [
    ("HS256", ALL_KEYS, lambda: token(SECRET, "HS256")),
    ("HS384", ALL_KEYS, lambda: token(SECRET, "HS384")),
    ("HS512", ALL_KEYS, lambda: token(SECRET, "HS512")),
    ("RS256", ALL_KEYS, lambda: token(RSA_KEY, "RS256")),
    ("RS384", ALL_KEYS, lambda: token(RSA_KEY, "RS384")),
    ("RS512", ALL_KEYS, lambda: token(RSA_KEY, "RS512")),
    ("ES256", ALL_KEYS, lambda: token(EC_KEY, "ES256")),
    ("RS256 with only an RSA key", RSA_ONLY, lambda: token(RSA_KEY, "RS256")),
    ("matching aud", AUDIENCE, lambda: token(aud="gust")),
    ("aud list containing ours", AUDIENCE, lambda: token(aud=["other", "gust"])),
    ("matching iss", ISSUER, lambda: token(iss="auth.example")),
]


@pytest.mark.gen_test
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the shared 45-byte SECRET
@pytest.mark.parametrize(("config_overrides", "make"), [c[1:] for c in VALID_CASES], indirect=["config_overrides"],
                         ids=[c[0] for c in VALID_CASES])
async def test_valid_connection_token(config_overrides, client_factory: ClientFactory, make: Callable[[], str]) -> None:
    client = await client_factory()
    result = (await client.connect(token=make()))["connect"]
    assert result["client"] and result["version"] and result["ping"] > 0 and result["pong"] is True
    assert "expires" not in result
    await assert_open(client)


INVALID_CASES = [
    ("bad signature", {}, lambda: token(OTHER_SECRET)),
    ("garbage", {}, lambda: "garbage"),
    ("alg none", {}, lambda: handmade({"alg": "none", "typ": "JWT"}, {"sub": "alice"})),
    ("HS256 signed with the RSA PEM", RSA_ONLY,
     lambda: handmade({"alg": "HS256", "typ": "JWT"}, {"sub": "alice"}, pem(RSA_KEY).encode())),
    ("HS256 with only an RSA key", RSA_ONLY, lambda: token(SECRET, "HS256")),
    ("RS256 with only an HMAC key", {}, lambda: token(RSA_KEY, "RS256")),
    ("RS256 by another RSA key", ALL_KEYS, lambda: token(OTHER_RSA_KEY, "RS256")),
    ("ES256 by another EC key", ALL_KEYS, lambda: token(OTHER_EC_KEY, "ES256")),
    ("ES256 with only an RSA key", RSA_ONLY, lambda: token(EC_KEY, "ES256")),
    ("wrong aud", AUDIENCE, lambda: token(aud="other")),
    ("missing aud", AUDIENCE, lambda: token()),
    ("wrong iss", ISSUER, lambda: token(iss="evil.example")),
    ("missing iss", ISSUER, lambda: token()),
    ("channel claim", {}, lambda: token(channel="chat:a")),
    ("sub not a string", {}, lambda: token(sub=42)),
    ("b64info not base64", {}, lambda: token(b64info="%%%")),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("config_overrides", "make"), [c[1:] for c in INVALID_CASES],
                         indirect=["config_overrides"], ids=[c[0] for c in INVALID_CASES])
async def test_invalid_connection_token_closes_3500(config_overrides, client_factory: ClientFactory, make) -> None:
    client = await client_factory()
    assert await outcome(client, "connect", {"token": make()}) == ("close", 3500)


EXPIRED_CASES = [
    ("exp past", lambda: token(exp=now(-10)), 109),
    ("expire_at past, exp future", lambda: token(exp=now(60), expire_at=now(-10)), 110),
    ("expire_at past, no exp", lambda: token(expire_at=now(-10)), 110),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("make", "code"), [c[1:] for c in EXPIRED_CASES], ids=[c[0] for c in EXPIRED_CASES])
async def test_expired_connection_token_is_an_error_reply(client_factory: ClientFactory, make, code: int) -> None:
    client = await client_factory()
    assert await outcome(client, "connect", {"token": make()}) == ("error", code)


@pytest.mark.gen_test(timeout=10)
async def test_connection_expires_with_3005(client_factory: ClientFactory) -> None:
    client, result = await connected(client_factory, exp=now(2))
    assert result["expires"] is True and 0 < result["ttl"] <= 2
    start = time.monotonic()
    closed = await client.closed(timeout=5)
    assert closed.code == 3005, (closed.code, closed.reason)
    assert time.monotonic() - start <= 4  # exp + 0.2 s grace, generously


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize("method", ["connect", "subscribe"])
async def test_ttl_counts_whole_seconds_to_exp(client_factory: ClientFactory, method: str) -> None:
    """A token with `exp` one (unix) second ahead is valid: ttl must not round down to 0 (Centrifugo sends
    `exp - now_unix_seconds`)."""
    fraction = time.time() % 1
    if not 0.5 <= fraction <= 0.85:
        await asyncio.sleep((0.6 - fraction) % 1)  # into the second half of a second
    exp = now(1)
    if method == "connect":
        _, result = await connected(client_factory, exp=exp)
    else:
        client, _ = await connected(client_factory)
        result = await subscribed(client, "priv:ttl", sub_token("priv:ttl", exp=exp))
    assert result["expires"] is True
    assert result["ttl"] >= 1, result


# --- refresh -------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_refresh_moves_expiry(client_factory: ClientFactory) -> None:
    client, result = await connected(client_factory, exp=now(1))
    reply = await client.command("refresh", {"token": token(exp=now(60))})
    assert set(reply["refresh"]) == {"client", "version", "expires", "ttl"}, reply
    assert reply["refresh"]["client"] == result["client"] and reply["refresh"]["expires"] is True
    assert 50 < reply["refresh"]["ttl"] <= 60
    await asyncio.sleep(1.5)  # past the old expiry plus expired_close_delay
    await assert_open(client)


REFRESH_CASES = [
    ("another user", lambda: {"token": token(sub="bob", exp=now(60))}, ("close", 3500)),
    ("invalid token", lambda: {"token": "garbage"}, ("close", 3500)),
    ("bad signature", lambda: {"token": token(OTHER_SECRET, exp=now(60))}, ("close", 3500)),
    ("expired token", lambda: {"token": token(exp=now(-10))}, ("close", 3005)),
    ("missing token", lambda: {}, ("close", 3501)),
    ("expire_at past", lambda: {"token": token(exp=now(60), expire_at=now(-10))}, ("error", 110)),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("params", "expected"), [c[1:] for c in REFRESH_CASES], ids=[c[0] for c in REFRESH_CASES])
async def test_bad_refresh(client_factory: ClientFactory, params, expected: tuple[str, int]) -> None:
    client, _ = await connected(client_factory, exp=now(60))
    assert await outcome(client, "refresh", params()) == expected


# --- who may connect ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
@configured({"client": {"disallow_anonymous_connection_tokens": True}})
async def test_anonymous_connection_token_disallowed_3507(config_overrides, client_factory: ClientFactory) -> None:
    client = await client_factory()
    assert await outcome(client, "connect", {"token": token(sub="")}) == ("close", 3507)
    await connected(client_factory, sub="alice")


@pytest.mark.gen_test
async def test_anonymous_connection_token_allowed_by_default(client_factory: ClientFactory) -> None:
    client, _ = await connected(client_factory, sub="")
    await assert_open(client)


@pytest.mark.gen_test(timeout=10)
@configured({"client": {"user_connection_limit": 1}})
async def test_user_connection_limit(config_overrides, client_factory: ClientFactory) -> None:
    first, _ = await connected(client_factory, sub="alice")
    second = await client_factory()
    assert await outcome(second, "connect", {"token": token(sub="alice")}) == ("close", 3504)
    await connected(client_factory, sub="bob")
    for _ in range(2):  # anonymous connections are not limited
        anonymous = await client_factory()
        await anonymous.connect()
    await assert_open(first)
    first.close()
    for _ in range(50):  # the server notices the close shortly
        again = await client_factory()
        result = await outcome(again, "connect", {"token": token(sub="alice")})
        if result == ("ok", 0):
            break
        assert result == ("close", 3504)
        await asyncio.sleep(0.05)
    else:
        pytest.fail("alice could not connect again after closing her first connection")


# --- claims: user id, info -------------------------------------------------------------------------------------


@pytest.mark.gen_test
@configured({"client": {"token": {"user_id_claim": "uid"}}})
async def test_user_id_claim(config_overrides, client_factory: ClientFactory) -> None:
    client, result = await connected(client_factory, sub="not-me", uid="bob")
    await subscribed(client, "chat:u")
    presence = (await client.command("presence", {"channel": "chat:u"}))["presence"]["presence"]
    assert presence[result["client"]]["user"] == "bob"
    await client.command("publish", {"channel": "chat:u", "data": {"n": 1}})
    assert (await client.push("pub"))["pub"]["info"]["user"] == "bob"


INFO = {"name": "Alice", "tags": [1, 2]}


@pytest.mark.gen_test
@pytest.mark.parametrize("claims", [{"info": INFO}, {"b64info": base64.b64encode(orjson.dumps(INFO)).decode()}],
                         ids=["info", "b64info"])
async def test_conn_info_in_presence_and_publications(client_factory, base_url: str, claims) -> None:
    client, result = await connected(client_factory, **claims)
    await subscribed(client, "chat:i")
    presence = (await api(base_url, "presence", {"channel": "chat:i"}))["result"]["presence"]
    assert presence[result["client"]]["conn_info"] == INFO
    await client.command("publish", {"channel": "chat:i", "data": {"n": 1}})
    info = (await client.push("pub"))["pub"]["info"]
    assert info == {"user": "alice", "client": result["client"], "conn_info": INFO}


# --- JWKS ------------------------------------------------------------------------------------------------------


class JwksState:
    def __init__(self) -> None:
        self.keys = [
            {**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "kid": "rsa1", "use": "sig"},
            {**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "ec1", "use": "sig"},
        ]
        self.status = 200
        self.fetches = 0


class JwksHandler(tornado.web.RequestHandler):
    def initialize(self, state: JwksState) -> None:
        self.state = state

    def get(self) -> None:
        self.state.fetches += 1
        self.set_status(self.state.status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"keys": self.state.keys} if self.state.status == 200 else {"error": "down"}))


@pytest.fixture
def jwks() -> JwksState:
    return JwksState()


@pytest.fixture
def app(gust: Gust, jwks: JwksState) -> tornado.web.Application:
    application = gust.make_app()
    application.add_handlers(r".*", [(r"/jwks", JwksHandler, {"state": jwks})])
    return application


@pytest.mark.gen_test
@configured(jwks_endpoint)
async def test_jwks_keys_by_kid_are_cached(config_overrides, client_factory: ClientFactory, jwks: JwksState) -> None:
    for key, alg, kid in [(RSA_KEY, "RS256", "rsa1"), (RSA_KEY, "RS256", "rsa1"), (EC_KEY, "ES256", "ec1")]:
        client = await client_factory()
        result = (await client.connect(token=token(key, alg, headers={"kid": kid})))["connect"]
        assert result["client"]
    assert jwks.fetches == 1


JWKS_INVALID_CASES = [
    ("unknown kid", lambda: token(RSA_KEY, "RS256", headers={"kid": "nope"})),
    ("no kid", lambda: token(RSA_KEY, "RS256")),
    ("HS256 with a known kid", lambda: token(SECRET, "HS256", headers={"kid": "rsa1"})),
    ("HS256 without kid", lambda: token(SECRET, "HS256")),
    ("RS256 by another key", lambda: token(OTHER_RSA_KEY, "RS256", headers={"kid": "rsa1"})),
    ("ES256 with the RSA kid", lambda: token(EC_KEY, "ES256", headers={"kid": "rsa1"})),
]


@pytest.mark.gen_test
@configured(jwks_endpoint)
@pytest.mark.parametrize("make", [c[1] for c in JWKS_INVALID_CASES], ids=[c[0] for c in JWKS_INVALID_CASES])
async def test_jwks_invalid_token_closes_3500(config_overrides, client_factory: ClientFactory, make) -> None:
    client = await client_factory()
    assert await outcome(client, "connect", {"token": make()}) == ("close", 3500)


@pytest.mark.gen_test(timeout=10)
@pytest.mark.parametrize(("config_overrides", "status"), [(jwks_endpoint, 500), (dead_jwks_endpoint, 200)],
                         indirect=["config_overrides"], ids=["http 500", "endpoint down"])
async def test_jwks_unavailable_is_temporary_error_100(config_overrides, client_factory, jwks, status: int) -> None:
    jwks.status = status
    client = await client_factory()
    reply = await client.command("connect", {"token": token(RSA_KEY, "RS256", headers={"kid": "rsa1"})})
    assert reply["error"]["code"] == 100 and reply["error"].get("temporary") is True, reply
    # not accepted: anything but connect is a protocol violation
    assert await outcome(client, "subscribe", {"channel": "chat:a"}) == ("close", 3501)
    if status == 500:  # the endpoint was asked; a failed fetch is not cached: once it recovers, tokens verify
        assert jwks.fetches >= 1
        jwks.status = 200
        retry = await client_factory()
        await retry.connect(token=token(RSA_KEY, "RS256", headers={"kid": "rsa1"}))


# --- configuration errors -----------------------------------------------------------------------------------

BAD_KEY_CASES = [
    ("garbage PEM body", "token", "rsa_public_key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
    ("not PEM", "token", "rsa_public_key", "not a key"),
    ("EC key as rsa_public_key", "token", "rsa_public_key", pem(EC_KEY)),
    ("RSA key as ecdsa_public_key", "token", "ecdsa_public_key", pem(RSA_KEY)),
    ("subscription_token EC key as RSA", "subscription_token", "rsa_public_key", pem(EC_KEY)),
]


@pytest.mark.parametrize(("section", "option", "value"), [c[1:] for c in BAD_KEY_CASES],
                         ids=[c[0] for c in BAD_KEY_CASES])
def test_bad_public_key_is_a_config_error(section: str, option: str, value: str) -> None:
    settings: dict[str, Any] = {option: value}
    if section == "subscription_token":
        settings["enabled"] = True
    with pytest.raises(ConfigError) as info:
        Gust(make_config({"client": {section: settings}, "chat": {"enabled": False}}))
    assert info.value.key == f"client.{section}.{option}"
    assert f"client.{section}.{option}" in str(info.value)


def test_jwks_endpoint_must_be_http() -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"client": {"token": {"jwks_public_endpoint": "ftp://x"}}})
    assert info.value.key == "client.token.jwks_public_endpoint"


# --- server-side subscriptions from the connection token ----------------------------------------------------


@pytest.mark.gen_test
async def test_channels_claim_subscribes_at_connect(client_factory: ClientFactory, base_url: str) -> None:
    client, result = await connected(client_factory, channels=["chat:a"])
    sub = result["subs"]["chat:a"]
    assert sub["recoverable"] is True and sub["positioned"] is True
    assert isinstance(sub["epoch"], str) and sub["epoch"] and sub["offset"] == 0
    assert await api(base_url, "publish", {"channel": "chat:a", "data": {"n": 1}}) != {}
    push = await client.push("pub")
    assert push["channel"] == "chat:a" and push["pub"]["data"] == {"n": 1} and push["pub"]["offset"] == 1


@pytest.mark.gen_test
async def test_subs_claim_with_data_and_info(client_factory: ClientFactory, base_url: str) -> None:
    claims = {"chat:b": {"data": {"x": 1}, "info": {"y": 2}}}
    client, result = await connected(client_factory, subs=claims, channels=["chat:ignored"])
    assert set(result["subs"]) == {"chat:b"}
    assert result["subs"]["chat:b"]["data"] == {"x": 1}
    presence = (await api(base_url, "presence", {"channel": "chat:b"}))["result"]["presence"]
    assert presence[result["client"]]["chan_info"] == {"y": 2}
    await client.command("publish", {"channel": "chat:b", "data": {"n": 2}})
    assert (await client.push("pub"))["pub"]["data"] == {"n": 2}


@pytest.mark.gen_test
async def test_server_side_channel_in_unknown_namespace_is_102(client_factory: ClientFactory) -> None:
    client = await client_factory()
    assert await outcome(client, "connect", {"token": token(channels=["nope:a"])}) == ("error", 102)
    assert await outcome(client, "subscribe", {"channel": "chat:a"}) == ("close", 3501)


@pytest.mark.gen_test
async def test_refused_connect_leaves_no_identity_behind(client_factory: ClientFactory) -> None:
    """After error 102 the client may send connect again; without a token it must be anonymous, not the user
    of the refused token."""
    client = await client_factory()
    assert await outcome(client, "connect", {"token": token(sub="alice", channels=["nope:a"])}) == ("error", 102)
    client_id = (await client.connect())["connect"]["client"]
    await subscribed(client, "chat:who")
    presence = (await client.command("presence", {"channel": "chat:who"}))["presence"]["presence"]
    assert presence[client_id]["user"] == "", presence


@pytest.mark.gen_test
@configured({"client": {"channel_limit": 2}})
async def test_too_many_server_side_channels_closes_3505(config_overrides, client_factory: ClientFactory) -> None:
    client = await client_factory()
    tok = token(channels=["chat:1", "chat:2", "chat:3"])
    assert await outcome(client, "connect", {"token": tok}) == ("close", 3505)


@pytest.mark.gen_test
async def test_server_side_subscription_recovers(client_factory: ClientFactory, base_url: str) -> None:
    await api(base_url, "publish", {"channel": "chat:r", "data": {"n": "old"}})
    first, result = await connected(client_factory, channels=["chat:r"])
    epoch, offset = result["subs"]["chat:r"]["epoch"], result["subs"]["chat:r"]["offset"]
    assert offset == 1
    first.close()
    for n in range(3):
        await api(base_url, "publish", {"channel": "chat:r", "data": {"n": n}})
    second = await client_factory()
    wanted = {"chat:r": {"recover": True, "epoch": epoch, "offset": offset}}
    sub = (await second.connect(token=token(channels=["chat:r"]), subs=wanted))["connect"]["subs"]["chat:r"]
    assert sub["recovered"] is True and sub["epoch"] == epoch
    assert [(p["offset"], p["data"]) for p in sub["publications"]] == [(2, {"n": 0}), (3, {"n": 1}), (4, {"n": 2})]


# --- subscription tokens -------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_private_channel_needs_a_token(client_factory: ClientFactory) -> None:
    client, _ = await connected(client_factory)
    assert await outcome(client, "subscribe", {"channel": "$priv:x"}) == ("error", 103)
    assert await outcome(client, "subscribe", {"channel": "priv:x"}) == ("error", 103)
    result = await subscribed(client, "$priv:x", sub_token("$priv:x"))
    assert result["recoverable"] is False and "expires" not in result
    await subscribed(client, "priv:x", sub_token("priv:x"))  # no allow_* option needed with a token


SUB_MISMATCH_CASES = [
    ("another channel", lambda cid: sub_token("$priv:other")),
    ("another user", lambda cid: sub_token("$priv:x", sub="bob")),
    ("another client", lambda cid: sub_token("$priv:x", client="someone-else")),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("make", [c[1] for c in SUB_MISMATCH_CASES], ids=[c[0] for c in SUB_MISMATCH_CASES])
async def test_subscription_token_for_someone_else_closes_3500(client_factory: ClientFactory, make) -> None:
    client, result = await connected(client_factory)
    assert await outcome(client, "subscribe", {"channel": "$priv:x", "token": make(result["client"])}) == \
        ("close", 3500)


@pytest.mark.gen_test
async def test_subscription_token_for_own_client(client_factory: ClientFactory) -> None:
    client, result = await connected(client_factory)
    await subscribed(client, "$priv:x", sub_token("$priv:x", client=result["client"]))


SUB_ERROR_CASES = [
    ("garbage", lambda: "garbage", 103),
    ("bad signature", lambda: sub_token("$priv:x", OTHER_SECRET), 103),
    ("no channel claim", lambda: token(), 103),
    ("exp past", lambda: sub_token("$priv:x", exp=now(-10)), 109),
    ("expire_at past", lambda: sub_token("$priv:x", exp=now(60), expire_at=now(-10)), 110),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("make", "code"), [c[1:] for c in SUB_ERROR_CASES], ids=[c[0] for c in SUB_ERROR_CASES])
async def test_bad_subscription_token_is_an_error_reply(client_factory: ClientFactory, make, code: int) -> None:
    client, _ = await connected(client_factory)
    assert await outcome(client, "subscribe", {"channel": "$priv:x", "token": make()}) == ("error", code)
    await subscribed(client, "$priv:x", sub_token("$priv:x"))  # the connection stays and can retry


@pytest.mark.gen_test(timeout=10)
async def test_subscription_expires_with_2501(client_factory: ClientFactory, base_url: str) -> None:
    client, _ = await connected(client_factory)
    result = await subscribed(client, "$priv:e", sub_token("$priv:e", exp=now(2)))
    assert result["expires"] is True and 0 < result["ttl"] <= 2
    push = await client.push("unsubscribe", timeout=5)
    assert push == {"channel": "$priv:e", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
    await api(base_url, "publish", {"channel": "$priv:e", "data": {"late": True}})
    await assert_open(client)
    assert not pushes(client, "pub")
    await subscribed(client, "$priv:e", sub_token("$priv:e"))  # no longer subscribed: may subscribe again


@pytest.mark.gen_test(timeout=10)
async def test_sub_refresh_moves_expiry(client_factory: ClientFactory, base_url: str) -> None:
    client, _ = await connected(client_factory)
    await subscribed(client, "$priv:r", sub_token("$priv:r", exp=now(1)))
    reply = await client.command("sub_refresh", {"channel": "$priv:r", "token": sub_token("$priv:r", exp=now(10))})
    assert reply["sub_refresh"]["expires"] is True and 0 < reply["sub_refresh"]["ttl"] <= 10, reply
    await asyncio.sleep(1.5)  # past the old expiry plus expired_sub_close_delay
    await api(base_url, "publish", {"channel": "$priv:r", "data": {"still": "here"}})
    msg = await client.recv()
    assert msg["push"]["channel"] == "$priv:r" and msg["push"]["pub"]["data"] == {"still": "here"}, msg


SUB_REFRESH_CASES = [
    ("not subscribed", lambda: {"channel": "$priv:other", "token": sub_token("$priv:other")}, ("error", 103)),
    ("missing token", lambda: {"channel": "$priv:s"}, ("error", 107)),
    ("another channel", lambda: {"channel": "$priv:s", "token": sub_token("$priv:x")}, ("close", 3500)),
    ("another user", lambda: {"channel": "$priv:s", "token": sub_token("$priv:s", sub="bob")}, ("close", 3500)),
    ("invalid token", lambda: {"channel": "$priv:s", "token": "garbage"}, ("close", 3500)),
    ("bad signature", lambda: {"channel": "$priv:s", "token": sub_token("$priv:s", OTHER_SECRET)}, ("close", 3500)),
    ("expired token", lambda: {"channel": "$priv:s", "token": sub_token("$priv:s", exp=now(-10))}, ("error", 109)),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("params", "expected"), [c[1:] for c in SUB_REFRESH_CASES],
                         ids=[c[0] for c in SUB_REFRESH_CASES])
async def test_bad_sub_refresh(client_factory: ClientFactory, params, expected: tuple[str, int]) -> None:
    client, _ = await connected(client_factory)
    await subscribed(client, "$priv:s", sub_token("$priv:s", exp=now(60)))
    assert await outcome(client, "sub_refresh", params()) == expected


@pytest.mark.gen_test
async def test_subscription_token_info_and_data(client_factory: ClientFactory) -> None:
    client, result = await connected(client_factory)
    sub = await subscribed(client, "pres:p", sub_token("pres:p", info={"role": "mod"}, data={"welcome": True}))
    assert sub["data"] == {"welcome": True}
    presence = (await client.command("presence", {"channel": "pres:p"}))["presence"]["presence"]
    assert presence[result["client"]]["chan_info"] == {"role": "mod"}


@pytest.mark.gen_test
async def test_subscription_token_override_enables_presence(client_factory, base_url: str, gust: Gust) -> None:
    """The override adds this subscription to the channel's presence. Reading presence still follows the
    namespace (client command and server API answer 108, as in Centrifugo), so the engine is asked directly."""
    client, result = await connected(client_factory)
    await subscribed(client, "priv:o", sub_token("priv:o", override={"presence": {"value": True}}))
    await subscribed(client, "priv:n", sub_token("priv:n"))
    assert set(await gust.node.engine.presence("priv:o")) == {result["client"]}
    assert await gust.node.engine.presence("priv:n") == {}
    assert (await client.command("presence", {"channel": "priv:o"}))["error"]["code"] == 108
    assert (await api(base_url, "presence", {"channel": "priv:o"}))["error"]["code"] == 108
    await client.command("unsubscribe", {"channel": "priv:o"})
    assert await gust.node.engine.presence("priv:o") == {}


@pytest.mark.gen_test
@configured({"client": {"subscription_token": {"enabled": True, "hmac_secret_key": SUB_SECRET}}})
async def test_separate_subscription_token_key(config_overrides, client_factory: ClientFactory) -> None:
    client, _ = await connected(client_factory)  # connection tokens still use client.token
    await subscribed(client, "$priv:k", sub_token("$priv:k", SUB_SECRET))
    assert await outcome(client, "subscribe", {"channel": "$priv:j", "token": sub_token("$priv:j")}) == \
        ("error", 103)
