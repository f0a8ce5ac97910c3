"""This node's registry of sessions (by client id and user) and of channel subscribers, and fan-out.

Owns: `Hub`, the `Subscriber` protocol it needs. `broadcast` encodes a push once and hands the same bytes to
every local subscriber without awaiting anything; `flushes` writes each session's output once per IOLoop turn.
May import: model, protocol, outbound.
"""

from __future__ import annotations

from typing import Protocol

from .model import ClientInfo, Publication
from .outbound import FlushQueue, ws_text_frame
from .protocol import encode_join_leave_push, encode_pub_push


class Subscriber(Protocol):
    """What the hub and node need from a connection (a `ClientSession` in practice)."""

    @property
    def client_id(self) -> str: ...

    @property
    def user(self) -> str: ...

    def deliver_publication(self, channel: str, pub: Publication, frame: bytes, framed: bytes | None = None) -> None:
        ...

    def deliver_join_leave(self, channel: str, frame: bytes) -> None: ...

    def lost_position(self, channel: str) -> None:
        """Publications of `channel` may be lost for good: a positioned subscription must resubscribe."""
        ...


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Subscriber] = {}
        self._users: dict[str, dict[str, Subscriber]] = {}
        self._channels: dict[str, dict[str, Subscriber]] = {}
        self.flushes = FlushQueue()

    # sessions

    def add_session(self, sub: Subscriber) -> None:
        self._sessions[sub.client_id] = sub
        self._users.setdefault(sub.user, {})[sub.client_id] = sub

    def remove_session(self, sub: Subscriber) -> None:
        self._sessions.pop(sub.client_id, None)
        by_user = self._users.get(sub.user)
        if by_user is not None:
            by_user.pop(sub.client_id, None)
            if not by_user:
                del self._users[sub.user]

    def all_sessions(self) -> list[Subscriber]:
        return list(self._sessions.values())

    def session(self, client_id: str) -> Subscriber | None:
        return self._sessions.get(client_id)

    def num_user_sessions(self, user: str) -> int:
        return len(self._users.get(user, ()))

    def user_sessions(self, user: str) -> list[Subscriber]:
        return list(self._users.get(user, {}).values())

    @property
    def num_clients(self) -> int:
        return len(self._sessions)

    @property
    def num_users(self) -> int:
        return len(self._users)

    # channel subscribers

    def add_subscriber(self, channel: str, sub: Subscriber) -> bool:
        """Register `sub`; True when it is the channel's first local subscriber."""
        subs = self._channels.setdefault(channel, {})
        subs[sub.client_id] = sub
        return len(subs) == 1

    def remove_subscriber(self, channel: str, sub: Subscriber) -> bool:
        """Forget `sub`; True when the channel has no local subscriber left."""
        subs = self._channels.get(channel)
        if subs is None or subs.pop(sub.client_id, None) is None:
            return False
        if not subs:
            del self._channels[channel]
            return True
        return False

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._channels

    def subscribers(self, channel: str) -> list[Subscriber]:
        return list(self._channels.get(channel, {}).values())

    def num_subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def channels(self) -> dict[str, int]:
        """Channel name → number of local subscribers."""
        return {name: len(subs) for name, subs in self._channels.items()}

    @property
    def num_channels(self) -> int:
        return len(self._channels)

    @property
    def num_subscriptions(self) -> int:
        return sum(len(subs) for subs in self._channels.values())

    # fan-out

    def broadcast(self, channel: str, pub: Publication) -> None:
        subs = self._channels.get(channel)
        if not subs:
            return
        frame = encode_pub_push(channel, pub)
        framed = ws_text_frame(frame)  # encoded once, framed once: the same bytes for every subscriber
        for sub in list(subs.values()):
            sub.deliver_publication(channel, pub, frame, framed)

    def broadcast_join_leave(self, channel: str, kind: str, info: ClientInfo) -> None:
        subs = self._channels.get(channel)
        if not subs:
            return
        frame = encode_join_leave_push(channel, kind, info)
        for sub in list(subs.values()):
            sub.deliver_join_leave(channel, frame)

    def insufficient_state(self, channel: str) -> None:
        for sub in list(self._channels.get(channel, {}).values()):
            sub.lost_position(channel)
