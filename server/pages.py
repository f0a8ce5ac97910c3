"""RequestHandlers for plain HTTP: the index page, `/health` (alive), `/ready` (engine reachable, not shutting
down) and `/metrics` (Prometheus text format).

May import: node, config, lifecycle, metrics, tornado.
"""

from __future__ import annotations

import tornado.web

from . import __version__
from .lifecycle import Drain
from .metrics import Metrics
from .node import Node


class IndexHandler(tornado.web.RequestHandler):
    def initialize(self, node: Node) -> None:
        self.node = node

    def get(self) -> None:
        self.render("index.html", version=__version__, config=self.node.config)


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write({"status": "ok"})


class ReadyHandler(tornado.web.RequestHandler):
    """200 while this node can serve (the engine answers); 503 while shutting down or when it does not."""

    def initialize(self, node: Node, drain: Drain) -> None:
        self.node = node
        self.drain = drain

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.drain.draining:
            self.set_status(503)
            self.write({"status": "shutting down"})
        elif not await self.node.ready():
            self.set_status(503)
            self.write({"status": "engine unavailable"})
        else:
            self.write({"status": "ready"})


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        body, content_type = self.metrics.render(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.write(body)


class StaticFiles(tornado.web.StaticFileHandler):
    """`/static/`: the browser must not guess content types (our scripts are served as JavaScript only)."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
