"""`Node`: the façade that sessions and the HTTP API use for every channel operation on this server.

Implements `EngineEvents`: the engine's `on_publication` is the one delivery path to local subscribers.
Owns channel locks around the first/last local subscriber and the periodic presence refresh.
Counts publications in and out (by namespace) and times each broadcast for the metrics.
May import: model, protocol, channels, engines, hub, config, metrics. Never imports session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .channels import resolve_channel, split_namespace
from .cluster import Cluster
from .config import ChannelOptions, Config
from .engines import Engine, EngineError, HistoryOptions
from .hub import Hub, Subscriber
from .metrics import Metrics
from .model import ClientInfo, PresenceStats, Publication, StreamPosition
from .protocol import ErrorCode, ReplyError

log = logging.getLogger("gust.node")
IDEMPOTENCY_TTL = 300.0  # seconds, as Centrifugo
READY_PROBE_CHANNEL = "gust-ready-probe"  # `ready` asks the engine for this channel's presence stats


class Node:
    def __init__(self, config: Config, engine: Engine, hub: Hub | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.engine = engine
        self.hub = hub or Hub()
        self.metrics = metrics if metrics is not None else Metrics()
        self._locks = ChannelLocks()
        self._presence_info: dict[tuple[str, str], ClientInfo] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._idempotent: dict[tuple[str, str], tuple[StreamPosition, float]] = {}
        self.uid = str(uuid.uuid4())
        self.started_at = time.monotonic()
        self.cluster = Cluster(self)

    async def start(self) -> None:
        await self.engine.start(self, self.uid)
        self._maintenance = asyncio.create_task(self._maintain(), name="gust-node-maintenance")
        await self.cluster.start()

    async def close(self) -> None:
        await self.cluster.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        await self.engine.close()

    def resolve(self, channel: str) -> ChannelOptions:
        return resolve_channel(self.config, channel)

    def history_options(self, opts: ChannelOptions) -> HistoryOptions:
        return HistoryOptions(opts.history_size, opts.history_ttl, self.config.channel.history_meta_ttl)

    # EngineEvents

    def on_publication(self, channel: str, pub: Publication) -> None:
        receivers = self.hub.num_subscribers(channel)
        started = time.perf_counter()
        self.hub.broadcast(channel, pub)
        if receivers:
            self.metrics.broadcast(split_namespace(channel)[0], receivers, time.perf_counter() - started)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_join_leave(channel, "join", info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_join_leave(channel, "leave", info)

    def on_insufficient_state(self, channel: str) -> None:
        self.hub.insufficient_state(channel)

    async def on_control(self, data: bytes) -> None:
        await self.cluster.handle(data)

    # operations

    async def publish(
        self,
        channel: str,
        data: bytes,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        idempotency_key: str = "",
    ) -> StreamPosition:
        """Publish through the engine. A repeated `idempotency_key` on a channel within
        IDEMPOTENCY_TTL returns the first publication's position and publishes nothing."""
        opts = self.resolve(channel)
        if idempotency_key:
            seen = self._idempotent.get((channel, idempotency_key))
            if seen is not None and seen[1] > time.monotonic():
                return seen[0]
        history = HistoryOptions() if skip_history else self.history_options(opts)
        position = await self.engine.publish(channel, data, info, tags or {}, history, idempotency_key,
                                             IDEMPOTENCY_TTL)
        self.metrics.message_in(split_namespace(channel)[0])
        if idempotency_key:
            self._idempotent[(channel, idempotency_key)] = (position, time.monotonic() + IDEMPOTENCY_TTL)
        return position

    async def subscribe(self, sub: Subscriber, channel: str) -> None:
        """Add `sub` to the hub; the engine hears of the channel's first local subscriber."""
        async with self._locks.hold(channel):
            if self.hub.add_subscriber(channel, sub):
                try:
                    await self.engine.subscribe(channel)
                except BaseException:
                    self.hub.remove_subscriber(channel, sub)
                    raise

    async def unsubscribe(self, sub: Subscriber, channel: str) -> None:
        async with self._locks.hold(channel):
            if self.hub.remove_subscriber(channel, sub):
                await self.engine.unsubscribe(channel)

    async def history(
        self, channel: str, since: StreamPosition | None, limit: int, reverse: bool
    ) -> tuple[list[Publication], StreamPosition]:
        """Stream history; error 108 when the channel keeps none, 107 for a reverse read from offset 0,
        112 when `since` is from another epoch."""
        opts = self.resolve(channel)
        if reverse and since is not None and since.offset == 0:
            raise ReplyError(ErrorCode.BAD_REQUEST, "reverse history needs since.offset > 0")
        if not opts.history_enabled:
            raise ReplyError(ErrorCode.NOT_AVAILABLE, "history is not enabled for this channel")
        pubs, top = await self.engine.history(channel, since, limit, reverse, self.config.channel.history_meta_ttl)
        if since is not None and since.epoch and since.epoch != top.epoch:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION, "epoch changed")
        return pubs, top

    async def stream_top(self, channel: str) -> StreamPosition:
        opts = self.resolve(channel)
        if not opts.history_enabled:
            return StreamPosition()
        _, top = await self.engine.history(channel, None, 0, False, self.config.channel.history_meta_ttl)
        return top

    def _presence_opts(self, channel: str) -> ChannelOptions:
        opts = self.resolve(channel)
        if not opts.presence:
            raise ReplyError(ErrorCode.NOT_AVAILABLE, "presence is not enabled for this channel")
        return opts

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self._presence_opts(channel)
        return await self.engine.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        self._presence_opts(channel)
        return await self.engine.presence_stats(channel)

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        self._presence_info[(channel, info.client)] = info
        await self.engine.add_presence(channel, info.client, info, self.config.client.presence_ttl)

    async def remove_history(self, channel: str) -> None:
        self.resolve(channel)
        await self.engine.remove_history(channel)

    async def ready(self, timeout: float = 2.0) -> bool:
        """Whether the engine answers (a presence-stats round trip) within `timeout` seconds."""
        try:
            await asyncio.wait_for(self.engine.presence_stats(READY_PROBE_CHANNEL), timeout)
        except (EngineError, TimeoutError, OSError) as exc:
            log.warning("readiness probe failed: %s", exc or type(exc).__name__)
            return False
        return True

    def uptime(self) -> int:
        return int(time.monotonic() - self.started_at)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        self._presence_info.pop((channel, client_id), None)
        await self.engine.remove_presence(channel, client_id)

    async def join(self, channel: str, info: ClientInfo) -> None:
        await self.engine.publish_join(channel, info)

    async def leave(self, channel: str, info: ClientInfo) -> None:
        await self.engine.publish_leave(channel, info)

    # maintenance

    async def _maintain(self) -> None:
        interval = self.config.client.presence_update_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_presence()
                await self.engine.maintain()
                now = time.monotonic()
                for key in [k for k, (_, exp) in self._idempotent.items() if exp <= now]:
                    del self._idempotent[key]
            except Exception:
                log.exception("periodic maintenance failed")

    async def refresh_presence(self) -> None:
        """Re-announce every local presence entry so the engine's TTL keeps it alive."""
        entries = [(channel, client_id, info) for (channel, client_id), info in self._presence_info.items()]
        if entries:
            await self.engine.refresh_presence(entries, self.config.client.presence_ttl)


@dataclass
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ChannelLocks:
    """One asyncio.Lock per channel, dropped from the table when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, channel: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(channel, _LockEntry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[channel]
