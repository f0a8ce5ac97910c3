"""The Redis engine: channels, history and presence shared by every node on the same Redis.

- Publish: one Lua script per publication raises the channel's offset, appends to its history stream (trimmed,
  expiring) and PUBLISHes, atomically, so offsets from any number of nodes are unique and contiguous. The
  epoch lives beside the offset in a meta hash; a missing hash (first use, expired, Redis restarted empty) starts
  a new epoch. Every node, the publisher included, delivers from its pub/sub listener: one delivery path.
- A node subscribes to a channel in Redis when its first local client does and unsubscribes after the last.
- It remembers, per subscribed channel, the last position it delivered. After a lost pub/sub link comes back it
  reads each such channel's history from there and delivers what it missed (sessions drop duplicates); when the
  stream cannot give it back (new epoch, history gone) positioned subscribers are told to resubscribe
  (`on_insufficient_state`), so no client silently misses a publication of a channel with history.
- Presence entries expire by TTL in Redis and carry the node that refreshes them.
- Several addresses shard channels by a consistent hash of the name; the first one also carries the control
  channel between nodes.
- Redis down: every operation fails at once (or after `io_timeout`) with `EngineError`; nothing is retried, so
  a publication is never made twice, and nothing waits forever.

Owns: `RedisEngine`. May import: model, config, engines, redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from ..config import RedisEngineConfig
from ..model import ClientInfo, PresenceStats, Publication, StreamPosition
from . import EngineError, EngineEvents, HistoryOptions
from .memory import new_epoch
from .redis_codec import (
    Keys,
    MessageKind,
    decode_info,
    decode_message,
    decode_publication,
    encode_info,
    encode_publication,
    join_leave_message,
    shard_index,
)
from .redis_link import Link, Shard, read_scripts, redis_errors

log = logging.getLogger("gust.redis")
T = TypeVar("T")
RESYNC_LIMIT = 1000  # publications a node reads back per channel after its pub/sub link was lost
RESYNC_CONCURRENCY = 32


class RedisEngine:
    def __init__(self, cfg: RedisEngineConfig, meta_ttl: float = 0.0) -> None:
        self._cfg = cfg
        self._meta_ttl = meta_ttl
        self.keys = Keys(cfg.prefix)
        self._shards = [Shard(i, address, cfg) for i, address in enumerate(cfg.address)]
        self._links = [Link(shard, cfg, self._on_message, self._on_link_up) for shard in self._shards]
        self._events: EngineEvents | None = None
        self._node_id = ""
        self._positions: dict[str, StreamPosition] = {}  # subscribed channel → last position delivered here
        self._subscribed: set[str] = set()
        self._control: asyncio.Queue[bytes] = asyncio.Queue()
        self._control_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self, events: EngineEvents, node_id: str = "") -> None:
        sources = await asyncio.to_thread(read_scripts)
        for shard in self._shards:
            shard.load_scripts(sources)
        self._events = events
        self._node_id = node_id
        self._links[0].keys.add(self.keys.control)
        self._control_task = asyncio.create_task(self._run_control(), name="gust-redis-control")
        for link in self._links:
            link.start()
        try:  # start serving even if Redis is down: the links keep retrying and operations fail meanwhile
            await asyncio.wait_for(asyncio.gather(*(link.up.wait() for link in self._links)),
                                   self._cfg.connect_timeout + self._cfg.io_timeout)
        except TimeoutError:
            log.error("Redis not reachable at %s; retrying in the background",
                      ", ".join(s.describe() for s in self._shards if not self._links[s.index].up.is_set()))
        else:
            log.info("Redis engine connected: %s (prefix %r)", ", ".join(s.describe() for s in self._shards),
                     self._cfg.prefix)

    async def close(self) -> None:
        for link in self._links:
            await link.close()
        if self._control_task is not None:
            self._control_task.cancel()
            await asyncio.gather(self._control_task, return_exceptions=True)
            self._control_task = None
        for shard in self._shards:
            await shard.client.aclose()
        self._events = None

    @property
    def events(self) -> EngineEvents:
        if self._events is None:
            raise EngineError("engine is not running")
        return self._events

    def _shard(self, channel: str) -> Shard:
        return self._shards[shard_index(channel, len(self._shards))]

    async def _call(self, operation: Awaitable[T], what: str) -> T:
        try:
            return await operation
        except redis_errors as exc:
            raise EngineError(f"Redis {what} failed: {exc or type(exc).__name__}") from None

    # --- publications ----------------------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: bytes, info: ClientInfo | None, tags: dict[str, str], opts: HistoryOptions,
        idempotency_key: str = "", idempotency_ttl: float = 0.0,
    ) -> StreamPosition:
        """One script call. With `idempotency_key`, a repeat within `idempotency_ttl` (from any node) publishes
        nothing and returns the first publication's position."""
        self.events  # noqa: B018 - refuses work when stopped
        body = encode_publication(Publication(data=data, info=info, tags=tags, time=int(time.time() * 1000)))
        keys = [self.keys.stream(channel), self.keys.meta(channel)]
        if idempotency_key:
            keys.append(self.keys.idempotency(channel, idempotency_key))
        size = opts.size if opts.enabled else 0
        args = [body, size, _ms(opts.ttl), _ms(opts.meta_ttl), new_epoch(), self.keys.pubsub(channel),
                _ms(idempotency_ttl)]
        offset, epoch = await self._call(self._shard(channel).scripts["publish"](keys=keys, args=args), "publish")
        return StreamPosition(int(offset), epoch.decode() if offset else "")

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_message(channel, join_leave_message(MessageKind.JOIN, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_message(channel, join_leave_message(MessageKind.LEAVE, info))

    async def _publish_message(self, channel: str, message: bytes) -> None:
        await self._call(self._shard(channel).client.publish(self.keys.pubsub(channel), message), "publish")

    async def publish_control(self, data: bytes) -> None:
        await self._call(self._shards[0].client.publish(self.keys.control, data), "control publish")

    # --- delivery (from the links) ---------------------------------------------------------------------------

    def _on_message(self, key: str, data: bytes) -> None:
        if key == self.keys.control:
            self._control.put_nowait(data)
            return
        channel = self.keys.channel_of(key)
        message = decode_message(data)
        if message.kind is MessageKind.PUBLICATION and message.publication is not None:
            self._deliver(channel, message.publication, message.position)
        elif message.info is not None:
            if message.kind is MessageKind.JOIN:
                self.events.on_join(channel, message.info)
            else:
                self.events.on_leave(channel, message.info)

    def _deliver(self, channel: str, pub: Publication, position: StreamPosition) -> None:
        if position.offset and channel in self._subscribed:
            self._track(channel, position)
        self.events.on_publication(channel, pub)

    def _track(self, channel: str, position: StreamPosition) -> None:
        """Remember the newest position seen; a new epoch means the old stream is gone for good."""
        known = self._positions.get(channel)
        if known is not None and known.epoch != position.epoch:
            log.info("channel %s: stream epoch changed (%s → %s)", channel, known.epoch, position.epoch)
            self.events.on_insufficient_state(channel)
        if known is None or known.epoch != position.epoch or position.offset > known.offset:
            self._positions[channel] = position

    async def _run_control(self) -> None:
        while True:
            data = await self._control.get()
            try:
                await self.events.on_control(data)
            except Exception:
                log.exception("control message could not be handled")

    async def _on_link_up(self, shard: int, reconnected: bool) -> None:
        """After a reconnect: give each subscribed channel of this shard what it missed, or make it recover."""
        if not reconnected:
            return
        channels = [ch for ch in self._positions if shard_index(ch, len(self._shards)) == shard]
        gate = asyncio.Semaphore(RESYNC_CONCURRENCY)

        async def one(channel: str) -> None:
            async with gate:
                await self._resync(channel)

        await asyncio.gather(*(one(ch) for ch in channels))
        if channels:
            log.info("Redis: %d channel(s) checked for publications missed while the link was down", len(channels))

    async def _resync(self, channel: str) -> None:
        known = self._positions.get(channel)
        if known is None:
            return
        try:
            pubs, top = await self._history(channel, known.offset, RESYNC_LIMIT, False, self._meta_ttl)
        except EngineError as exc:
            log.warning("channel %s: cannot read back missed publications (%s)", channel, exc)
            self.events.on_insufficient_state(channel)
            return
        if top.epoch != known.epoch:
            self._track(channel, top)
            return
        for pub in pubs:  # a gap (history trimmed) is caught by each positioned subscriber
            self._deliver(channel, pub, StreamPosition(pub.offset, top.epoch))

    # --- subscriptions ---------------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        link = self._links[shard_index(channel, len(self._shards))]
        await link.subscribe(self.keys.pubsub(channel))
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)
        self._positions.pop(channel, None)
        await self._links[shard_index(channel, len(self._shards))].unsubscribe(self.keys.pubsub(channel))

    # --- history ---------------------------------------------------------------------------------------------

    async def history(
        self, channel: str, since: StreamPosition | None, limit: int, reverse: bool, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        pubs, top = await self._history(channel, None if since is None else since.offset, limit, reverse, meta_ttl)
        if channel in self._subscribed:
            known = self._positions.get(channel)
            if known is None or known.epoch != top.epoch:
                self._track(channel, top)
        return pubs, top

    async def _history(
        self, channel: str, since: int | None, limit: int, reverse: bool, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        if since is None:
            bound = "+" if reverse else "-"
        elif reverse:
            bound = f"{since - 1}-0" if since > 1 else ""
        else:
            bound = f"{since + 1}-0"
        if not bound:  # nothing comes before offset 1
            limit = 0
        args = [limit, bound or "-", "1" if reverse else "0", _ms(meta_ttl), new_epoch()]
        keys = [self.keys.stream(channel), self.keys.meta(channel)]
        top, epoch, entries = await self._call(self._shard(channel).scripts["history"](keys=keys, args=args),
                                               "history")
        pubs = [decode_publication(fields[1], int(entry_id.split(b"-", 1)[0])) for entry_id, fields in entries]
        return pubs, StreamPosition(int(top), epoch.decode())

    async def remove_history(self, channel: str) -> None:
        await self._call(self._shard(channel).client.delete(self.keys.stream(channel)), "history_remove")

    # --- presence --------------------------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> list[str]:
        return [self.keys.presence_expiry(channel), self.keys.presence_data(channel)]

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo, ttl: float) -> None:
        await self.refresh_presence([(channel, client_id, info)], ttl)

    async def refresh_presence(self, entries: list[tuple[str, str, ClientInfo]], ttl: float) -> None:
        """One pipelined round trip per shard."""
        expires = int((time.time() + ttl) * 1000)
        by_shard: dict[int, list[tuple[str, str, ClientInfo]]] = {}
        for entry in entries:
            by_shard.setdefault(shard_index(entry[0], len(self._shards)), []).append(entry)
        for index, items in by_shard.items():
            shard = self._shards[index]
            pipe = shard.client.pipeline(transaction=False)
            for channel, client_id, info in items:
                await shard.scripts["presence_add"](
                    keys=self._presence_keys(channel),
                    args=[_ms(ttl), expires, client_id, encode_info(info, self._node_id)], client=pipe)
            await self._call(pipe.execute(), "presence update")

    async def remove_presence(self, channel: str, client_id: str) -> None:
        script = self._shard(channel).scripts["presence_remove"]
        await self._call(script(keys=self._presence_keys(channel), args=[client_id]), "presence remove")

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        script = self._shard(channel).scripts["presence_get"]
        flat = await self._call(script(keys=self._presence_keys(channel), args=[int(time.time() * 1000)]),
                                "presence")
        return {flat[i].decode(): decode_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> PresenceStats:
        live = await self.presence(channel)
        return PresenceStats(num_clients=len(live), num_users=len({i.user for i in live.values()}))

    async def maintain(self) -> None:
        """Nothing to sweep: Redis expires history, metadata and presence keys by itself."""
        return None


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)
