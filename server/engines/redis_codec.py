"""What the Redis engine stores and sends, as bytes, and where: key names, the shard of a channel, and the
encoding of publications, client info and pub/sub messages. Pure functions, no I/O.

Encodings keep every raw JSON value byte for byte (publication data, conn_info, chan_info): a small JSON header
gives the lengths, the raw parts follow it after a newline (orjson never writes a raw newline).

Pub/sub messages on a channel's pub/sub channel start with one kind byte:
- `p<offset>:<epoch>:<publication>` a publication (offset 0 and an empty epoch when the channel keeps no history);
- `j<info>` a join, `l<info>` a leave.

Owns: `Keys`, `shard_index`, `encode_publication`, `decode_publication`, `encode_info`, `decode_info`,
`decode_message`, `join_leave_message`, `Message`, `MessageKind`. May import: model.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..model import ClientInfo, Publication, StreamPosition


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and pub/sub channel name the engine uses, built in one place from the prefix."""

    prefix: str

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{channel}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.meta.{channel}"

    def pubsub(self, channel: str) -> str:
        return f"{self.prefix}.ch.{channel}"

    def presence_expiry(self, channel: str) -> str:
        return f"{self.prefix}.presence.expire.{channel}"

    def presence_data(self, channel: str) -> str:
        return f"{self.prefix}.presence.data.{channel}"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}.result.{channel}.{key}"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    def channel_of(self, pubsub_key: str) -> str:
        """The channel name of a `pubsub(channel)` key."""
        return pubsub_key[len(self.pubsub("")):]


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach): adding a bucket moves only 1/n of the keys."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_index(channel: str, shards: int) -> int:
    """The Redis instance (0..shards-1) that holds `channel`."""
    if shards == 1:
        return 0
    return jump_hash(zlib.crc32(channel.encode()), shards)


# --- client info ----------------------------------------------------------------------------------------------


def _info_header(info: ClientInfo) -> dict[str, Any]:
    return {"u": info.user, "c": info.client,
            "ci": -1 if info.conn_info is None else len(info.conn_info),
            "hi": -1 if info.chan_info is None else len(info.chan_info)}


def _info_tail(info: ClientInfo) -> bytes:
    return (info.conn_info or b"") + (info.chan_info or b"")


def _info_from(head: dict[str, Any], raw: bytes, pos: int) -> tuple[ClientInfo, int]:
    ci, hi = int(head["ci"]), int(head["hi"])
    conn = None if ci < 0 else raw[pos:pos + ci]
    pos += max(ci, 0)
    chan = None if hi < 0 else raw[pos:pos + hi]
    pos += max(hi, 0)
    return ClientInfo(str(head["u"]), str(head["c"]), conn, chan), pos


def encode_info(info: ClientInfo, node: str = "") -> bytes:
    """`info` (and, for presence entries, the node that keeps it alive)."""
    head = _info_header(info)
    if node:
        head["n"] = node
    return orjson.dumps(head) + b"\n" + _info_tail(info)


def decode_info(raw: bytes) -> ClientInfo:
    cut = raw.index(b"\n")
    info, _ = _info_from(orjson.loads(raw[:cut]), raw, cut + 1)
    return info


# --- publications ---------------------------------------------------------------------------------------------


def encode_publication(pub: Publication) -> bytes:
    """A publication without its offset (the publish script adds offset and epoch in front)."""
    head: dict[str, Any] = {"t": pub.time}
    if pub.tags:
        head["g"] = pub.tags
    tail = b""
    if pub.info is not None:
        head["i"] = _info_header(pub.info)
        tail = _info_tail(pub.info)
    return orjson.dumps(head) + b"\n" + tail + pub.data


def decode_publication(raw: bytes, offset: int = 0) -> Publication:
    cut = raw.index(b"\n")
    head = orjson.loads(raw[:cut])
    pos = cut + 1
    info = None
    if "i" in head:
        info, pos = _info_from(head["i"], raw, pos)
    tags = head.get("g") or {}
    return Publication(data=raw[pos:], offset=offset, info=info, tags=tags, time=int(head.get("t", 0)))


# --- pub/sub messages -----------------------------------------------------------------------------------------


class MessageKind(enum.Enum):
    PUBLICATION = b"p"[0]
    JOIN = b"j"[0]
    LEAVE = b"l"[0]


@dataclass(frozen=True, slots=True)
class Message:
    kind: MessageKind
    publication: Publication | None = None
    position: StreamPosition = field(default_factory=StreamPosition)
    info: ClientInfo | None = None


def join_leave_message(kind: MessageKind, info: ClientInfo) -> bytes:
    return bytes((kind.value,)) + encode_info(info)


def decode_message(raw: bytes) -> Message:
    """Parse a message from a channel's pub/sub channel; ValueError (or KeyError) when it is not one of ours."""
    kind = MessageKind(raw[0])
    if kind is MessageKind.PUBLICATION:
        first = raw.index(b":", 1)
        second = raw.index(b":", first + 1)
        offset = int(raw[1:first])
        epoch = raw[first + 1:second].decode()
        pub = decode_publication(raw[second + 1:], offset)
        return Message(kind, publication=pub, position=StreamPosition(offset, epoch))
    return Message(kind, info=decode_info(raw[1:]))
