"""The memory engine: per-channel streams (epoch, top offset, bounded history with TTL) and presence with
expiry, all in this process. `publish` calls `events.on_publication` in the same call stack.

Owns: `MemoryEngine`, `new_epoch`. May import: model, engines.
"""

from __future__ import annotations

import secrets
import string
import time
from collections import deque
from dataclasses import dataclass, field

from ..model import ClientInfo, PresenceStats, Publication, StreamPosition
from . import EngineError, EngineEvents, HistoryOptions

_EPOCH_ALPHABET = string.ascii_letters


def new_epoch() -> str:
    """8 random letters, like Centrifuge's memory broker."""
    return "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(8))


@dataclass(slots=True)
class Stream:
    epoch: str
    top: int = 0
    items: deque[tuple[Publication, float]] = field(default_factory=deque)  # (pub, expires_at)
    meta_expires_at: float = 0.0

    def trim(self, now: float, size: int | None = None) -> None:
        while self.items and (self.items[0][1] <= now or (size is not None and len(self.items) > size)):
            self.items.popleft()


class MemoryEngine:
    """All state in dicts owned by this object; safe because everything runs on one IOLoop."""

    def __init__(self) -> None:
        self._events: EngineEvents | None = None
        self._streams: dict[str, Stream] = {}
        self._presence: dict[str, dict[str, tuple[ClientInfo, float]]] = {}
        self._now = time.monotonic

    async def start(self, events: EngineEvents) -> None:
        self._events = events

    async def close(self) -> None:
        self._events = None

    @property
    def events(self) -> EngineEvents:
        if self._events is None:
            raise EngineError("engine is not running")
        return self._events

    def _stream(self, channel: str, meta_ttl: float) -> Stream:
        now = self._now()
        stream = self._streams.get(channel)
        if stream is None or (stream.meta_expires_at and stream.meta_expires_at <= now):
            stream = self._streams[channel] = Stream(epoch=new_epoch())
        if meta_ttl > 0:
            stream.meta_expires_at = now + meta_ttl
        return stream

    async def publish(
        self, channel: str, data: bytes, info: ClientInfo | None, tags: dict[str, str], opts: HistoryOptions
    ) -> StreamPosition:
        events = self.events
        stamp = int(time.time() * 1000)
        if not opts.enabled:
            events.on_publication(channel, Publication(data=data, info=info, tags=tags, time=stamp))
            return StreamPosition()
        stream = self._stream(channel, opts.meta_ttl)
        stream.top += 1
        pub = Publication(data=data, offset=stream.top, info=info, tags=tags, time=stamp)
        stream.items.append((pub, self._now() + opts.ttl))
        stream.trim(self._now(), opts.size)
        events.on_publication(channel, pub)
        return StreamPosition(stream.top, stream.epoch)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        self.events.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.on_leave(channel, info)

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

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo, ttl: float) -> None:
        self._presence.setdefault(channel, {})[client_id] = (info, self._now() + ttl)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._presence.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._presence[channel]

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
        """Drop expired history items, stream metadata past its TTL and expired presence entries."""
        now = self._now()
        for channel in [c for c, s in self._streams.items() if s.meta_expires_at and s.meta_expires_at <= now]:
            del self._streams[channel]
        for stream in self._streams.values():
            stream.trim(now)
        for channel in list(self._presence):
            self._live_presence(channel)
            if not self._presence.get(channel):
                self._presence.pop(channel, None)
