"""The chat web app over plain HTTP (the browser tests are in test_chat_browser.py): login with XSRF and a signed
cookie, server-minted tokens, the rooms list, posting messages with the length and rate limits, security headers,
and the chat's setup (namespace, generated secrets, config errors)."""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import tornado.httpclient

from server.app import Gust
from server.chat import CSP, RateLimiter, nickname_problem
from server.chat_setup import ChatSetupError, load_or_create_secret, prepare_chat
from server.config import ConfigError

from .conftest import SECRET, make_config
from .wsclient import RawClient


class Session:
    """A cookie-keeping HTTP session against the test server, as a browser would hold one."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = {}
        self.http = tornado.httpclient.AsyncHTTPClient()

    async def request(self, path: str, method: str = "GET", body: bytes | str | None = None,
                      headers: dict[str, str] | None = None) -> tornado.httpclient.HTTPResponse:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = await self.http.fetch(self.base_url + path, method=method, body=body, headers=all_headers,
                                         follow_redirects=False, raise_error=False)
        for header in response.headers.get_list("Set-Cookie"):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if not morsel.value or "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response

    async def form_xsrf(self, path: str = "/") -> str:
        page = await self.request(path)
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())
        assert found, page.body.decode()
        return found.group(1)

    async def login(self, nickname: str) -> tornado.httpclient.HTTPResponse:
        xsrf = await self.form_xsrf()
        body = urllib.parse.urlencode({"nickname": nickname, "_xsrf": xsrf})
        return await self.request("/", "POST", body)

    async def chat_page(self) -> dict[str, str]:
        page = await self.request("/chat")
        assert page.code == 200, page.code
        return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', page.body.decode()))

    async def post_message(self, room: str, text: Any, xsrf: str | None = None) -> tornado.httpclient.HTTPResponse:
        if xsrf is None:
            xsrf = (await self.chat_page())["xsrf"]
        headers = {"Content-Type": "application/json", "X-XSRFToken": xsrf}
        return await self.request(f"/chat/rooms/{room}/messages", "POST", orjson.dumps({"text": text}), headers)


def body(response: tornado.httpclient.HTTPResponse) -> Any:
    return orjson.loads(response.body)


@pytest.fixture
def session(base_url: str) -> Session:
    return Session(base_url)


# --- login ----------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_landing_page_has_a_login_form_with_xsrf_and_security_headers(session: Session) -> None:
    page = await session.request("/")
    assert page.code == 200
    html = page.body.decode()
    assert 'name="nickname"' in html and 'name="_xsrf"' in html
    assert page.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script...
    assert not re.search(r"\son[a-z]+=", html)  # ...and no inline event handlers


@pytest.mark.gen_test
async def test_login_sets_a_signed_httponly_cookie_and_redirects_to_the_chat(session: Session) -> None:
    response = await session.login("alice")
    assert response.code == 302
    assert response.headers["Location"] == "/chat"
    set_cookie = [h for h in response.headers.get_list("Set-Cookie") if h.startswith("gust_user=")]
    assert set_cookie and "HttpOnly" in set_cookie[0] and "SameSite=Lax" in set_cookie[0]
    assert session.cookies["gust_user"] != "alice" and "|" in session.cookies["gust_user"]  # signed, not plain
    data = await session.chat_page()
    assert data["user"] == "alice"
    again = await session.request("/")
    assert again.code == 302 and again.headers["Location"] == "/chat"


@pytest.mark.gen_test
async def test_login_without_xsrf_is_refused(session: Session) -> None:
    response = await session.request("/", "POST", urllib.parse.urlencode({"nickname": "alice"}))
    assert response.code == 403
    assert "gust_user" not in session.cookies


@pytest.mark.gen_test
async def test_forged_cookie_is_not_a_login(session: Session) -> None:
    session.cookies["gust_user"] = "alice"
    response = await session.request("/chat")
    assert response.code == 302 and response.headers["Location"] == "/"
    token = await session.request("/chat/token")
    assert token.code == 401 and body(token)["error"]["code"] == "login_required"


@pytest.mark.parametrize("nick, fragment", [
    ("", "pick a nickname"), ("a", "2 to 24"), ("x" * 25, "2 to 24"), ("bad nick", "Use letters"),
    ("<img src=x>", "Use letters"), ("-dash", "starting with"), ("_under", "starting with"),
])
@pytest.mark.gen_test
async def test_bad_nicknames_get_a_clear_message(session: Session, nick: str, fragment: str) -> None:
    response = await session.login(nick)
    assert response.code == 400
    html = response.body.decode()
    assert fragment in html.replace("&#39;", "'")
    assert "<img src=x>" not in html  # the refused value is shown escaped
    assert "gust_user" not in session.cookies


def test_good_nicknames() -> None:
    for nick in ("al", "Alice_1", "bob.smith", "zoë", "日本語", "x" * 24, "a-b"):
        assert nickname_problem(nick) == "", nick


@pytest.mark.gen_test
async def test_logout_needs_xsrf_and_clears_the_cookie(session: Session) -> None:
    await session.login("alice")
    refused = await session.request("/logout", "POST", "")
    assert refused.code == 403
    xsrf = (await session.chat_page())["xsrf"]
    response = await session.request("/logout", "POST", urllib.parse.urlencode({"_xsrf": xsrf}))
    assert response.code == 302 and response.headers["Location"] == "/"
    assert "gust_user" not in session.cookies
    assert (await session.request("/chat")).code == 302


# --- tokens ---------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_page_token_and_token_endpoint_are_valid_connection_tokens(session: Session, gust: Gust,
                                                                          ws_url: str) -> None:
    await session.login("alice")
    data = await session.chat_page()
    fresh = body(await session.request("/chat/token"))["token"]
    for token in (data["token"], fresh):
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert claims["sub"] == "alice" and claims["info"] == {"name": "alice"}
        assert claims["exp"] > 0
    client = await RawClient.open(ws_url)
    try:
        reply = await client.connect(token=fresh)
        assert reply["connect"]["expires"] is True
        sub = await client.command("subscribe", {"channel": "room:lobby"})
        assert sub["subscribe"]["recoverable"] is True
    finally:
        client.close()


# --- messages ---------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_posted_message_is_published_to_the_room_with_its_author(session: Session, ws_url: str) -> None:
    await session.login("alice")
    token = body(await session.request("/chat/token"))["token"]
    client = await RawClient.open(ws_url)
    try:
        await client.connect(token=token)
        await client.command("subscribe", {"channel": "room:lobby"})
        response = await session.post_message("lobby", "  hello <b>world</b>  ")
        assert response.code == 200 and body(response)["offset"] == 1
        push = await client.push("pub")
        data = push["pub"]["data"]
        assert data["text"] == "hello <b>world</b>" and data["user"] == "alice" and data["time"] > 0
        history = await client.command("history", {"channel": "room:lobby", "limit": 50})
        assert [p["data"]["text"] for p in history["history"]["publications"]] == ["hello <b>world</b>"]
    finally:
        client.close()


@pytest.mark.gen_test
async def test_browsers_cannot_publish_into_rooms_directly(session: Session, ws_url: str) -> None:
    await session.login("mallory")
    token = body(await session.request("/chat/token"))["token"]
    client = await RawClient.open(ws_url)
    try:
        await client.connect(token=token)
        await client.command("subscribe", {"channel": "room:lobby"})
        reply = await client.command("publish", {"channel": "room:lobby", "data": {"text": "x", "user": "alice"}})
        assert reply["error"]["code"] == 103
    finally:
        client.close()


@pytest.mark.gen_test
async def test_message_limits_and_errors(session: Session) -> None:
    await session.login("alice")
    xsrf = (await session.chat_page())["xsrf"]
    long = await session.post_message("lobby", "x" * 1001, xsrf)
    assert long.code == 413
    assert body(long)["error"] == {"code": "too_long", "limit": 1000,
                                   "message": "Messages can be at most 1000 characters (this one has 1001)."}
    assert (await session.post_message("lobby", "x" * 1000, xsrf)).code == 200
    empty = await session.post_message("lobby", "   ", xsrf)
    assert empty.code == 400 and body(empty)["error"]["code"] == "empty"
    not_text = await session.post_message("lobby", 5, xsrf)
    assert not_text.code == 400 and body(not_text)["error"]["code"] == "bad_request"
    bad_room = await session.post_message("Bad%20Room", "hi", xsrf)
    assert bad_room.code == 400 and body(bad_room)["error"]["code"] == "bad_room"
    no_xsrf = await session.request("/chat/rooms/lobby/messages", "POST", b'{"text":"hi"}')
    assert no_xsrf.code == 403


@pytest.mark.gen_test
async def test_rate_limit_gives_429_with_retry_after(session: Session) -> None:
    await session.login("alice")
    xsrf = (await session.chat_page())["xsrf"]
    codes = [(await session.post_message("lobby", f"m{i}", xsrf)).code for i in range(5)]
    assert codes == [200] * 5  # the burst
    limited = await session.post_message("lobby", "one too many", xsrf)
    assert limited.code == 429
    error = body(limited)["error"]
    assert error["code"] == "rate_limited" and "too fast" in error["message"]
    assert int(limited.headers["Retry-After"]) == error["retry_after"] >= 1
    other = Session(session.base_url)
    await other.login("bob")
    assert (await other.post_message("lobby", "bob is not limited")).code == 200


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(burst=2, per_minute=60, clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(1.0)
    now[0] = 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] = 1.5
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0


@pytest.mark.gen_test
async def test_anonymous_requests_to_endpoints_get_401_json(session: Session) -> None:
    for path, method, payload in (("/chat/token", "GET", None), ("/chat/rooms", "GET", None)):
        response = await session.request(path, method, payload)
        assert response.code == 401 and body(response)["error"]["code"] == "login_required"
    xsrf = await session.form_xsrf()
    response = await session.post_message("lobby", "hi", xsrf)
    assert response.code == 401


# --- rooms list -------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_rooms_with_people_come_first_with_user_counts(session: Session, ws_url: str) -> None:
    await session.login("alice")
    clients = []
    try:
        for user, room in (("u1", "zebra"), ("u2", "zebra"), ("u2", "zebra"), ("u3", "alpha")):
            token = jwt.encode({"sub": user}, SECRET, algorithm="HS256")
            client = await RawClient.open(ws_url)
            clients.append(client)
            await client.connect(token=token)
            await client.command("subscribe", {"channel": f"room:{room}"})
        rooms = body(await session.request("/chat/rooms"))["rooms"]
        assert rooms == [{"name": "zebra", "users": 2}, {"name": "alpha", "users": 1}, {"name": "lobby", "users": 0}]
    finally:
        for client in clients:
            client.close()


# --- setup ------------------------------------------------------------------------------------------------


def test_chat_adds_its_namespace_and_generates_owner_only_secrets(tmp_path: Path) -> None:
    config = make_config({"data_dir": str(tmp_path / "d"), "client": {"token": {"hmac_secret_key": ""}}})
    setup = prepare_chat(config)
    ns = setup.config.namespace_options("room")
    assert ns is not None and ns.presence and ns.join_leave and ns.history_enabled and ns.force_recovery
    assert not ns.allow_publish_for_client and not ns.allow_publish_for_subscriber
    assert setup.config.client.token.hmac_secret_key == setup.token_key
    for name in ("chat_token_key", "cookie_secret"):
        mode = stat.S_IMODE(os.stat(tmp_path / "d" / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
    again = prepare_chat(config)  # the same secrets on the next start: cookies and tokens stay valid
    assert (again.token_key, again.cookie_secret) == (setup.token_key, setup.cookie_secret)
    assert setup.token_key != setup.cookie_secret


def test_configured_keys_and_secrets_are_used(tmp_path: Path) -> None:
    config = make_config({"data_dir": str(tmp_path / "d"), "chat": {"cookie_secret": "c" * 40}})
    setup = prepare_chat(config)
    assert setup.token_key == SECRET and setup.cookie_secret == "c" * 40
    assert not (tmp_path / "d").exists()


def test_chat_namespace_without_what_the_chat_needs_is_a_config_error(tmp_path: Path) -> None:
    config = make_config({"data_dir": str(tmp_path), "channel": {"namespaces": [{"name": "room"}]}})
    with pytest.raises(ConfigError) as err:
        prepare_chat(config)
    assert err.value.key == "chat.namespace" and "presence" in str(err.value)


def test_rsa_only_token_config_cannot_mint_chat_tokens(tmp_path: Path) -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
    config = make_config({"data_dir": str(tmp_path), "client": {"token": {"hmac_secret_key": "",
                                                                          "ecdsa_public_key": pem}}})
    with pytest.raises(ConfigError) as err:
        prepare_chat(config)
    assert err.value.key == "chat.enabled"


def test_unusable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cookie_secret"
    path.write_text("short")
    with pytest.raises(ChatSetupError, match="delete it"):
        load_or_create_secret(path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ChatSetupError, match="cannot read or create"):
        load_or_create_secret(blocker / "cookie_secret")


@pytest.mark.parametrize("key, value", [
    ("max_message_length", 0), ("message_rate_burst", 0), ("message_rate_per_minute", -1), ("token_ttl", "5s"),
    ("default_rooms", ["Bad Room"]), ("namespace", "x"),
])
def test_chat_config_validation(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        make_config({"chat": {key: value}})
    assert err.value.key.startswith("chat.")


@pytest.mark.parametrize("config_overrides", [{"chat": {"enabled": False}}])
@pytest.mark.gen_test
async def test_without_the_chat_the_index_is_the_status_page(session: Session,
                                                              config_overrides: dict[str, Any]) -> None:
    page = await session.request("/")
    assert page.code == 200 and "/connection/websocket" in page.body.decode()
    assert (await session.request("/chat")).code == 404
