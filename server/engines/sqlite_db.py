"""The SQLite file behind the memory engine's durable history. Synchronous: every method runs on the store's
one writer thread (see `store.py`), never on the IOLoop.

Tables: `streams` (channel → epoch, top offset, metadata expiry) and `publications` (channel, offset → the
publication and its expiry). Times stored here are wall-clock unix seconds, since they must survive restarts.

Owns: `SqliteDb`, `StoreError`, `Op` kinds, `LoadedStream`. May import: model.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..model import ClientInfo, Publication

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    channel TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    top INTEGER NOT NULL,
    meta_expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS publications (
    channel TEXT NOT NULL,
    offset INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    time INTEGER NOT NULL,
    data BLOB NOT NULL,
    user TEXT,
    client TEXT,
    conn_info BLOB,
    chan_info BLOB,
    tags TEXT,
    PRIMARY KEY (channel, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS publications_expiry ON publications (expires_at);
"""


class StoreError(Exception):
    """The history store cannot do its job; the message says what is wrong and what to do about it."""


class OpKind(enum.Enum):
    PUBLISH = "publish"  # store one publication and move the stream's top
    META = "meta"  # a stream's epoch/top/metadata expiry (e.g. a stream created by a read)
    REMOVE_HISTORY = "remove_history"  # drop publications, keep epoch and top


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    channel: str
    epoch: str = ""
    top: int = 0
    meta_expires_at: float = 0.0  # 0 = never
    pub: Publication | None = None
    expires_at: float = 0.0
    keep: int = 0  # history size: publications at or below top - keep are trimmed


@dataclass(slots=True)
class LoadedStream:
    epoch: str
    top: int
    meta_expires_at: float
    pubs: list[tuple[Publication, float]] = field(default_factory=list)  # (publication, expires_at)


def describe(path: Path, exc: sqlite3.Error) -> str:
    """A plain explanation of a SQLite failure on `path`."""
    text = str(exc)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return f"history store {path} is read-only ({text}): give the server write access to it and its directory"
    if "unable to open" in lowered:
        return f"cannot open history store {path} ({text}): check that the data directory exists and is writable"
    if "disk is full" in lowered or "disk i/o" in lowered:
        return f"history store {path}: the disk is full or failing ({text}); free space, then publish again"
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (f"history store {path} is corrupt ({text}): stop the server, move the file (and its -wal/-shm "
                f"files) away, and start again with empty history")
    return f"history store {path}: {text}"


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory with owner-only permissions (an existing one is left as it is)."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise StoreError(f"data directory {data_dir} is not a directory")


class SqliteDb:
    """One connection, used from one thread only."""

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self.created = False

    def open(self) -> None:
        prepare_data_dir(self.path.parent)
        self.created = not self.path.exists()
        try:  # owner-only before SQLite opens it: its -wal and -shm files copy the database file's mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            for suffix in ("", "-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if extra.exists():
                    os.chmod(extra, stat.S_IRUSR | stat.S_IWUSR)
        except OSError:
            pass  # a read-only or odd location: SQLite itself gives the clear message below
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"history store {self.path} has schema version {version}, newer than this "
                                 f"server understands ({SCHEMA_VERSION}): upgrade Gust or use another data_dir")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(describe(self.path, exc)) from None
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("history store is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    def load(self, now: float) -> dict[str, LoadedStream]:
        """Every stream whose metadata is alive, with its unexpired publications in offset order."""
        try:
            streams = {
                channel: LoadedStream(epoch, top, meta)
                for channel, epoch, top, meta in self.conn.execute(
                    "SELECT channel, epoch, top, meta_expires_at FROM streams "
                    "WHERE meta_expires_at = 0 OR meta_expires_at > ?", (now,))
            }
            rows = self.conn.execute(
                "SELECT channel, offset, expires_at, time, data, user, client, conn_info, chan_info, tags "
                "FROM publications WHERE expires_at > ? ORDER BY channel, offset", (now,))
            for channel, offset, expires_at, time_ms, data, user, client, conn_info, chan_info, tags in rows:
                stream = streams.get(channel)
                if stream is None or offset > stream.top:
                    continue
                info = ClientInfo(user, client, conn_info, chan_info) if client is not None else None
                pub = Publication(bytes(data), offset, info, json.loads(tags) if tags else {}, time_ms)
                stream.pubs.append((pub, expires_at))
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None
        return streams

    def write(self, ops: list[Op]) -> None:
        """Apply `ops` in one transaction (group commit). All or nothing."""
        conn = self.conn
        try:
            with _transaction(conn):
                trims: dict[str, int] = {}
                epochs: dict[str, str] = {}
                for op in ops:
                    self._apply(conn, op, trims, epochs)
                for channel, below in trims.items():
                    conn.execute("DELETE FROM publications WHERE channel = ? AND offset <= ?", (channel, below))
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None

    @staticmethod
    def _apply(conn: sqlite3.Connection, op: Op, trims: dict[str, int], epochs: dict[str, str]) -> None:
        if op.kind is OpKind.REMOVE_HISTORY:
            conn.execute("DELETE FROM publications WHERE channel = ?", (op.channel,))
            return
        if op.channel not in epochs:
            row = conn.execute("SELECT epoch FROM streams WHERE channel = ?", (op.channel,)).fetchone()
            epochs[op.channel] = row[0] if row else ""
        if epochs[op.channel] != op.epoch:  # a new epoch: the old stream's publications are gone for good
            conn.execute("DELETE FROM publications WHERE channel = ?", (op.channel,))
            trims.pop(op.channel, None)
            epochs[op.channel] = op.epoch
        if op.kind is OpKind.PUBLISH and op.pub is not None:
            pub, info = op.pub, op.pub.info
            conn.execute(
                "INSERT OR REPLACE INTO publications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (op.channel, pub.offset, op.expires_at, pub.time, pub.data,
                 info.user if info else None, info.client if info else None,
                 info.conn_info if info else None, info.chan_info if info else None,
                 json.dumps(pub.tags) if pub.tags else None),
            )
            if op.keep > 0:
                trims[op.channel] = max(trims.get(op.channel, 0), op.top - op.keep)
        conn.execute(
            "INSERT INTO streams VALUES (?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET "
            "epoch = excluded.epoch, top = excluded.top, meta_expires_at = excluded.meta_expires_at",
            (op.channel, op.epoch, op.top, op.meta_expires_at),
        )

    def expire(self, now: float) -> int:
        """Delete expired publications and streams whose metadata expired; return how many rows went."""
        try:
            conn = self.conn
            with _transaction(conn):
                gone = conn.execute("DELETE FROM publications WHERE expires_at <= ?", (now,)).rowcount
                dead = [c for (c,) in conn.execute(
                    "SELECT channel FROM streams WHERE meta_expires_at > 0 AND meta_expires_at <= ?", (now,))]
                for channel in dead:
                    conn.execute("DELETE FROM publications WHERE channel = ?", (channel,))
                    conn.execute("DELETE FROM streams WHERE channel = ?", (channel,))
        except sqlite3.Error as exc:
            raise StoreError(describe(self.path, exc)) from None
        return gone + len(dead)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT around the block; ROLLBACK when it raises anything."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # the failed statement may have ended the transaction already
        conn.execute("ROLLBACK")
