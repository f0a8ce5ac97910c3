"""Group commit to the SQLite history store, from the IOLoop side.

`submit(op)` queues an operation and returns a future that resolves once the transaction holding it has
committed (`queue(op)` queues one nobody waits for). One batch is written at a time on the store's single
writer thread; whatever is submitted while a batch is being written goes into the next one, so publications
that arrive together share one transaction. After each commit, `on_committed` runs for every op of the batch
in submission order (on the IOLoop), before the futures resolve. When a batch fails, that batch and everything
queued behind it fail with `EngineError` and `on_failed` gets their ops, so the engine can take back offsets
it had handed out.

Owns: `Store`. May import: engines, engines.sqlite_db.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import EngineError
from .sqlite_db import LoadedStream, Op, SqliteDb, StoreError

log = logging.getLogger("gust.store")
T = TypeVar("T")


class Store:
    def __init__(
        self, db: SqliteDb, on_committed: Callable[[Op], None], on_failed: Callable[[list[Op]], None]
    ) -> None:
        self._db = db
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gust-store")
        self._pending: list[tuple[Op, asyncio.Future[None] | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> dict[str, LoadedStream]:
        """Open (creating if needed) the database and read back every live stream."""
        await self._run(self._db.open)
        if self._db.created:
            log.info("history store: created %s", self._db.path)
        return await self._run(self._db.load, time.time())

    def submit(self, op: Op) -> asyncio.Future[None]:
        """Queue `op`: a future that resolves after its commit (or fails with `EngineError`)."""
        future = asyncio.get_running_loop().create_future()
        self._enqueue(op, future)
        return future

    def queue(self, op: Op) -> None:
        """Queue `op` without waiting for its commit."""
        self._enqueue(op, None)

    def _enqueue(self, op: Op, future: asyncio.Future[None] | None) -> None:
        if self._closed:
            raise EngineError("history store is closed")
        self._pending.append((op, future))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_batches())

    async def _write_batches(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._run(self._db.write, [op for op, _ in batch])
                except StoreError as exc:
                    self._fail(batch, exc)
                    continue
                for op, _ in batch:
                    try:
                        self._on_committed(op)
                    except Exception:  # a delivery problem must not leave publishers waiting forever
                        log.exception("delivering committed publication to %s failed", op.channel)
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_result(None)
        finally:
            self._writer = None

    def _fail(self, batch: list[tuple[Op, asyncio.Future[None] | None]], exc: StoreError) -> None:
        log.error("%s", exc)
        failed = batch + self._pending
        self._pending = []
        self._on_failed([op for op, _ in failed])
        for _, future in failed:
            if future is not None and not future.done():
                future.set_exception(EngineError(str(exc)))

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def expire(self) -> int:
        """Delete expired publications and streams (in the writer thread, between batches)."""
        try:
            return await self._run(self._db.expire, time.time())
        except StoreError as exc:
            raise EngineError(str(exc)) from None

    async def close(self) -> None:
        """Flush, then close the database and stop the writer thread."""
        await self.flush()
        self._closed = True
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
