"""One Redis instance as the engine sees it: a command client with the Lua scripts, and a pub/sub link.

The link is one dedicated connection read by one listener task. It keeps the set of pub/sub channels this node
wants; when the connection is lost it reconnects with capped, jittered backoff, subscribes to the whole set
again (waiting for every confirmation, holding back messages meanwhile), lets the engine fill gaps
(`on_up(reconnected=True)`), and only then hands the held-back messages on. A keepalive PING notices a link
that has silently died. `subscribe` resolves when Redis has confirmed the subscription, so a history read made
afterwards cannot miss a publication; while the link is down it fails at once with `EngineError`.

Owns: `Shard`, `Link`, `redis_errors`. May import: engines, config, redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config import RedisEngineConfig
from . import EngineError

log = logging.getLogger("gust.redis")
LUA_DIR = Path(__file__).resolve().parent / "lua"
SCRIPTS = ("publish", "history", "presence_add", "presence_remove", "presence_get")
SUBSCRIBE_BATCH = 500  # channels per SUBSCRIBE command when (re)subscribing everything
redis_errors = (RedisError, OSError, asyncio.TimeoutError)


def read_scripts() -> dict[str, str]:
    """The Lua sources (file I/O: call it in a thread)."""
    return {name: (LUA_DIR / f"{name}.lua").read_text() for name in SCRIPTS}


class Shard:
    """A command client (a connection pool; no retries, so a publish is never repeated) and the scripts."""

    def __init__(self, index: int, address: str, cfg: RedisEngineConfig) -> None:
        self.index = index
        self.address = address
        self.client = aioredis.Redis.from_url(
            address, socket_connect_timeout=cfg.connect_timeout, socket_timeout=cfg.io_timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, max_connections=256)
        self.scripts: dict[str, Any] = {}

    def load_scripts(self, sources: dict[str, str]) -> None:
        self.scripts = {name: self.client.register_script(src) for name, src in sources.items()}

    def describe(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}/{kw.get('db', 0)}"


class Link:
    """The pub/sub connection of one shard and its listener task."""

    def __init__(
        self,
        shard: Shard,
        cfg: RedisEngineConfig,
        on_message: Callable[[str, bytes], None],
        on_up: Callable[[int, bool], Awaitable[None]],
    ) -> None:
        self._shard = shard
        self._cfg = cfg
        self._on_message = on_message
        self._on_up = on_up
        self.keys: set[str] = set()  # pub/sub channels wanted (subscribed again after every reconnect)
        self._conn: AbstractConnection | None = None
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self.up = asyncio.Event()
        self.connects = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"gust-redis-link-{self._shard.index}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- subscriptions ---------------------------------------------------------------------------------------

    async def subscribe(self, key: str) -> None:
        """Subscribe to `key`; returns once Redis has confirmed it. EngineError when the link is down."""
        conn = self._conn
        if conn is None:
            raise EngineError(f"Redis {self._shard.describe()} unavailable (pub/sub link down)")
        self.keys.add(key)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)

        async def confirmed() -> None:
            await conn.send_command("SUBSCRIBE", key, check_health=False)
            await future

        try:
            await asyncio.wait_for(confirmed(), self._cfg.io_timeout)
        except (*redis_errors, EngineError) as exc:
            self.keys.discard(key)
            waiting = self._waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            raise EngineError(f"Redis subscribe failed: {exc or type(exc).__name__}") from None

    async def unsubscribe(self, key: str) -> None:
        self.keys.discard(key)
        conn = self._conn
        if conn is not None:
            try:
                await asyncio.wait_for(conn.send_command("UNSUBSCRIBE", key, check_health=False),
                                       self._cfg.io_timeout)
            except redis_errors as exc:  # the listener notices a broken link by itself
                log.debug("redis unsubscribe %s: %s", key, exc)

    # --- the listener ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn = await self._connect()
            except redis_errors as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("Redis %s: cannot connect the pub/sub link (%s); retrying",
                                self._shard.describe(), exc or type(exc).__name__)
                await asyncio.sleep(self._backoff(failures))
                continue
            try:
                await self._serve(conn)
            except redis_errors as exc:
                log.warning("Redis %s: pub/sub link lost (%s); reconnecting", self._shard.describe(),
                            exc or type(exc).__name__)
            finally:
                self._down()
                with contextlib.suppress(*redis_errors):
                    await conn.disconnect()
            failures = 1
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        """Full jitter, capped at `reconnect_max_delay`."""
        return random.uniform(0, min(self._cfg.reconnect_max_delay, 0.05 * 2 ** min(failures, 16)))

    async def _connect(self) -> AbstractConnection:
        pool = self._shard.client.connection_pool
        conn: AbstractConnection = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        await asyncio.wait_for(conn.connect(), self._cfg.connect_timeout + self._cfg.io_timeout)  # type: ignore[no-untyped-call]
        return conn

    async def _serve(self, conn: AbstractConnection) -> None:
        held = await self._resubscribe(conn)
        reconnected = self.connects > 0
        self.connects += 1
        self._conn = conn
        self.up.set()
        if reconnected:
            log.info("Redis %s: pub/sub link back, %d channel(s) subscribed again", self._shard.describe(),
                     len(self.keys))
        await self._on_up(self._shard.index, reconnected)
        for key, data in held:
            self._on_message(key, data)
        reader = asyncio.create_task(self._read(conn))
        keepalive = asyncio.create_task(self._keepalive(conn))
        try:
            done, _ = await asyncio.wait((reader, keepalive), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, keepalive):
                task.cancel()
            await asyncio.gather(reader, keepalive, return_exceptions=True)
        raise ConnectionError("pub/sub link closed")

    async def _resubscribe(self, conn: AbstractConnection) -> list[tuple[str, bytes]]:
        """Subscribe to every wanted key and wait for all confirmations; messages read meanwhile are returned."""
        keys = list(self.keys)
        held: list[tuple[str, bytes]] = []
        if not keys:
            return held
        for i in range(0, len(keys), SUBSCRIBE_BATCH):
            await conn.send_command("SUBSCRIBE", *keys[i:i + SUBSCRIBE_BATCH], check_health=False)
        pending = set(keys)
        while pending:
            reply = await asyncio.wait_for(conn.read_response(), self._cfg.io_timeout)
            kind, key, payload = _parse(reply)
            if kind == b"subscribe":
                pending.discard(key)
            elif kind == b"message" and isinstance(payload, bytes):
                held.append((key, payload))
        for key in set(keys) - self.keys:  # given up while we were subscribing
            await conn.send_command("UNSUBSCRIBE", key, check_health=False)
        return held

    async def _read(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reply = await conn.read_response()
            self._last_rx = loop.time()
            kind, key, payload = _parse(reply)
            if kind == b"message" and isinstance(payload, bytes):
                try:
                    self._on_message(key, payload)
                except Exception:  # one bad message must not stop the listener
                    log.exception("redis message on %s could not be handled", key)
            elif kind == b"subscribe":
                for future in self._waiters.pop(key, []):
                    if not future.done():
                        future.set_result(None)

    async def _keepalive(self, conn: AbstractConnection) -> None:
        """PING every io_timeout; no data for two rounds means the link is dead."""
        loop = asyncio.get_running_loop()
        interval = self._cfg.io_timeout
        self._last_rx = loop.time()
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self._last_rx > 2 * interval:
                raise TimeoutError(f"no answer on the pub/sub link for {2 * interval:.0f} s")
            await asyncio.wait_for(conn.send_command("PING", check_health=False), interval)

    def _down(self) -> None:
        self._conn = None
        self.up.clear()
        error = EngineError(f"Redis {self._shard.describe()} pub/sub link lost")
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiters.clear()


def _parse(reply: Any) -> tuple[bytes, str, Any]:
    """(kind, pub/sub channel, payload) of a RESP2 pub/sub reply (`pong` has no channel)."""
    if not isinstance(reply, list) or not reply:
        return b"", "", None
    kind = bytes(reply[0]).lower()
    key = reply[1].decode() if len(reply) > 1 and isinstance(reply[1], bytes) else ""
    return kind, key, reply[2] if len(reply) > 2 else None
