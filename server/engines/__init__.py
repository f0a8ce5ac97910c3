"""The engine interface: what a broker + history + presence backend must provide, and `create_engine`.

Owns: `Engine`, `EngineEvents`, `HistoryOptions`, `EngineError`, `create_engine`.
May import: model, config. Concrete engines live in sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..model import ClientInfo, PresenceStats, Publication, StreamPosition

HISTORY_FILE = "history.sqlite3"


class EngineError(Exception):
    """The engine could not do what was asked (temporarily unavailable, storage failure…)."""


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How a publication is kept: history on when both size and ttl are positive."""

    size: int = 0
    ttl: float = 0.0
    meta_ttl: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0


class EngineEvents(Protocol):
    """Callbacks an engine makes on this node; the only way publications reach local subscribers."""

    def on_publication(self, channel: str, pub: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_insufficient_state(self, channel: str) -> None:
        """Publications of `channel` may have been missed and cannot be replayed (e.g. a new epoch after a Redis
        restart): positioned subscribers must resubscribe and recover."""
        ...

    async def on_control(self, data: bytes) -> None:
        """A control message from `publish_control` (any node, this one included), in publication order."""
        ...


class Engine(Protocol):
    """Broker, history and presence. Every method may raise `EngineError`."""

    async def start(self, events: EngineEvents, node_id: str = "") -> None: ...

    async def close(self) -> None: ...

    async def publish(
        self, channel: str, data: bytes, info: ClientInfo | None, tags: dict[str, str], opts: HistoryOptions,
        idempotency_key: str = "", idempotency_ttl: float = 0.0,
    ) -> StreamPosition:
        """Assign the next offset (when history is on), store, and deliver through `on_publication`. An engine
        shared by several nodes also honours `idempotency_key` (the node keeps its own cache in front)."""
        ...

    async def publish_control(self, data: bytes) -> None:
        """Deliver `data` to `on_control` of every node (this one included); awaited until it is sent."""
        ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """This node has its first local subscriber of `channel`."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """This node has no local subscriber of `channel` any more."""
        ...

    async def history(
        self, channel: str, since: StreamPosition | None, limit: int, reverse: bool, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        """Publications after `since` (or all), at most `limit` (-1 = no limit, 0 = none), and the top."""
        ...

    async def remove_history(self, channel: str) -> None: ...

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo, ttl: float) -> None: ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def refresh_presence(self, entries: list[tuple[str, str, ClientInfo]], ttl: float) -> None:
        """`add_presence` for many (channel, client_id, info) at once (the node's periodic refresh)."""
        ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> PresenceStats: ...

    async def maintain(self) -> None:
        """Periodic housekeeping (expired history, stream metadata and presence)."""
        ...


def create_engine(config: Config) -> Engine:
    """Build the engine named by `engine.type`."""
    if config.engine.type == "memory":
        from .memory import MemoryEngine

        memory = config.engine.memory
        if memory.persistence == "none":
            return MemoryEngine()
        from .sqlite_db import SqliteDb

        return MemoryEngine.with_store(SqliteDb(Path(config.data_dir) / HISTORY_FILE, memory.synchronous.upper()))
    if config.engine.type == "redis":
        from .redis import RedisEngine

        return RedisEngine(config.engine.redis, config.channel.history_meta_ttl)
    raise EngineError(f"unknown engine type {config.engine.type!r}")
