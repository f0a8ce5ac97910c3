"""Building subscriptions: client-side (the `subscribe` command), server-side (connection-token `channels`/`subs`
at connect, and the HTTP API's `subscribe`), with recovery and the buffered switch to live delivery.

Owns: `new_subscription`, `establish`, `go_live`, `server_subscribe`, `connect_server_subs`, `with_override`.
May import: model, protocol, auth, config, session.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from .auth import SubOptions
from .channels import split_namespace
from .config import ChannelOptions
from .model import ClientInfo, StreamPosition, has_gap, is_recovered, merge_publications
from .protocol import (
    Disconnects,
    ErrorCode,
    ProtocolError,
    ReplyError,
    encode_subscribe_push,
    publication_dict,
    raw,
)
from .session import ClientSession, State, Subscription

Result = dict[str, Any]


def with_override(opts: ChannelOptions, override: dict[str, bool]) -> ChannelOptions:
    """Channel options with a token's `override` applied (recovery only where the channel keeps history)."""
    if not override:
        return opts
    changes: dict[str, Any] = dict(override)
    if changes.get("force_recovery") and not opts.history_enabled:
        del changes["force_recovery"]
    return dataclasses.replace(opts, **changes)


def new_subscription(
    s: ClientSession, channel: str, opts: ChannelOptions, chan_info: bytes | None,
    recoverable: bool, positioned: bool, asked_join_leave: bool,
) -> Subscription:
    sub = Subscription(channel)
    sub.recoverable = recoverable
    sub.positioned = recoverable or positioned
    sub.join_leave = opts.join_leave
    sub.push_join_leave = opts.join_leave and (opts.force_push_join_leave or asked_join_leave)
    sub.presence = opts.presence
    if sub.presence or sub.join_leave:  # only they publish it; an idle connection keeps no copy otherwise
        sub.info = ClientInfo(s.user, s.client_id, s.conn_info, chan_info)
    return sub


async def establish(s: ClientSession, sub: Subscription, recover: bool, requested: StreamPosition) -> Result:
    """Register `sub` (buffering from now on), add presence, read the stream position (and the missed
    publications when recovering). Undone in reverse order on any failure."""
    s.subs[sub.channel] = sub
    try:
        await s.node.subscribe(s, sub.channel)
        if sub.presence and sub.info is not None:
            await s.node.add_presence(sub.channel, sub.info)
        return await _subscribe_result(s, sub, recover, requested)
    except BaseException:
        if s.subs.get(sub.channel) is sub:
            del s.subs[sub.channel]
        await s.leave_channel(sub, announce=False)
        raise


async def _subscribe_result(s: ClientSession, sub: Subscription, recover: bool, requested: StreamPosition) -> Result:
    result: Result = {
        "recoverable": sub.recoverable, "positioned": sub.positioned, "epoch": "", "offset": 0,
        "recovered": False, "was_recovering": recover, "publications": [],
    }
    if not sub.positioned:
        return result
    limit = s.config.client.recovery_max_publication_limit
    if recover:
        pubs, top = await s.node.engine.history(
            sub.channel, requested, limit, False, s.config.channel.history_meta_ttl)
    else:
        pubs, top = [], await s.node.stream_top(sub.channel)
    sub.epoch = result["epoch"] = top.epoch
    sub.offset = result["offset"] = top.offset
    if recover and is_recovered(requested, top, pubs, limit):
        replay = [p for p in merge_publications(pubs, sub.buffer) if p.offset > requested.offset]
        if has_gap(replay, requested.offset):
            raise ProtocolError("insufficient state while recovering", Disconnects.INSUFFICIENT_STATE)
        sub.offset = replay[-1].offset if replay else requested.offset
        result.update(recovered=True, offset=requested.offset, publications=[publication_dict(p) for p in replay])
    return result


async def go_live(s: ClientSession, sub: Subscription) -> None:
    """Deliver what arrived during subscribe (the position check drops what the reply already carried)."""
    if s.subs.get(sub.channel) is not sub:
        return
    s.send_buffered(sub)
    if sub.join_leave and sub.info is not None:
        await s.node.join(sub.channel, sub.info)


def _server_side(s: ClientSession, channel: str, opts: ChannelOptions, options: SubOptions) -> Subscription:
    opts = with_override(opts, options.override)
    sub = new_subscription(s, channel, opts, options.info, opts.force_recovery, opts.force_positioning, False)
    sub.server_side = True
    return sub


async def server_subscribe(
    s: ClientSession, channel: str, chan_info: bytes | None = None, data: bytes | None = None
) -> bool:
    """A subscription made by the server (HTTP API): the client learns of it from a `subscribe` push.
    False when the connection is already subscribed or closed."""
    if channel in s.subs or s.state is not State.CONNECTED:
        return False
    sub = _server_side(s, channel, s.node.resolve(channel), SubOptions(info=chan_info))
    result = await establish(s, sub, False, StreamPosition())
    push = {k: result[k] for k in ("recoverable", "epoch", "offset", "positioned")}
    if data is not None:
        push["data"] = raw(data)
    s.enqueue(encode_subscribe_push(channel, push))
    await go_live(s, sub)
    return True


ServerSubs = list[tuple[str, ChannelOptions, SubOptions]]


def resolve_server_subs(s: ClientSession, subs: dict[str, SubOptions]) -> ServerSubs:
    """Check the server-side channels of a connection token before the connection is accepted: as in
    Centrifugo, only that each namespace exists (error 102) and that they fit `client.channel_limit` (3505).
    Permissions and name rules are for client-side subscribes: the backend chose these channels."""
    if len(subs) > s.config.client.channel_limit:
        raise ProtocolError("more server-side channels than client.channel_limit", Disconnects.CHANNEL_LIMIT)
    resolved = []
    for channel, options in subs.items():
        opts = s.config.namespace_options(split_namespace(channel)[0])
        if opts is None:
            raise ReplyError(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace in server-side channel {channel!r}")
        resolved.append((channel, opts, options))
    return resolved


async def connect_server_subs(s: ClientSession, subs: ServerSubs, requested: Any) -> dict[str, Result]:
    """Subscribe the accepted connection to its token's channels, recovering those the client names in the
    connect request's `subs` ({channel: {recover, epoch, offset}}). Results go into the connect reply; the
    subscriptions go live right after it. A failure here closes the connection (it is already accepted)."""
    wanted = requested if isinstance(requested, dict) else {}
    results: dict[str, Result] = {}
    for channel, opts, options in subs:
        sub = _server_side(s, channel, opts, options)
        ask = wanted.get(sub.channel)
        ask = ask if isinstance(ask, dict) else {}
        recover = sub.recoverable and ask.get("recover") is True
        position = _position(ask)
        try:
            result = await establish(s, sub, recover, position)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"server-side subscription to {sub.channel} failed: {exc}", Disconnects.INTERNAL) \
                from exc
        if options.data is not None:
            result["data"] = raw(options.data)
        results[sub.channel] = result
        s.after_reply(functools.partial(go_live, s, sub))
    return results


def _position(ask: dict[str, Any]) -> StreamPosition:
    offset, epoch = ask.get("offset", 0), ask.get("epoch", "")
    if type(offset) is not int or offset < 0 or not isinstance(epoch, str):
        return StreamPosition()
    return StreamPosition(offset, epoch)
