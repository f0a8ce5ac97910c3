"""The memory engine: per-channel streams (epoch, top offset, bounded history with TTL) and presence with
expiry, all in this process. Reads are served from RAM.

With a store (`engine.memory.persistence = "sqlite"`), history is also written to SQLite: a publication gets its
offset at once, but it joins the in-RAM stream, reaches subscribers and is acknowledged only after the
transaction holding it has committed, so an offset is never delivered and then lost. At start the streams are
read back from the store. Without a store, `publish` delivers in the same call stack.

Owns: `MemoryEngine`, `new_epoch`. May import: model, engines.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections import deque
from dataclasses import dataclass, field

from ..model import ClientInfo, PresenceStats, Publication, StreamPosition
from . import EngineError, EngineEvents, HistoryOptions
from .sqlite_db import LoadedStream, Op, OpKind, SqliteDb, StoreError
from .store import Store

log = logging.getLogger("gust.engine")

_EPOCH_ALPHABET = string.ascii_letters


def new_epoch() -> str:
    """8 random letters, like Centrifuge's memory broker."""
    return "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(8))


@dataclass(slots=True)
class Stream:
    epoch: str
    top: int = 0  # the last offset readers may see (committed, when there is a store)
    assigned: int = 0  # the last offset handed out (> top while publications wait for their commit)
    items: deque[tuple[Publication, float]] = field(default_factory=deque)  # (pub, expires_at monotonic)
    meta_expires_at: float = 0.0  # monotonic; 0 = never

    def trim(self, now: float, size: int | None = None) -> None:
        while self.items and (self.items[0][1] <= now or (size is not None and len(self.items) > size)):
            self.items.popleft()


class MemoryEngine:
    """All state in dicts owned by this object; safe because everything runs on one IOLoop."""

    def __init__(self, store: Store | None = None) -> None:
        self._events: EngineEvents | None = None
        self._streams: dict[str, Stream] = {}
        self._presence: dict[str, dict[str, tuple[ClientInfo, float]]] = {}
        self._now = time.monotonic
        self._store = store

    @classmethod
    def with_store(cls, db: SqliteDb) -> MemoryEngine:
        engine = cls()
        engine._store = Store(db, engine._on_committed, engine._on_failed)
        return engine

    async def start(self, events: EngineEvents, node_id: str = "") -> None:
        if self._store is not None:
            started = time.monotonic()
            try:
                loaded = await self._store.open()
            except StoreError as exc:
                raise EngineError(str(exc)) from None
            self._restore(loaded)
            log.info("history store: recovered %d channel(s), %d publication(s) in %.0f ms",
                     len(loaded), sum(len(s.pubs) for s in loaded.values()), (time.monotonic() - started) * 1000)
        self._events = events

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        self._events = None

    def _restore(self, loaded: dict[str, LoadedStream]) -> None:
        mono, wall = self._now(), time.time()
        for channel, item in loaded.items():
            meta = mono + (item.meta_expires_at - wall) if item.meta_expires_at else 0.0
            stream = Stream(epoch=item.epoch, top=item.top, assigned=item.top, meta_expires_at=meta)
            stream.items.extend((pub, mono + (exp - wall)) for pub, exp in item.pubs)
            self._streams[channel] = stream

    @property
    def events(self) -> EngineEvents:
        if self._events is None:
            raise EngineError("engine is not running")
        return self._events

    def _stream(self, channel: str, meta_ttl: float) -> Stream:
        now = self._now()
        stream = self._streams.get(channel)
        expired = stream is not None and 0 < stream.meta_expires_at <= now and stream.assigned == stream.top
        if stream is None or expired:
            stream = self._streams[channel] = Stream(epoch=new_epoch())
            if self._store is not None:  # remember the epoch, so a restart keeps it
                self._store.queue(Op(OpKind.META, channel, stream.epoch, 0, _wall(meta_ttl)))
        if meta_ttl > 0:
            stream.meta_expires_at = now + meta_ttl
        return stream

    async def publish(
        self, channel: str, data: bytes, info: ClientInfo | None, tags: dict[str, str], opts: HistoryOptions,
        idempotency_key: str = "", idempotency_ttl: float = 0.0,
    ) -> StreamPosition:
        """(One node: the node's own idempotency cache is enough, so the key is not looked at here.)"""
        events = self.events
        stamp = int(time.time() * 1000)
        if not opts.enabled:
            events.on_publication(channel, Publication(data=data, info=info, tags=tags, time=stamp))
            return StreamPosition()
        stream = self._stream(channel, opts.meta_ttl)
        stream.assigned += 1
        pub = Publication(data=data, offset=stream.assigned, info=info, tags=tags, time=stamp)
        if self._store is None:
            self._append(channel, stream, pub, opts.ttl, opts.size)
            return StreamPosition(stream.top, stream.epoch)
        epoch = stream.epoch
        op = Op(OpKind.PUBLISH, channel, epoch, pub.offset, _wall(opts.meta_ttl), pub, time.time() + opts.ttl,
                opts.size)
        await self._store.submit(op)
        return StreamPosition(pub.offset, epoch)

    def _append(self, channel: str, stream: Stream, pub: Publication, ttl: float, size: int) -> None:
        stream.top = pub.offset
        stream.items.append((pub, self._now() + ttl))
        stream.trim(self._now(), size)
        self.events.on_publication(channel, pub)

    def _on_committed(self, op: Op) -> None:
        stream = self._streams.get(op.channel)
        if op.kind is not OpKind.PUBLISH or op.pub is None or stream is None or stream.epoch != op.epoch:
            return
        ttl = op.expires_at - time.time()
        self._append(op.channel, stream, op.pub, ttl, op.keep)

    def _on_failed(self, ops: list[Op]) -> None:
        """Offsets handed out for publications that were not stored are taken back."""
        for op in ops:
            stream = self._streams.get(op.channel)
            if stream is not None and stream.epoch == op.epoch:
                stream.assigned = stream.top

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        self.events.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.on_leave(channel, info)

    async def publish_control(self, data: bytes) -> None:
        await self.events.on_control(data)

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def history(
        self, channel: str, since: StreamPosition | None, limit: int, reverse: bool, meta_ttl: float
    ) -> tuple[list[Publication], StreamPosition]:
        stream = self._stream(channel, meta_ttl)
        stream.trim(self._now())
        top = StreamPosition(stream.top, stream.epoch)
        if limit == 0:
            return [], top
        pubs = [pub for pub, _ in stream.items]
        if since is not None:
            if reverse:
                pubs = [p for p in pubs if p.offset < since.offset]
            else:
                pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        if limit > 0:
            pubs = pubs[:limit]
        return pubs, top

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.items.clear()
        if self._store is not None:
            await self._store.submit(Op(OpKind.REMOVE_HISTORY, channel))

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo, ttl: float) -> None:
        self._presence.setdefault(channel, {})[client_id] = (info, self._now() + ttl)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._presence.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._presence[channel]

    async def refresh_presence(self, entries: list[tuple[str, str, ClientInfo]], ttl: float) -> None:
        for channel, client_id, info in entries:
            await self.add_presence(channel, client_id, info, ttl)

    def _live_presence(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._presence.get(channel)
        if not entries:
            return {}
        now = self._now()
        expired = [cid for cid, (_, exp) in entries.items() if exp <= now]
        for cid in expired:
            del entries[cid]
        return {cid: info for cid, (info, _) in entries.items()}

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self._live_presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        live = self._live_presence(channel)
        return PresenceStats(num_clients=len(live), num_users=len({i.user for i in live.values()}))

    async def maintain(self) -> None:
        """Drop expired history items, stream metadata past its TTL and expired presence entries (in the store
        too, in one batch)."""
        now = self._now()
        for channel in [c for c, s in self._streams.items()
                        if s.meta_expires_at and s.meta_expires_at <= now and s.assigned == s.top]:
            del self._streams[channel]
        for stream in self._streams.values():
            stream.trim(now)
        for channel in list(self._presence):
            self._live_presence(channel)
            if not self._presence.get(channel):
                self._presence.pop(channel, None)
        if self._store is not None:
            await self._store.expire()


def _wall(ttl: float) -> float:
    """A wall-clock expiry `ttl` seconds from now (0 = never), for the store."""
    return time.time() + ttl if ttl > 0 else 0.0
