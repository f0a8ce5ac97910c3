"""The Tornado `WebSocketHandler` at `/connection/websocket`: origin check, and an adapter that turns
`write_message`/`close` into the session's `Transport`. All protocol logic lives in `session.py`.

May import: session, handlers, node, auth, config, limits, lifecycle, hooks, tornado.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import tornado.httputil
import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import IOStream

from .auth import TokenVerifier
from .hooks import Hooks, UpgradeRequest
from .lifecycle import Drain
from .limits import ConnectionGate
from .node import Node
from .outbound import ws_text_frame
from .session import ClientSession, Handler

log = logging.getLogger("gust.websocket")


class TornadoTransport:
    """`Transport` over a `WebSocketHandler`: writes complete frames straight to the connection's IOStream.

    Fast path (`_write_fast`, the only place that touches Tornado internals): when the stream has nothing
    buffered, the frame goes to the socket at once (plain TCP: `socket.send` itself; TLS: `write_to_fd`): no
    Future, no task, no callback per write; whatever the kernel does not take is handed to the public
    `IOStream.write`, which buffers it in order. Pending bytes are the stream's own write buffer. If a Tornado
    release changes those internals, the transport falls back to the public `write_message` path
    (tests/test_outbound.py fails loudly then).
    """

    __slots__ = ("_handler", "_pending", "_send", "_stream")

    def __init__(self, handler: tornado.websocket.WebSocketHandler) -> None:
        self._handler = handler
        self._pending = 0  # bytes in flight on the public path only
        self._stream = stream = _fast_stream(handler)
        self._send: Callable[[bytes], int] | None = None
        if stream is not None:  # a plain socket: send directly; TLS: through the stream's own SSL error handling
            self._send = stream.socket.send if type(stream) is IOStream else (
                lambda frame: stream.write_to_fd(memoryview(frame)))

    @property
    def fast(self) -> bool:
        return self._stream is not None

    def write(self, payload: bytes, framed: bytes | None = None) -> int:
        conn = self._handler.ws_connection
        if conn is None or conn.is_closing():
            return 0
        stream, send = self._stream, self._send
        if stream is not None and send is not None:
            return _write_fast(stream, send, framed if framed is not None else ws_text_frame(payload))
        future = self._handler.write_message(payload)  # public path: bytes with binary=False = a text frame
        size = len(payload)
        self._pending += size
        future.add_done_callback(lambda f: self._written(f, size))
        return self._pending

    def _written(self, future: Future[None], size: int) -> None:
        self._pending -= size
        if not future.cancelled():
            future.exception()  # retrieve it: a closed stream is handled by on_close

    def close(self, code: int, reason: str) -> None:
        self._handler.close(code, reason)

    def pending_bytes(self) -> int:
        if self._stream is not None:
            return len(self._stream._write_buffer)
        return self._pending


def _fast_stream(handler: tornado.websocket.WebSocketHandler) -> IOStream | None:
    """The connection's IOStream when the fast path's assumptions about it hold, else None."""
    conn = handler.ws_connection
    stream = getattr(conn, "stream", None)
    if not isinstance(stream, IOStream) or not hasattr(stream, "_write_buffer"):
        return None
    try:
        len(stream._write_buffer)
    except TypeError:
        return None
    return stream


def _write_fast(stream: IOStream, send: Callable[[bytes], int], frame: bytes) -> int:
    """Write `frame` in order with what is already queued on `stream`, without a Future when the socket takes
    it all at once (the common case: nothing buffered, room in the kernel's send buffer). Returns the bytes
    left in the stream's buffer. The caller has checked that the connection is not closing."""
    if not len(stream._write_buffer):
        try:
            sent = send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # let the public path below meet the error and close the stream the usual way
        if sent == len(frame):
            return 0
        frame = frame[sent:]
    stream.write(frame)  # buffers the rest and writes it when the socket is writable; errors close the stream
    return len(stream._write_buffer)


def origin_allowed(origin: str, host: str, patterns: tuple[str, ...]) -> bool:
    """Centrifugo's `client.allowed_origins`: glob patterns; without any, only the same host is allowed."""
    if not patterns:
        return urlsplit(origin).netloc.lower() == host.lower()
    origin = origin.lower()
    return any(fnmatch.fnmatchcase(origin, p.lower()) for p in patterns)


class RecordingProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's protocol, remembering the close code Tornado itself sends (1009 "message too big"), so the
    disconnect is logged and counted with it. Tested by the oversized-frame test (metric `code="1009"`).

    It also runs Tornado's frame-reading loop as a task of its own (`reader`) instead of awaiting it at the end of
    the upgrade: the handler's `get()`, `_execute()` and the upgrade coroutines then finish right after `open()`
    instead of staying suspended, with their Task, frames and callbacks, for the connection's whole life (about
    1.4 KiB per idle connection). tests/test_outbound.py checks that this still happens on the installed Tornado.
    """

    sent_close: tuple[int, str] | None = None
    reader: asyncio.Task[None] | None = None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code is not None and self.sent_close is None and not (self.server_terminated or self.client_terminated):
            self.sent_close = (code, reason or "")
        super().close(code, reason)

    def _receive_frame_loop(self) -> asyncio.Future[None]:  # type: ignore[override]
        self.reader = asyncio.ensure_future(super()._receive_frame_loop())
        self.reader.add_done_callback(self._reader_done)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started.set_result(None)
        return started

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        """Log what would have reached `_execute` (the loop handles a closed stream itself), as Tornado does."""
        self.reader = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.handler.log_exception(type(exc), exc, exc.__traceback__)


# What a handler no longer needs once the WebSocket is open: the HTTP response state, routing and template
# attributes, and the dependencies `initialize` received (the session holds its own). Dropping them and rebuilding
# `__dict__` leaves 21 entries, the most a compact 32-slot dict holds (37 entries take a 64-slot table).
HANDLER_DROPPED_AFTER_OPEN = frozenset((
    "_headers", "_headers_written", "_reason", "_transforms", "_write_buffer", "open_args", "open_kwargs",
    "path_args", "path_kwargs", "ui", "drain", "handlers", "hooks", "node", "sub_verifier", "verifier",
))
# What log lines and `repr` read from the upgrade request; the rest (headers, body, argument dicts, the HTTP
# connection objects and their start lines) is dropped.
REQUEST_KEPT_AFTER_OPEN = ("method", "uri", "version", "remote_ip", "protocol", "host", "host_name", "path", "query")
NO_HEADERS = tornado.httputil.HTTPHeaders()  # shared, never written to


def slim_after_open(handler: tornado.websocket.WebSocketHandler, keep_request: bool) -> None:
    """Free what Tornado keeps per connection for the HTTP request/response that is over (about 5 KiB of an idle
    connection's memory). `keep_request`: an `on_connecting` hook still reads headers and cookies."""
    attrs = handler.__dict__
    handler.__dict__ = {k: v for k, v in attrs.items() if k not in HANDLER_DROPPED_AFTER_OPEN}
    if keep_request:
        return
    request = handler.request
    kept = {k: request.__dict__[k] for k in REQUEST_KEPT_AFTER_OPEN if k in request.__dict__}
    request.__dict__ = {**kept, "headers": NO_HEADERS, "connection": None, "server_connection": None}


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(
        self, node: Node, verifier: TokenVerifier, sub_verifier: TokenVerifier, handlers: dict[str, Handler],
        drain: Drain, gate: ConnectionGate, hooks: Hooks | None = None,
    ) -> None:
        self.node = node
        self.hooks = hooks or Hooks()
        self.drain = drain
        self.gate = gate
        self.verifier = verifier
        self.sub_verifier = sub_verifier
        self.handlers = handlers
        self.session: ClientSession | None = None
        self.protocol: RecordingProtocol | None = None
        self._counted = False

    def prepare(self) -> None:
        if self.drain.draining:
            raise tornado.web.HTTPError(503, reason="Shutting down")
        refusal = self.gate.refusal()
        if refusal is not None:
            self.node.metrics.refused(refusal)
            raise tornado.web.HTTPError(503, reason="Too many connections")

    def check_origin(self, origin: str) -> bool:
        allowed = origin_allowed(origin, self.request.host, self.node.config.client.allowed_origins)
        if not allowed:
            self.node.metrics.refused("origin")
            log.info("refused upgrade from origin %s", origin)
        return allowed

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if isinstance(protocol, tornado.websocket.WebSocketProtocol13):
            self.protocol = RecordingProtocol(self, False, protocol.params)
            return self.protocol
        return protocol

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return None  # JSON needs no subprotocol (SDKs send none)

    def get_compression_options(self) -> dict[str, Any] | None:
        return None

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.gate.opened()
        self._counted = True
        http = None
        if self.hooks.on_connecting is not None:
            secret = self.settings.get("cookie_secret")
            http = UpgradeRequest(
                dict(self.request.headers.get_all()), self.request.uri or "", self.request.remote_ip or "",
                self.get_signed_cookie if secret else None)
        self.session = ClientSession(
            self.node, TornadoTransport(self), self.verifier, self.handlers, self.sub_verifier, self.hooks, http)
        slim_after_open(self, keep_request=http is not None)

    async def on_message(self, message: str | bytes) -> None:
        # Tornado reads the next message only after this coroutine returns: commands stay in order.
        if self.session is not None:
            await self.session.handle_frame(message)

    def on_ping(self, data: bytes) -> None:
        if self.session is not None:
            self.session.on_transport_ping()

    def on_close(self) -> None:
        if self._counted:
            self._counted = False
            self.gate.closed()
        if self.session is None:
            return
        sent = self.protocol.sent_close if self.protocol is not None else None
        if sent is not None:  # Tornado closed it (e.g. 1009)
            self.session.on_transport_closed(sent[0], sent[1], by_peer=False)
        else:
            self.session.on_transport_closed(self.close_code or 1006, self.close_reason or "")
