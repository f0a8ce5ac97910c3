"""Draining for a graceful shutdown: once `start_draining` is called, new WebSocket upgrades and API requests
get 503, and `wait_idle` waits for the API requests already running.

Owns: `Drain`. Must not import anything from the package.
"""

from __future__ import annotations

import asyncio


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start_draining(self) -> None:
        self.draining = True

    def begin(self) -> None:
        """A request started (call `end` exactly once when it finishes)."""
        self._inflight += 1
        self._idle.clear()

    def end(self) -> None:
        self._inflight -= 1
        if self._inflight <= 0:
            self._inflight = 0
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self) -> None:
        await self._idle.wait()
