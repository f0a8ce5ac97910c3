"""The Tornado `WebSocketHandler` at `/connection/websocket`: origin check, and an adapter that turns
`write_message`/`close` into the session's `Transport`. All protocol logic lives in `session.py`.

May import: session, handlers, node, auth, config, tornado.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket
from tornado.concurrent import Future

from .auth import TokenVerifier
from .lifecycle import Drain
from .node import Node
from .session import ClientSession, Handler

log = logging.getLogger("gust.websocket")


class TornadoTransport:
    """`Transport` over a `WebSocketHandler`. Counts bytes written but not yet flushed to the socket."""

    __slots__ = ("_handler", "_pending")

    def __init__(self, handler: tornado.websocket.WebSocketHandler) -> None:
        self._handler = handler
        self._pending = 0

    def write(self, frame: bytes) -> None:
        try:
            future = self._handler.write_message(frame)  # bytes with binary=False: a text frame
        except tornado.websocket.WebSocketClosedError:
            return
        size = len(frame)
        self._pending += size
        future.add_done_callback(lambda f: self._written(f, size))

    def _written(self, future: Future[None], size: int) -> None:
        self._pending -= size
        if not future.cancelled():
            future.exception()  # retrieve it: a closed stream is handled by on_close

    def close(self, code: int, reason: str) -> None:
        self._handler.close(code, reason)

    def pending_bytes(self) -> int:
        return self._pending


def origin_allowed(origin: str, host: str, patterns: tuple[str, ...]) -> bool:
    """Centrifugo's `client.allowed_origins`: glob patterns; without any, only the same host is allowed."""
    if not patterns:
        return urlsplit(origin).netloc.lower() == host.lower()
    origin = origin.lower()
    return any(fnmatch.fnmatchcase(origin, p.lower()) for p in patterns)


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(
        self, node: Node, verifier: TokenVerifier, sub_verifier: TokenVerifier, handlers: dict[str, Handler],
        drain: Drain,
    ) -> None:
        self.node = node
        self.drain = drain
        self.verifier = verifier
        self.sub_verifier = sub_verifier
        self.handlers = handlers
        self.session: ClientSession | None = None

    def prepare(self) -> None:
        if self.drain.draining:
            raise tornado.web.HTTPError(503, reason="Shutting down")

    def check_origin(self, origin: str) -> bool:
        allowed = origin_allowed(origin, self.request.host, self.node.config.client.allowed_origins)
        if not allowed:
            log.info("refused upgrade from origin %s", origin)
        return allowed

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return None  # JSON needs no subprotocol (SDKs send none)

    def get_compression_options(self) -> dict[str, Any] | None:
        return None

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.session = ClientSession(
            self.node, TornadoTransport(self), self.verifier, self.handlers, self.sub_verifier)

    async def on_message(self, message: str | bytes) -> None:
        # Tornado reads the next message only after this coroutine returns: commands stay in order.
        if self.session is not None:
            await self.session.handle_frame(message)

    def on_close(self) -> None:
        if self.session is not None:
            self.session.on_transport_closed()
