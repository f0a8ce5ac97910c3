"""The HTTP server API: `POST /api/<method>` with Centrifugo's auth, envelopes and status codes.

Auth: `X-API-Key: <key>` or `Authorization: apikey <key>`, compared in constant time. A key in the query
string is not accepted (it would land in access logs). Missing/wrong key, or no key configured → 401 with an
empty body, unless `http_api.insecure`.
May import: api_methods, node, protocol, engines, tornado.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import orjson
import tornado.web
from tornado.http1connection import HTTP1Connection

from .api_methods import API_METHODS, call, error_body
from .engines import EngineError
from .lifecycle import Drain
from .node import Node
from .protocol import ErrorCode, ReplyError

log = logging.getLogger("gust.api")

# Centrifugo's X-Centrifugo-Error-Mode: transport mapping from error codes to HTTP statuses.
TRANSPORT_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    def initialize(self, node: Node, drain: Drain) -> None:
        self.node = node
        self.drain = drain
        self.config = node.config.http_api
        self._chunks: list[bytes] = []
        self._size = 0
        self._counted = False

    def check_xsrf_cookie(self) -> None:
        return None  # API clients authenticate with a key, not cookies

    def _key(self) -> str:
        key = self.request.headers.get("X-API-Key")
        if key is not None:
            return key
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "apikey" else ""

    def _authorized(self) -> bool:
        if self.config.insecure:
            return True
        given = self._key()
        return bool(self.config.key) and bool(given) and hmac.compare_digest(given.encode(), self.config.key.encode())

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        if self.drain.draining:
            self._reject_early(503)  # shutting down: a load balancer retries elsewhere
            return
        self.drain.begin()
        self._counted = True
        if not self._authorized():
            self._reject_early(401)
            return
        limit = self.config.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._reject_early(413)
            return
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(limit)  # a chunked body over the limit is cut off by Tornado

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.drain.end()

    def _reject_early(self, status: int) -> None:
        """Answer before the body is read: Tornado then drops the connection, so say so (keep-alive clients)."""
        self.set_status(status)
        self.set_header("Connection", "close")
        self.finish()

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.config.max_body_size:
            self._chunks.append(chunk)

    async def post(self, method: str) -> None:
        if method not in API_METHODS:
            raise tornado.web.HTTPError(404, reason="Unknown API method")
        try:
            params = orjson.loads(b"".join(self._chunks) or b"{}")
        except orjson.JSONDecodeError:
            raise tornado.web.HTTPError(400, reason="Invalid JSON") from None
        if not isinstance(params, dict):
            raise tornado.web.HTTPError(400, reason="Request body must be a JSON object")
        started = time.perf_counter()
        try:
            result = await call(self.node, method, params)
        except ReplyError as exc:
            self._error(exc)
            return
        except EngineError as exc:
            log.warning("api %s: engine error: %s", method, exc)
            self.node.metrics.engine_error(method)
            self._error(ReplyError(ErrorCode.INTERNAL))
            return
        finally:
            self.node.metrics.command("api", method, time.perf_counter() - started)
        self._json(result if method == "batch" else {"result": result})

    def _error(self, exc: ReplyError) -> None:
        self.node.metrics.error("api", exc.code)
        body = error_body(exc)
        if self.request.headers.get("X-Centrifugo-Error-Mode", "").lower() == "transport":
            self.set_status(TRANSPORT_STATUS.get(body["code"], 500))
            self._json(body)
        else:
            self._json({"error": body})

    def _json(self, obj: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish()  # statuses only; never a traceback page
