"""`ClientSession`: one client connection's protocol state machine. Bytes in (`handle_frame`), frames out
through a `Transport`; no Tornado import, so it runs under a fake transport in tests.

Owns: the connection state (`State`), per-subscription state (`Subscription`), command dispatch, the bounded
outgoing buffer coalesced into one newline-joined frame per IOLoop turn, server pings and pong deadlines, the
stale timer and connection expiry. Permission checks for subscribe/publish/history/presence live in
`handlers.py`. May import: model, protocol, auth, channels, node, config, hooks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from . import __version__
from .auth import Claims, KeysUnavailable, TokenExpired, TokenInvalid, TokenVerifier, lifetime_over
from .config import Config
from .engines import EngineError
from .hooks import DisconnectEvent, Hooks, SendRequest, UpgradeRequest
from .limits import CommandLimiter, Verdict
from .model import ClientInfo, Publication
from .node import Node
from .protocol import (
    PING_FRAME,
    Command,
    Disconnect,
    Disconnects,
    ErrorCode,
    ProtocolError,
    ReplyError,
    decode_command,
    encode_error,
    encode_pub_push,
    encode_reply,
    encode_unsubscribe_push,
    request_object,
    split_frame,
)

log = logging.getLogger("gust.session")
T = TypeVar("T")
SERVER_VERSION = f"gust {__version__}"
UNSUBSCRIBE_INSUFFICIENT_STATE = (2500, "insufficient state")
UNSUBSCRIBE_SERVER = (2000, "server unsubscribe")
UNSUBSCRIBE_EXPIRED = (2501, "subscription expired")


class Transport(Protocol):
    """How a session reaches its peer. `write` sends one text frame; `close` sends a close frame."""

    def write(self, payload: bytes, framed: bytes | None = None) -> int:
        """Send `payload` as one text frame; `framed` is that frame already built (shared by many sessions).
        Returns `pending_bytes()` after the write."""
        ...

    def close(self, code: int, reason: str) -> None: ...

    def pending_bytes(self) -> int:
        """Bytes handed to `write` that the peer has not taken yet."""
        ...


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class SubState(enum.Enum):
    SUBSCRIBING = "subscribing"  # live publications are buffered, not sent
    LIVE = "live"


class Subscription:
    __slots__ = (
        "buffer",
        "channel",
        "epoch",
        "expire_at",
        "expiry_timer",
        "info",
        "join_leave",
        "offset",
        "positioned",
        "presence",
        "push_join_leave",
        "recoverable",
        "server_side",
        "state",
    )

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.state = SubState.SUBSCRIBING
        self.buffer: list[Publication] = []
        self.positioned = False
        self.recoverable = False
        self.push_join_leave = False
        self.presence = False
        self.join_leave = False
        self.offset = 0
        self.epoch = ""
        self.info: ClientInfo | None = None
        self.server_side = False
        self.expire_at = 0
        self.expiry_timer: asyncio.TimerHandle | None = None


Handler = Callable[["ClientSession", dict[str, Any]], Awaitable[dict[str, Any]]]


class ClientSession:
    """A connection's protocol state. Commands of one connection run strictly one after another."""

    __slots__ = (  # thousands of these live at once: no per-instance __dict__
        "_deferred", "_flush_queued", "_loop", "_out", "_out_bytes", "_out_framed", "_pong_due", "_room", "_tasks",
        "_timers",
        "client_id", "close_code", "config", "conn_info", "expire_at", "handlers", "hooks", "http", "limiter", "meta",
        "node", "state", "sub_verifier", "subs", "transport", "user", "verifier",
    )

    def __init__(
        self, node: Node, transport: Transport, verifier: TokenVerifier, handlers: dict[str, Handler],
        sub_verifier: TokenVerifier | None = None, hooks: Hooks | None = None, http: UpgradeRequest | None = None,
    ):
        self.node = node
        self.hooks = hooks or Hooks()  # the embedding application's hooks (server/hooks.py); all None when not embedded
        self.http = http  # the upgrade request, for `hooks.on_connecting`
        self.config: Config = node.config
        self.transport = transport
        self.verifier = verifier
        self.sub_verifier = sub_verifier or verifier
        self.handlers = handlers
        self.state = State.CONNECTING
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.conn_info: bytes | None = None
        self.meta: bytes | None = None
        self.expire_at = 0
        self.subs: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._out_framed: bytes | None = None  # the WebSocket frame of `_out[0]` while it is alone
        self._flush_queued = False
        self._room = self.config.client.queue_max_size  # queue_max_size − bytes the transport held at the last flush
        self._loop = asyncio.get_running_loop()
        self._pong_due: asyncio.TimerHandle | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] | None = None  # created by the first `spawn`
        self._deferred: list[Callable[[], Awaitable[None]]] = []
        rate_limit = self.config.client.command_rate_limit
        self.limiter = CommandLimiter(rate_limit) if rate_limit.rate > 0 else None
        self._set_timer("stale", self.config.client.stale_close_delay, self._on_stale)

    # --- inbound -------------------------------------------------------------------------------------------

    async def handle_frame(self, frame: bytes | str) -> None:
        """Process every command of one frame, in order. Never raises."""
        for line in split_frame(frame):
            if self.state is State.CLOSED:
                return
            try:
                cmd = decode_command(line)
            except ProtocolError as exc:
                self._protocol_violation(exc)
                return
            await self._handle_command(cmd)

    async def _handle_command(self, cmd: Command) -> None:
        if cmd.method == "":
            self._on_pong()
            return
        if not self._admit(cmd.id):
            return
        if cmd.method == "send":
            await self._handle_send(cmd)
            return
        connected = self.state is State.CONNECTED
        if (cmd.method == "connect") == connected:
            detail = "client already authenticated" if connected else f"expected connect, got {cmd.method}"
            self._protocol_violation(ProtocolError(detail))
            return
        started = time.perf_counter()
        try:
            result = await self._dispatch(cmd)
        finally:
            deferred, self._deferred = self._deferred, []
            self.node.metrics.command("client", cmd.method, time.perf_counter() - started)
        if result is None or self.state is State.CLOSED:
            return
        self.enqueue(encode_reply(cmd.id, cmd.method, result))
        for step in deferred:
            await step()

    async def _dispatch(self, cmd: Command) -> dict[str, Any] | None:
        """Run the command's handler: its result, or None when it failed (error reply queued, or closed)."""
        handler = self.handlers.get(cmd.method)
        try:
            if handler is None:
                raise ReplyError(ErrorCode.NOT_AVAILABLE, f"{cmd.method} is not available")
            return await handler(self, request_object(cmd.method, cmd.params))
        except ReplyError as exc:
            log.debug("client %s: %s error %d: %s", self.client_id, cmd.method, exc.code, exc)
            self.reply_error(cmd.id, exc)
        except ProtocolError as exc:
            self._protocol_violation(exc)
        except EngineError as exc:
            log.warning("client %s: %s: engine error: %s", self.client_id, cmd.method, exc)
            self.node.metrics.engine_error(cmd.method)
            self.reply_error(cmd.id, ReplyError(ErrorCode.INTERNAL))
        except Exception:
            log.exception("client %s: %s failed", self.client_id, cmd.method)
            self.reply_error(cmd.id, ReplyError(ErrorCode.INTERNAL))
        return None

    async def _handle_send(self, cmd: Command) -> None:
        """An asynchronous message: to `hooks.on_send` (no reply; errors are logged). Without that hook
        Centrifuge closes with 3508."""
        on_send = self.hooks.on_send
        if on_send is None:
            self.close(Disconnects.NOT_AVAILABLE)
            return
        if self.state is not State.CONNECTED:
            self._protocol_violation(ProtocolError("expected connect, got send"))
            return
        data = cmd.params.get("data") if isinstance(cmd.params, dict) else None
        started = time.perf_counter()
        try:
            await on_send(SendRequest(self.client_id, self.user, data))
        except ProtocolError as exc:
            self._protocol_violation(exc)
        except Exception:
            log.exception("client %s: send hook failed", self.client_id)
        finally:
            self.node.metrics.command("client", "send", time.perf_counter() - started)

    def reply_error(self, cmd_id: int, exc: ReplyError) -> None:
        self.node.metrics.error("client", exc.code)
        self.enqueue(encode_error(cmd_id, exc))

    def _admit(self, cmd_id: int) -> bool:
        """`client.command_rate_limit`: False when the command is refused (error 111) or the client closed (3013)."""
        if self.limiter is None:
            return True
        verdict = self.limiter.check()
        if verdict is Verdict.CLOSE:
            log.info("client %s: %d commands over the rate limit in a row", self.client_id,
                     self.limiter.refused_in_a_row)
            self.close(Disconnects.TOO_MANY_REQUESTS)
        elif verdict is Verdict.REFUSE and cmd_id:
            self.reply_error(cmd_id, ReplyError(ErrorCode.TOO_MANY_REQUESTS))
        return verdict is Verdict.ALLOW

    def on_transport_ping(self) -> None:
        """A WebSocket ping frame (Tornado answers it): it spends a command token, so a ping flood ends in 3013."""
        if self.state is not State.CLOSED:
            self._admit(0)

    def after_reply(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` once the current command's successful reply is queued (e.g. go live, send a join)."""
        self._deferred.append(step)

    def _protocol_violation(self, exc: ProtocolError) -> None:
        log.info("client %s: protocol violation: %s", self.client_id, exc)
        self.close(exc.disconnect)

    # --- connection lifecycle ----------------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Claims | None:
        """Verify a connect's token (None: anonymous, when allowed). Changes nothing on the session: the
        caller applies the claims with `accept` once every check has passed."""
        client = self.config.client
        if not token:
            if not (client.allow_anonymous_connect_without_token or client.insecure):
                raise ProtocolError("client credentials not found")
            return None
        claims = await verify_token(self.verifier.verify_connection(token), on_expired=ReplyError(
            ErrorCode.TOKEN_EXPIRED))
        if not claims.user and client.disallow_anonymous_connection_tokens:
            raise ProtocolError("anonymous connection tokens are disallowed", Disconnects.PERMISSION_DENIED)
        return claims

    def check_user_connection_limit(self, user: str) -> None:
        limit = self.config.client.user_connection_limit
        if limit and user and self.node.hub.num_user_sessions(user) >= limit:
            raise ProtocolError(f"user {user!r} has {limit} connections", Disconnects.CONNECTION_LIMIT)

    def accept(self, claims: Claims | None) -> None:
        """Take the connection's identity from `claims` (anonymous when None) and join the hub."""
        if claims is not None:
            self.user, self.conn_info, self.meta = claims.user, claims.info, claims.meta
            self.set_expiry(claims.expire_at)
        self.mark_connected()

    def set_expiry(self, expire_at: int) -> None:
        self.expire_at = expire_at
        self._cancel_timer("expire")
        if expire_at:
            delay = max(0.0, expire_at - time.time()) + self.config.client.expired_close_delay
            self._set_timer("expire", delay, lambda: self.close(Disconnects.EXPIRED))

    def ttl(self) -> int:
        return ttl_of(self.expire_at)

    def mark_connected(self) -> None:
        self.state = State.CONNECTED
        log.info("client %s connected: user %r", self.client_id, self.user)
        self._cancel_timer("stale")
        self.node.hub.add_session(self)
        interval = self.config.client.ping_interval
        self._set_timer("ping", random.uniform(interval / 2, interval), self._send_ping)

    def connect_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "client": self.client_id,
            "version": SERVER_VERSION,
            "ping": max(1, int(self.config.client.ping_interval)),
            "pong": True,
        }
        if self.expire_at:
            result["expires"] = True
            result["ttl"] = self.ttl()
        return result

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, self.conn_info)

    def _on_stale(self) -> None:
        if self.state is State.CONNECTING:
            log.info("client %s: no connect within %.0fs", self.client_id, self.config.client.stale_close_delay)
            self.close(Disconnects.STALE)

    def _send_ping(self) -> None:
        if self.state is not State.CONNECTED:
            return
        self.enqueue(PING_FRAME)
        if self._pong_due is None:
            self._pong_due = self._loop.call_later(self.config.client.pong_timeout, self._on_no_pong)
        self._set_timer("ping", self.config.client.ping_interval, self._send_ping)

    def _on_pong(self) -> None:
        if self._pong_due is None:
            self._protocol_violation(ProtocolError("unexpected pong"))
            return
        self._pong_due.cancel()
        self._pong_due = None

    def _on_no_pong(self) -> None:
        self._pong_due = None
        log.info("client %s: no pong within %.1fs", self.client_id, self.config.client.pong_timeout)
        self.close(Disconnects.NO_PONG)

    def _set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer(name)
        self._timers[name] = self._loop.call_later(delay, callback)

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def close(self, disconnect: Disconnect) -> None:
        """Flush what is queued, close the transport with `disconnect`, release everything. Idempotent."""
        if self.state is State.CLOSED:
            return
        self._flush_queued = False
        if self._out:
            self._write_out()  # what is queued goes out before the close frame, over the limit or not
        self.close_code = disconnect.code
        self.transport.close(disconnect.code, disconnect.reason)
        self._ended(disconnect.code, disconnect.reason, by_peer=False)
        self._release()

    def on_transport_closed(self, code: int = 1006, reason: str = "", by_peer: bool = True) -> None:
        """The connection ended without `close`: the peer closed it (`code` from its close frame, 1006 with none)
        or the transport did (`by_peer` False, e.g. 1009 for a message over the size limit)."""
        if self.state is not State.CLOSED:
            self._ended(code, reason, by_peer)
            self._release()

    def _ended(self, code: int, reason: str, by_peer: bool) -> None:
        """The lifecycle log line and the disconnect metric (a peer's own codes are folded into "other")."""
        self.node.metrics.disconnect(str(code) if not by_peer or code in (1000, 1001, 1006) else "other")
        log.info("client %s disconnected: user %r, code %d %r%s", self.client_id, self.user, code, reason[:123],
                 " (by the peer)" if by_peer else "")
        on_disconnect = self.hooks.on_disconnect
        if on_disconnect is not None and self.state is State.CONNECTED:
            self.spawn(self._notify_disconnect(on_disconnect, DisconnectEvent(self.client_id, self.user, code, reason)))

    async def _notify_disconnect(
        self, hook: Callable[[DisconnectEvent], Awaitable[None]], event: DisconnectEvent
    ) -> None:
        try:
            await hook(event)
        except Exception:
            log.exception("client %s: disconnect hook failed", self.client_id)

    def _release(self) -> None:
        was_connected = self.state is State.CONNECTED
        self.state = State.CLOSED
        for name in list(self._timers):
            self._cancel_timer(name)
        if self._pong_due is not None:
            self._pong_due.cancel()
            self._pong_due = None
        self._drop_queue()
        if was_connected:
            self.node.hub.remove_session(self)
        subs, self.subs = list(self.subs.values()), {}
        if subs:
            self.spawn(self._leave_all(subs))

    async def _leave_all(self, subs: list[Subscription]) -> None:
        for sub in subs:
            await self.leave_channel(sub)

    def set_sub_expiry(self, sub: Subscription, expire_at: int) -> None:
        """Unsubscribe with 2501 when `expire_at` (plus the grace period) passes without a `sub_refresh`."""
        sub.expire_at = expire_at
        if sub.expiry_timer is not None:
            sub.expiry_timer.cancel()
            sub.expiry_timer = None
        if expire_at:
            delay = max(0.0, expire_at - time.time()) + self.config.client.expired_sub_close_delay
            sub.expiry_timer = self._loop.call_later(delay, self._on_sub_expired, sub)

    def _on_sub_expired(self, sub: Subscription) -> None:
        sub.expiry_timer = None
        if self.subs.get(sub.channel) is not sub:
            return
        log.info("client %s: subscription to %s expired", self.client_id, sub.channel)
        self._unsubscribe_with(sub.channel, UNSUBSCRIBE_EXPIRED)

    async def leave_channel(self, sub: Subscription, announce: bool = True) -> None:
        """Undo a subscription: hub entry, presence, then a leave event. Errors are logged, not raised."""
        if sub.expiry_timer is not None:
            sub.expiry_timer.cancel()
            sub.expiry_timer = None
        try:
            await self.node.unsubscribe(self, sub.channel)
            if sub.presence:
                await self.node.remove_presence(sub.channel, self.client_id)
            if announce and sub.join_leave and sub.info is not None:
                await self.node.leave(sub.channel, sub.info)
        except Exception:
            log.exception("client %s: cleanup of %s failed", self.client_id, sub.channel)

    async def wait_released(self) -> None:
        """Wait for the cleanup tasks a close started (unsubscribe, presence removal, leave events)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- outbound ----------------------------------------------------------------------------------------------

    def enqueue(self, frame: bytes, framed: bytes | None = None) -> None:
        """Queue one reply or push (`framed`: its WebSocket frame, when the hub built it once for everyone);
        everything queued in one IOLoop turn goes out as one frame."""
        if self.state is State.CLOSED:
            return
        out = self._out
        out.append(frame)
        self._out_framed = framed if len(out) == 1 else None
        self._out_bytes += len(frame) + 1
        if self._out_bytes > self._room and self._over_limit():
            return
        if not self._flush_queued:
            self._flush_queued = True
            self.node.hub.flushes.add(self)

    def _over_limit(self) -> bool:
        """The queue plus what the transport still holds passes `client.queue_max_size`: close with 3008.
        `_room` is from the last flush and the transport only drains since, so it is re-read before deciding."""
        self._room = self.config.client.queue_max_size - self.transport.pending_bytes()
        if self._out_bytes <= self._room:
            return False
        self._drop_queue()
        self._too_slow()
        return True

    def _drop_queue(self) -> None:
        self._out.clear()
        self._out_framed = None
        self._out_bytes = 0

    def _too_slow(self) -> None:
        log.info("client %s: outgoing queue over %d bytes", self.client_id, self.config.client.queue_max_size)
        self.close(Disconnects.SLOW)

    def flush(self) -> None:
        """Write everything queued as one text frame. Called once per turn by the hub's `FlushQueue`. Closes with
        3008 when the transport then holds over `client.queue_max_size`."""
        self._flush_queued = False
        if self._out and self._write_out() < 0 and self.state is not State.CLOSED:
            self._too_slow()

    def _write_out(self) -> int:
        """Write the queue as one `\n`-joined text frame; returns the room left under queue_max_size."""
        out = self._out
        if len(out) == 1:
            pending = self.transport.write(out[0], self._out_framed)
        else:
            pending = self.transport.write(b"\n".join(out))
        self._drop_queue()
        self._room = self.config.client.queue_max_size - pending
        return self._room

    # --- deliveries from the hub (synchronous, never await) --------------------------------------------------

    def deliver_publication(self, channel: str, pub: Publication, frame: bytes, framed: bytes | None = None) -> None:
        sub = self.subs.get(channel)
        if sub is None:
            return
        if sub.state is SubState.SUBSCRIBING:
            sub.buffer.append(pub)
            return
        if sub.positioned and pub.offset:
            if pub.offset <= sub.offset:
                return
            if pub.offset != sub.offset + 1:
                self.insufficient_state(sub)
                return
            sub.offset = pub.offset
        self.enqueue(frame, framed)

    def deliver_join_leave(self, channel: str, frame: bytes) -> None:
        sub = self.subs.get(channel)
        if sub is not None and sub.push_join_leave and sub.state is SubState.LIVE:
            self.enqueue(frame)

    def send_buffered(self, sub: Subscription) -> None:
        """Go live: push what arrived during subscribe, through the same position checks as live traffic."""
        sub.state = SubState.LIVE
        pubs, sub.buffer = sub.buffer, []
        for pub in pubs:
            self.deliver_publication(sub.channel, pub, encode_pub_push(sub.channel, pub))

    def lost_position(self, channel: str) -> None:
        sub = self.subs.get(channel)
        if sub is not None and sub.positioned and sub.state is SubState.LIVE:
            self.insufficient_state(sub)

    def server_unsubscribe(self, channel: str) -> bool:
        """Unsubscribe by the server (HTTP API): push code 2000 "server unsubscribe"."""
        return self._unsubscribe_with(channel, UNSUBSCRIBE_SERVER)

    def insufficient_state(self, sub: Subscription) -> None:
        """A gap in a positioned stream: unsubscribe with 2500 so the SDK resubscribes and recovers."""
        log.info("client %s: insufficient state in %s", self.client_id, sub.channel)
        self._unsubscribe_with(sub.channel, UNSUBSCRIBE_INSUFFICIENT_STATE)

    def _unsubscribe_with(self, channel: str, code_reason: tuple[int, str]) -> bool:
        """End the subscription to `channel` from the server side: an unsubscribe push with `code_reason`,
        then cleanup. False when not subscribed."""
        sub = self.subs.pop(channel, None)
        if sub is None:
            return False
        code, reason = code_reason
        self.enqueue(encode_unsubscribe_push(channel, code, reason))
        self.spawn(self.leave_channel(sub))
        return True


async def verify_token(verifying: Awaitable[T], on_expired: Exception, on_invalid: Exception | None = None) -> T:
    """Await a token verification, mapping token problems to what the client gets: `on_expired` when `exp` has
    passed, `on_invalid` (default: close 3500) when invalid, a temporary internal error (100) when the JWKS
    cannot be fetched, and error 110 when the token's `expire_at` lifetime is already over."""
    try:
        claims = await verifying
    except TokenExpired:
        raise on_expired from None
    except TokenInvalid as exc:
        raise on_invalid or ProtocolError(str(exc), Disconnects.INVALID_TOKEN) from None
    except KeysUnavailable as exc:
        raise ReplyError(ErrorCode.INTERNAL, str(exc)) from None
    if lifetime_over(getattr(claims, "expire_at", 0)):
        raise ReplyError(ErrorCode.EXPIRED, "the token's expire_at has passed")
    return claims


def ttl_of(expire_at: int) -> int:
    """Whole seconds left until `expire_at` (as Centrifuge counts them: `expire_at - now` in unix seconds)."""
    return max(0, expire_at - int(time.time())) if expire_at else 0
