"""The composition root: builds engine, node and Tornado application from a `Config`, and runs it.

Owns: `Gust` (the assembled server), `serve`. Everything is built here and passed down through handler
`initialize` kwargs; nothing is global. May import everything in the package.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.routing
import tornado.web

from .api import ApiHandler
from .api_methods import CONTROL_OPS, SURVEYS
from .auth import build_verifiers
from .chat import chat_routes
from .chat_setup import ChatSetup, prepare_chat
from .config import Config
from .config_load import from_dict, tls_context
from .engines import create_engine
from .handlers import HANDLERS
from .hooks import Hooks
from .lifecycle import Drain
from .limits import ConnectionGate
from .metrics import Metrics
from .node import Node
from .pages import HealthHandler, IndexHandler, MetricsHandler, ReadyHandler, StaticFiles
from .protocol import Disconnects
from .pyapi import ServerAPI
from .session import ClientSession
from .watchdog import LoopWatchdog
from .websocket import WebSocketHandler

log = logging.getLogger("gust")
PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR.parent / "static"


class Gust(ServerAPI):
    """One Gust node: engine + node + the Tornado application that serves it.

    Embedded in a Tornado application: `Gust(config, hooks=Hooks(...))` (a `Config`, or a dict as a config file
    gives it), `await gust.mount(app, "/rt")`, then the server API as coroutines (`await gust.publish(...)`, see
    `ServerAPI`) and `await gust.close()` on shutdown."""

    def __init__(self, config: Config | Mapping[str, Any], hooks: Hooks | None = None) -> None:
        if not isinstance(config, Config):
            config = from_dict(config)
        self.hooks = hooks or Hooks()  # no hooks: every field None, Gust's own behaviour
        self.chat: ChatSetup | None = None
        if config.chat.enabled:  # may add the chat namespace and a generated token key to the config
            self.chat = prepare_chat(config)
            config = self.chat.config
        self.config = config
        self.metrics = Metrics()
        self.node = Node(config, create_engine(config), metrics=self.metrics)
        self.node.cluster.ops.update(CONTROL_OPS)
        self.node.cluster.surveys.update(SURVEYS)
        self.verifier, self.sub_verifier = build_verifiers(config)
        self.drain = Drain()
        self.gate = ConnectionGate(config.client)
        hub = self.node.hub
        self.metrics.track(
            connections=lambda: self.gate.open, clients=lambda: hub.num_clients, users=lambda: hub.num_users,
            channels=lambda: hub.num_channels, subscriptions=lambda: hub.num_subscriptions)
        self.watchdog = LoopWatchdog(config.watchdog, self.metrics) if config.watchdog.enabled else None

    async def start(self) -> None:
        await self.node.start()
        if self.watchdog is not None:
            self.watchdog.start()

    async def close(self) -> None:
        """Refuse new work (503), close every client with 3001 "shutdown" (SDKs reconnect), let running API
        calls finish, then stop the engine (which flushes and closes the history store)."""
        self.drain.start_draining()
        sessions = [s for s in self.node.hub.all_sessions() if isinstance(s, ClientSession)]
        for session in sessions:
            session.close(Disconnects.SHUTDOWN)
        for session in sessions:
            await session.wait_released()
        if self.drain.inflight:
            log.info("waiting for %d API request(s) to finish", self.drain.inflight)
        await self.drain.wait_idle()
        await self.node.close()
        if self.watchdog is not None:
            self.watchdog.stop()

    def routes(self, prefix: str = "") -> list[tornado.routing.Rule]:
        ws_kwargs: dict[str, Any] = {
            "node": self.node, "verifier": self.verifier, "sub_verifier": self.sub_verifier, "handlers": HANDLERS,
            "drain": self.drain, "gate": self.gate, "hooks": self.hooks}
        rules: list[tornado.routing.Rule] = [
            tornado.web.url(prefix + r"/connection/websocket", WebSocketHandler, ws_kwargs, name="websocket"),
            tornado.web.url(prefix + r"/api/([a-z_]+)", ApiHandler, {"node": self.node, "drain": self.drain}),
        ]
        if not self.config.http_server.internal_port:
            rules += self.internal_routes(prefix)
        if self.chat is not None:
            return rules + chat_routes(prefix, self.node, self.chat)
        return [*rules, tornado.web.url(prefix + r"/", IndexHandler, {"node": self.node})]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], hooks: Hooks | None = None) -> Gust:
        """A node from a plain mapping, with the keys and values of a JSON config file (validated)."""
        return cls(from_dict(data), hooks)

    async def mount(self, app: tornado.web.Application, prefix: str = "/rt", start: bool = True) -> None:
        """Serve this node from an existing application: the WebSocket endpoint `<prefix>/connection/websocket`,
        the HTTP API `<prefix>/api/<method>` and `<prefix>/health|ready|metrics` (unless on an internal port).
        These rules take precedence over the application's own. Then start the node (unless `start` is False)."""
        own = (WebSocketHandler, ApiHandler, HealthHandler, ReadyHandler, MetricsHandler)
        app.add_handlers(r".*$", [rule for rule in self.routes(prefix.rstrip("/")) if rule.target in own])
        app.settings.setdefault("websocket_max_message_size", self.config.websocket.message_size_limit)
        if start:
            await self.start()

    def internal_routes(self, prefix: str = "") -> list[tornado.routing.Rule]:
        """`/health`, `/ready`, `/metrics`: on the main port, or alone on `http_server.internal_port`."""
        return [
            tornado.web.url(prefix + r"/health", HealthHandler),
            tornado.web.url(prefix + r"/ready", ReadyHandler, {"node": self.node, "drain": self.drain}),
            tornado.web.url(prefix + r"/metrics", MetricsHandler, {"metrics": self.metrics}),
        ]

    def make_internal_app(self) -> tornado.web.Application:
        return tornado.web.Application(self.internal_routes())

    def http_server_options(self) -> dict[str, Any]:
        """Slow-HTTP limits for `HTTPServer` (Tornado's one header timer also bounds idle keep-alive connections)."""
        http = self.config.http_server
        return {"idle_connection_timeout": http.header_timeout, "body_timeout": http.body_timeout,
                "max_header_size": http.max_header_size}

    def make_app(self) -> tornado.web.Application:
        settings: dict[str, Any] = {}
        if self.chat is not None:
            settings.update(cookie_secret=self.chat.cookie_secret, xsrf_cookies=True,
                            xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"})
        return tornado.web.Application(
            self.routes(),
            static_path=str(STATIC_DIR),
            static_handler_class=StaticFiles,
            template_path=str(PACKAGE_DIR / "templates"),
            websocket_max_message_size=self.config.websocket.message_size_limit,
            xheaders=False,
            **settings,
        )


async def serve(config: Config, reuse_port: bool = False) -> bool:
    """Run until SIGINT/SIGTERM, then shut down gracefully within `shutdown.timeout`. False when the
    shutdown did not finish in time. `reuse_port`: bind with SO_REUSEPORT (a worker of `server.supervisor`)."""
    gust = Gust(config)
    await gust.start()
    servers = listen(gust, reuse_port)
    host = config.http_server.address or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if config.http_server.tls.enabled else "http"
    log.info("Gust serving on %s://%s:%d (engine %s)", scheme, shown, config.http_server.port, config.engine.type)
    print(f"Gust is running: {scheme}://{shown}:{config.http_server.port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.monotonic()
    log.info("shutting down (at most %.0f s)", config.shutdown.timeout)
    for server in servers:
        server.stop()
    clean = True
    try:
        await asyncio.wait_for(gust.close(), config.shutdown.timeout)
    except TimeoutError:
        log.error("shutdown did not finish within %.0f s: exiting anyway", config.shutdown.timeout)
        clean = False
    for server in servers:
        await server.close_all_connections()
    log.info("stopped in %.2f s", time.monotonic() - started)
    return clean


def listen(gust: Gust, reuse_port: bool = False) -> list[tornado.httpserver.HTTPServer]:
    """The main HTTP server, and the internal one when `http_server.internal_port` is set. With `reuse_port`
    both bind with SO_REUSEPORT, so several worker processes share the ports and the kernel spreads connections."""
    http = gust.config.http_server
    tls = tls_context(http.tls) if http.tls.enabled else None  # validated at load; ConfigError names the key
    server = tornado.httpserver.HTTPServer(gust.make_app(), ssl_options=tls, **gust.http_server_options())
    server.listen(http.port, http.address, reuse_port=reuse_port)
    if not http.internal_port:
        return [server]
    internal_tls = None if http.tls_external else tls  # as Centrifugo: the internal port too, unless tls_external
    internal = tornado.httpserver.HTTPServer(gust.make_internal_app(), ssl_options=internal_tls,
                                             **gust.http_server_options())
    try:
        internal.listen(http.internal_port, http.internal_address or http.address, reuse_port=reuse_port)
    except OSError:
        server.stop()
        raise
    log.info("health, readiness and metrics on the internal port %d", http.internal_port)
    return [server, internal]
