"""The outbound fast path's pure parts: WebSocket text framing, and one flush per IOLoop turn for all sessions.

Owns: `ws_text_frame`, `FlushQueue`. Must not import tornado (the socket write itself is in websocket.py).

A publication's push is encoded once and framed once (`Hub.broadcast`); every subscriber that has nothing else
queued in this IOLoop turn gets those same bytes. Sessions with output mark themselves dirty; one callback per
turn flushes them all, instead of one scheduled callback per session per message.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol

log = logging.getLogger("gust.outbound")

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81  # FIN + opcode 1 (text); server frames are never masked (RFC 6455 §5.1)


def ws_text_frame(payload: bytes) -> bytes:
    """One complete, unmasked WebSocket text frame carrying `payload` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 65536:
        return _LEN16.pack(_FIN_TEXT, 126, size) + payload
    return _LEN64.pack(_FIN_TEXT, 127, size) + payload


class Flushable(Protocol):
    def flush(self) -> None: ...


class FlushQueue:
    """Sessions with queued output, flushed together by one `call_soon` per IOLoop turn.

    A big flush (thousands of sessions) goes in chunks of `chunk` sessions, one per loop iteration, so that I/O
    ready meanwhile is handled in between: API requests are answered during a large fan-out, and publications
    that arrive meanwhile join the output of the sessions not written yet (one write for several publications).
    """

    __slots__ = ("_dirty", "_handle", "_loop", "_next", "_waited", "chunk")

    def __init__(self, chunk: int = 256) -> None:
        self.chunk = chunk
        self._dirty: list[Flushable] = []
        self._next = 0  # index in `_dirty` of the next session to flush
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waited = False

    def add(self, session: Flushable) -> None:
        """Flush `session` at the end of this turn (the caller adds each session once until it is flushed)."""
        self._dirty.append(session)
        if self._handle is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_soon(self._run)

    def _run(self) -> None:
        assert self._loop is not None
        if not self._waited:
            # Let the I/O that is ready meanwhile (e.g. more publish requests) be handled first, so that what it
            # queues joins this flush: one write per connection for several publications under load, and only
            # one extra loop iteration (microseconds) when idle.
            self._waited = True
            self._handle = self._loop.call_soon(self._run)
            return
        dirty, start = self._dirty, self._next
        end = min(len(dirty), start + self.chunk)
        for i in range(start, end):
            try:
                dirty[i].flush()
            except Exception:  # one broken session must not keep the others' output back
                log.exception("flush failed")
        if end < len(dirty):
            self._next = end
            self._handle = self._loop.call_soon(self._run)
            return
        self._dirty, self._next, self._waited, self._handle = [], 0, False, None
