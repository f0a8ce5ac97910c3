"""RequestHandlers for plain HTTP: the index page and `/health`.

May import: node, config, tornado.
"""

from __future__ import annotations

import tornado.web

from . import __version__
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


class StaticFiles(tornado.web.StaticFileHandler):
    """`/static/`: the browser must not guess content types (our scripts are served as JavaScript only)."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
