"""Python hooks for an embedded Gust (in place of Centrifugo's HTTP proxies): the `Hooks` set, the request and
result types each hook sees and returns, and the exceptions a hook raises to refuse.

Every hook is an optional `async` function awaited inside the command handling of the connection it concerns:
commands of one connection run one after another, so a slow hook delays only that connection. A hook raising
`Refuse` gives the client an error reply with its code; `CloseConnection` closes the connection with its code;
any other exception gives the client error 100 "internal server error" and is logged with its traceback.

Owns: `Hooks`, `UpgradeRequest`, the `*Request`/`*Result` types, `Refuse`, `CloseConnection`, `encode_json`.
May import: protocol, tornado (the upgrade request only).
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import orjson

from .protocol import ERROR_MESSAGES, Disconnect, ErrorCode, ProtocolError, ReplyError


def encode_json(value: Any) -> bytes:
    """A JSON value as the wire's raw JSON bytes."""
    return orjson.dumps(value)


class Refuse(ReplyError):
    """Raise from a hook to answer the command with an error reply: `code` (e.g. 103 permission denied, 104 method
    not found, 107 bad request, or an application code 400–1999) and `message`. The connection stays open."""

    def __init__(self, code: int = ErrorCode.PERMISSION_DENIED, message: str = "") -> None:
        known = code in ErrorCode._value2member_map_
        default = ERROR_MESSAGES[ErrorCode(code)] if known else "refused"
        super().__init__(ErrorCode.PERMISSION_DENIED, message or default, message or default)
        self.code = typing.cast(ErrorCode, code)


class CloseConnection(ProtocolError):
    """Raise from a hook to close the connection with WebSocket `code` and `reason` (≤ 123 bytes). Codes 3500–3999
    and 4500–4999 tell the SDKs not to reconnect; 3000–3499 and 4000–4499 make them reconnect."""

    def __init__(self, code: int = 3507, reason: str = "permission denied") -> None:
        super().__init__(reason, Disconnect(code, reason[:123]))
        self.code = code
        self.reason = reason


class UpgradeRequest:
    """A read-only view of the HTTP request that opened the WebSocket (the host application's cookies and
    headers are here, so its own session can authenticate the connection)."""

    __slots__ = ("_cookies", "_headers", "_signed", "path", "remote_ip")

    def __init__(
        self, headers: Mapping[str, str], path: str = "", remote_ip: str = "",
        signed_cookie: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self._headers = {k.lower(): v for k, v in headers.items()}
        self._cookies: dict[str, str] | None = None
        self._signed = signed_cookie
        self.path = path
        """The request path (with query string)."""
        self.remote_ip = remote_ip
        """The peer's address (as Tornado sees it)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The request headers, with lower-case names."""
        return self._headers

    def header(self, name: str, default: str = "") -> str:
        """One header (any case), `default` when absent."""
        return self._headers.get(name.lower(), default)

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies, name → value (unverified: use `signed_cookie` for the host app's signed ones)."""
        if self._cookies is None:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(self.header("cookie"))
            self._cookies = {name: morsel.value for name, morsel in jar.items()}
        return self._cookies

    def signed_cookie(self, name: str) -> str | None:
        """A cookie the host application set with `set_signed_cookie`, verified with its `cookie_secret`;
        None when absent, forged, expired, or when the application has no `cookie_secret`."""
        if self._signed is None:
            return None
        value = self._signed(name)
        return value.decode() if value is not None else None


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A `connect` without a token. `data`, `name` and `version` are what the SDK sent."""

    client: str
    http: UpgradeRequest
    data: Any = None
    name: str = ""
    version: str = ""
    transport: str = "websocket"
    protocol: str = "json"


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """Accept the connection as `user` ("" = anonymous). `info`: the connection info others see in presence and
    publications; `data`: returned to this client in the connect reply; `channels`: server-side subscriptions
    (their namespaces must exist); `expire_at`: unix seconds when the connection expires (0 = never; a refresh
    needs a token then)."""

    user: str
    info: Any = None
    data: Any = None
    channels: list[str] = field(default_factory=list)
    expire_at: int = 0


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A client `subscribe` without a subscription token. `data` is what the SDK sent with it."""

    client: str
    user: str
    channel: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """Allow the subscription. `info`: channel info attached to this subscriber's presence, join/leave and
    publications; `data`: returned to the client in the subscribe reply."""

    info: Any = None
    data: Any = None


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A client `publish` of `data` (decoded JSON) to `channel`."""

    client: str
    user: str
    channel: str
    data: Any


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Allow the publication; `data`, when not None, is published instead of the client's data."""

    data: Any = None


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """A client `rpc` call: `method` and `data` as the SDK sent them."""

    client: str
    user: str
    method: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class RpcResult:
    """The `rpc` reply's `data` (any JSON value; None: no `data`)."""

    data: Any = None


@dataclass(frozen=True, slots=True)
class SendRequest:
    """An asynchronous `send` message from a client (no reply)."""

    client: str
    user: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A connected client went away: `code` and `reason` of the close (the server's, or the peer's)."""

    client: str
    user: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Hooks:
    """The async functions Gust calls into the host application. Each is optional; None keeps Gust's own
    behaviour (tokens, the namespace permission rules, 108 for `rpc`, close 3508 for `send`).

    A hook returning None (where a result is expected) also falls back to that behaviour: e.g. `on_subscribe`
    returning None lets the namespace rules decide. Raise `Refuse` or `CloseConnection` to refuse."""

    on_connecting: Callable[[ConnectRequest], Awaitable[ConnectResult | None]] | None = None
    """A `connect` without token (a token, when sent, is verified as usual and this hook is not called)."""
    on_subscribe: Callable[[SubscribeRequest], Awaitable[SubscribeResult | None]] | None = None
    """A client `subscribe` without subscription token; a result allows it whatever the namespace rules say."""
    on_publish: Callable[[PublishRequest], Awaitable[PublishResult | None]] | None = None
    """A client `publish`; a result allows it whatever the namespace rules say (and may rewrite the data)."""
    on_rpc: Callable[[RpcRequest], Awaitable[RpcResult | None]] | None = None
    """A client `rpc`. Raise `Refuse(104)` for an unknown method."""
    on_send: Callable[[SendRequest], Awaitable[None]] | None = None
    """A client `send` (asynchronous message, no reply). Exceptions are logged; `CloseConnection` closes."""
    on_disconnect: Callable[[DisconnectEvent], Awaitable[None]] | None = None
    """A notification after a connected client went away (run in the background; exceptions are logged)."""
