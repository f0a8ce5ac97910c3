"""Shared fixtures: a real Gust server on a free loopback port (pytest-tornado), and a small raw client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop
import tornado.web

from server.app import Gust
from server.config import DEVELOPMENT_PRESET, Config
from server.config_load import deep_merge, from_dict

from .browser import browser  # noqa: F401  (the real-Chromium fixture, for the browser tests)
from .procs import GustProcess
from .redisproc import REDIS_MISSING, RedisServer, redis_available
from .wsclient import RawClient

SECRET = "test-secret-key-that-is-long-enough-for-hs256"


def make_config(overrides: dict[str, Any] | None = None) -> Config:
    """The development preset plus a token key, with test overrides merged in."""
    base = deep_merge(DEVELOPMENT_PRESET, {"client": {"token": {"hmac_secret_key": SECRET}}})
    return from_dict(deep_merge(base, overrides or {}))


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module (or with @pytest.mark.parametrize) to change the server's config."""
    return {}


@pytest.fixture
def config(config_overrides: dict[str, Any], tmp_path: Path) -> Config:
    """The server's config; history goes to a SQLite store in the test's own temporary directory."""
    return make_config(deep_merge({"data_dir": str(tmp_path / "data")}, config_overrides))


@pytest.fixture
def gust(io_loop: tornado.ioloop.IOLoop, config: Config) -> Iterator[Gust]:
    server = Gust(config)
    io_loop.run_sync(server.start)
    yield server
    io_loop.run_sync(server.close)


@pytest.fixture
def app(gust: Gust) -> tornado.web.Application:
    return gust.make_app()


@pytest.fixture
def ws_url(http_server: Any, http_port: int) -> str:
    return f"ws://127.0.0.1:{http_port}/connection/websocket"


@pytest.fixture
def base_url(http_server: Any, http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def client_factory(ws_url: str) -> Iterator[Any]:
    clients: list[RawClient] = []

    async def connect(**kwargs: Any) -> RawClient:
        client = await RawClient.open(ws_url, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def procs() -> Iterator[list[GustProcess]]:
    """Every server process a test makes goes in here and is SIGKILLed at teardown if still running."""
    made: list[GustProcess] = []
    yield made
    for proc in made:
        proc.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.split(":")[0].strip() == "redis" for line in config.getini("markers")):
        config.addinivalue_line("markers", "redis: tests that need a Redis server")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One `redis-server` of our own for the whole run (never the shared one), stopped at the end."""
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis-shared"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing `redis_server` never see each other's keys."""
    return f"gtest{uuid.uuid4().hex[:8]}"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh `redis-server` for this test alone (fault tests: kill, pause, restart), stopped after."""
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    server = RedisServer(workdir=tmp_path / "redis")
    server.start()
    yield server
    server.cleanup()
