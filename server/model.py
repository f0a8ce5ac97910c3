"""Value types shared by every layer, and the pure recovery maths.

Owns: `Publication`, `StreamPosition`, `ClientInfo`, `PresenceStats`, `is_recovered`, `merge_publications`.
Must not import anything outside the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel stream: the top (or a client's last seen) offset and the stream's epoch."""

    offset: int = 0
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is behind a connection, as shown in presence, join/leave and publications.

    `conn_info` and `chan_info` are raw JSON (already encoded), embedded as they are on the wire.
    """

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in a channel. `data` is raw JSON bytes; `offset` is 0 when the channel keeps no history."""

    data: bytes
    offset: int = 0
    info: ClientInfo | None = None
    tags: dict[str, str] = field(default_factory=dict)
    time: int = 0  # unix milliseconds, 0 when unknown


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


def is_recovered(
    requested: StreamPosition,
    current: StreamPosition,
    publications: list[Publication],
    limit: int,
) -> bool:
    """Return True when `publications` are exactly the ones a client at `requested` missed.

    That holds when the epoch is unchanged (an empty requested epoch means "any"), the client is not ahead
    of the stream, no more than `limit` publications are missing, and `publications` are the contiguous
    offsets `requested.offset + 1 … current.offset`.
    """
    if requested.epoch and requested.epoch != current.epoch:
        return False
    if requested.offset > current.offset:
        return False
    missing = current.offset - requested.offset
    if missing > limit or missing != len(publications):
        return False
    expected = requested.offset + 1
    for pub in publications:
        if pub.offset != expected:
            return False
        expected += 1
    return True


def merge_publications(recovered: Iterable[Publication], buffered: Iterable[Publication]) -> list[Publication]:
    """Merge history with publications buffered during subscribe: deduplicated by offset, ascending.

    Publications without an offset (channels without history) keep their arrival order after the others.
    """
    by_offset: dict[int, Publication] = {}
    unpositioned: list[Publication] = []
    for pub in (*recovered, *buffered):
        if pub.offset == 0:
            unpositioned.append(pub)
        else:
            by_offset.setdefault(pub.offset, pub)
    return [by_offset[k] for k in sorted(by_offset)] + unpositioned


def has_gap(publications: list[Publication], after: int) -> bool:
    """True when positioned `publications` (ascending) do not follow on contiguously from offset `after`."""
    expected = after + 1
    for pub in publications:
        if pub.offset == 0:
            continue
        if pub.offset != expected:
            return True
        expected += 1
    return False
