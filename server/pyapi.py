"""`ServerAPI`: the server HTTP API's operations as Python coroutines, for an application embedding Gust. The
same code runs as for `POST /api/<method>` (`api_methods`, `Node`): only the JSON envelope is gone. Data are
Python JSON values in, raw JSON bytes out (`Publication.data`, `ClientInfo.conn_info`; decode with `json.loads`).
Failures raise `ReplyError` (`.code`, `.message`), e.g. 108 when the channel keeps no history.

Owns: `ServerAPI`, `HistoryResult`. May import: model, protocol, node, api_methods, hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import api_methods
from .hooks import encode_json
from .model import ClientInfo, PresenceStats, Publication, StreamPosition
from .node import Node
from .protocol import Disconnects, ErrorCode, ReplyError


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications (oldest first unless `reverse`) and the stream's current top position."""

    publications: list[Publication]
    position: StreamPosition


def _channel(channel: str) -> str:
    if not channel:
        raise ReplyError(ErrorCode.BAD_REQUEST, "channel required")
    return channel


class ServerAPI:
    """The server API, awaited directly (mixed into `Gust`). Acts on this node's engine, so with the Redis engine
    publications, presence and history are cluster-wide; connection operations (`disconnect`, `subscribe`,
    `unsubscribe`, `refresh`) reach the connections of this node."""

    node: Node

    async def publish(
        self, channel: str, data: Any, *, tags: dict[str, str] | None = None, skip_history: bool = False,
        idempotency_key: str = "",
    ) -> StreamPosition:
        """Publish `data` (any JSON value) to `channel`; its position (offset 0 when the channel keeps no
        history). A repeated `idempotency_key` within 5 minutes publishes nothing and returns the first position."""
        return await self.node.publish(
            _channel(channel), encode_json(data), tags=tags, skip_history=skip_history, idempotency_key=idempotency_key)

    async def broadcast(
        self, channels: Iterable[str], data: Any, *, tags: dict[str, str] | None = None, skip_history: bool = False,
        idempotency_key: str = "",
    ) -> list[StreamPosition | ReplyError]:
        """Publish the same `data` to each channel: per channel, its position or the error it met."""
        results: list[StreamPosition | ReplyError] = []
        for channel in channels:
            try:
                results.append(await self.publish(channel, data, tags=tags, skip_history=skip_history,
                                                  idempotency_key=idempotency_key))
            except ReplyError as exc:
                results.append(exc)
        return results

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to `channel`: client id → `ClientInfo` (108 when presence is off)."""
        return await self.node.presence(_channel(channel))

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Numbers of clients and of distinct users subscribed to `channel`."""
        return await self.node.presence_stats(_channel(channel))

    async def history(
        self, channel: str, *, limit: int = 0, since: StreamPosition | None = None, reverse: bool = False,
    ) -> HistoryResult:
        """Up to `limit` publications after `since` (0: none, only the position; -1: all kept). 108 when the
        channel keeps no history, 112 when `since` is from another epoch."""
        pubs, top = await self.node.history(_channel(channel), since, limit, reverse)
        return HistoryResult(pubs, top)

    async def history_remove(self, channel: str) -> None:
        """Drop the channel's history (the position stays)."""
        await self.node.remove_history(_channel(channel))

    async def subscribe(
        self, user: str, channel: str, *, client: str = "", info: Any = None, data: Any = None,
    ) -> None:
        """Subscribe the user's connections (or only `client`) to `channel`; they get a `subscribe` push with
        `data`. `info`: channel info attached to their presence and publications."""
        await api_methods.subscribe(self.node, {"user": user, "client": client, "channel": _channel(channel),
                                                "info": info, "data": data})

    async def unsubscribe(self, user: str, channel: str, *, client: str = "") -> None:
        """Unsubscribe the user's connections (or only `client`) from `channel` (push code 2000)."""
        await api_methods.unsubscribe(self.node, {"user": user, "client": client, "channel": _channel(channel)})

    async def disconnect(
        self, user: str, *, client: str = "", code: int = Disconnects.FORCE_DISCONNECT.code,
        reason: str = Disconnects.FORCE_DISCONNECT.reason, whitelist: Iterable[str] = (),
    ) -> None:
        """Close the user's connections (or only `client`), except the client ids in `whitelist`, with `code`
        (3000–4999) and `reason` (≤ 123 bytes). 3503 "force disconnect" by default: the SDKs do not reconnect."""
        await api_methods.disconnect(self.node, {
            "user": user, "client": client, "whitelist": list(whitelist),
            "disconnect": {"code": code, "reason": reason}})

    async def refresh(
        self, user: str, *, client: str = "", expired: bool = False, expire_at: int = 0, info: Any = None,
    ) -> None:
        """Move the expiry of the user's connections to `expire_at` (unix seconds, 0 = never), replace their
        connection `info`, or (`expired`) close them as expired (3005)."""
        await api_methods.refresh(self.node, {"user": user, "client": client, "expired": expired,
                                              "expire_at": expire_at, "info": info})

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on this node (glob `pattern`, e.g. "chat:*"): name → number of clients."""
        found = await api_methods.channels(self.node, {"pattern": pattern})
        return {name: entry["num_clients"] for name, entry in found["channels"].items()}

    async def info(self) -> dict[str, Any]:
        """This node's statistics, as the HTTP API's `info` returns them (`{"nodes": [...]}`)."""
        return await api_methods.info(self.node, {})
