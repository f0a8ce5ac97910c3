"""Command handlers of the client protocol: one `async def` per command, each returning the result object
or raising `ReplyError` (an error reply) or `ProtocolError` (close). Permission rules follow Centrifugo.

Owns: `HANDLERS`, the dispatch table a `ClientSession` uses. May import: model, protocol, auth, channels,
session, config.
"""

from __future__ import annotations

from typing import Any

from .auth import TokenExpired, TokenInvalid
from .channels import PRIVATE_PREFIX, may, user_limited_allows
from .config import ChannelOptions
from .model import ClientInfo, StreamPosition, has_gap, is_recovered, merge_publications
from .protocol import (
    Disconnects,
    ErrorCode,
    ProtocolError,
    ReplyError,
    encode_subscribe_push,
    get_bool,
    get_data,
    get_int,
    get_position,
    get_str,
    info_dict,
    publication_dict,
    raw,
)
from .session import SERVER_VERSION, ClientSession, Handler, State, Subscription, channel_param

Result = dict[str, Any]


async def handle_connect(s: ClientSession, params: Result) -> Result:
    s.authenticate(get_str(params, "token"))
    s.mark_connected()
    return s.connect_result()


async def handle_refresh(s: ClientSession, params: Result) -> Result:
    token = get_str(params, "token")
    if not token:
        raise ProtocolError("refresh token required")
    try:
        claims = s.verifier.verify_connection(token)
    except TokenExpired:
        raise ProtocolError("refresh token expired", Disconnects.EXPIRED) from None
    except TokenInvalid as exc:
        raise ProtocolError(str(exc), Disconnects.INVALID_TOKEN) from None
    if claims.user != s.user:
        raise ProtocolError("refresh token is for another user", Disconnects.INVALID_TOKEN)
    s.conn_info = claims.info if claims.info is not None else s.conn_info
    s.set_expiry(claims.expire_at)
    result: Result = {"client": s.client_id, "version": SERVER_VERSION}
    if s.expire_at:
        result.update(expires=True, ttl=s.ttl())
    return result


def _check_subscribe_permission(s: ClientSession, opts: ChannelOptions, channel: str, token: str) -> bytes | None:
    """Centrifugo's order: subscription token, user-limited channel, namespace rules. Returns chan_info."""
    if token:
        try:
            claims = s.verifier.verify_subscription(token)
        except TokenExpired:
            raise ReplyError(ErrorCode.TOKEN_EXPIRED) from None
        except TokenInvalid as exc:
            raise ReplyError(ErrorCode.PERMISSION_DENIED, str(exc)) from None
        if claims.channel != channel or claims.user != s.user or claims.client not in ("", s.client_id):
            raise ProtocolError("subscription token mismatch", Disconnects.INVALID_TOKEN)
        return claims.info
    if channel.startswith(PRIVATE_PREFIX):
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "private channel needs a subscription token")
    if user_limited_allows(opts, channel, s.user):
        return None
    if opts.allow_subscribe_for_client and (s.user or opts.allow_subscribe_for_anonymous):
        return None
    raise ReplyError(ErrorCode.PERMISSION_DENIED, "subscribe not allowed")


def _may_read_presence(s: ClientSession, opts: ChannelOptions, channel: str) -> bool:
    return opts.presence and may(
        opts.allow_presence_for_subscriber, opts.allow_presence_for_client, opts.allow_presence_for_anonymous,
        subscribed=channel in s.subs, user=s.user,
    )


async def handle_subscribe(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    if len(channel.encode()) > s.config.channel.max_length:
        raise ReplyError(ErrorCode.BAD_REQUEST, "channel name too long")
    if channel in s.subs:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    if len(s.subs) >= s.config.client.channel_limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED, "channel limit reached")
    opts = s.node.resolve(channel)
    chan_info = _check_subscribe_permission(s, opts, channel, get_str(params, "token"))
    recoverable = opts.force_recovery or (opts.allow_recovery and get_bool(params, "recoverable"))
    positioned = opts.force_positioning or (opts.allow_positioning and get_bool(params, "positioned"))
    join_leave = get_bool(params, "join_leave") and _may_read_presence(s, opts, channel)
    sub = new_subscription(s, channel, opts, chan_info, recoverable, positioned, join_leave)
    requested = StreamPosition(get_int(params, "offset"), get_str(params, "epoch"))
    if requested.offset < 0:
        raise ReplyError(ErrorCode.BAD_REQUEST, "offset: expected a non-negative integer")
    result = await establish(s, sub, get_bool(params, "recover") and sub.recoverable, requested)
    s.after_reply(lambda: go_live(s, sub))
    return result


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


async def server_subscribe(
    s: ClientSession, channel: str, chan_info: bytes | None = None, data: bytes | None = None
) -> bool:
    """A subscription made by the server (HTTP API): the client learns of it from a `subscribe` push.
    False when the connection is already subscribed or closed."""
    if channel in s.subs or s.state is not State.CONNECTED:
        return False
    opts = s.node.resolve(channel)
    sub = new_subscription(s, channel, opts, chan_info, opts.force_recovery, opts.force_positioning, False)
    sub.server_side = True
    result = await establish(s, sub, False, StreamPosition())
    push = {k: result[k] for k in ("recoverable", "epoch", "offset", "positioned")}
    if data is not None:
        push["data"] = raw(data)
    s.enqueue(encode_subscribe_push(channel, push))
    await go_live(s, sub)
    return True


async def go_live(s: ClientSession, sub: Subscription) -> None:
    """Deliver what arrived during subscribe (the position check drops what the reply already carried)."""
    if s.subs.get(sub.channel) is not sub:
        return
    s.send_buffered(sub)
    if sub.join_leave and sub.info is not None:
        await s.node.join(sub.channel, sub.info)


async def handle_unsubscribe(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    sub = s.subs.pop(channel, None)
    if sub is not None:
        await s.leave_channel(sub)
    return {}


async def handle_publish(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    data = get_data(params)
    opts = s.node.resolve(channel)
    if not may(opts.allow_publish_for_subscriber, opts.allow_publish_for_client, opts.allow_publish_for_anonymous,
               subscribed=channel in s.subs, user=s.user):
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "publish not allowed")
    await s.node.publish(channel, data, info=s.info)
    return {}


def _presence_channel(s: ClientSession, params: Result) -> str:
    channel = channel_param(params)
    opts = s.node.resolve(channel)
    if not opts.presence:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "presence is not enabled")
    if not _may_read_presence(s, opts, channel):
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "presence not allowed")
    return channel


async def handle_presence(s: ClientSession, params: Result) -> Result:
    entries = await s.node.presence(_presence_channel(s, params))
    return {"presence": {cid: info_dict(info) for cid, info in entries.items()}}


async def handle_presence_stats(s: ClientSession, params: Result) -> Result:
    stats = await s.node.presence_stats(_presence_channel(s, params))
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


async def handle_history(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    opts = s.node.resolve(channel)
    if not opts.history_enabled:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "history is not enabled")
    if not may(opts.allow_history_for_subscriber, opts.allow_history_for_client, opts.allow_history_for_anonymous,
               subscribed=channel in s.subs, user=s.user):
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "history not allowed")
    cap = s.config.client.history_max_publication_limit
    limit = get_int(params, "limit")
    if limit < 0 or limit > cap:
        limit = cap
    since = get_position(params, "since")
    reverse = get_bool(params, "reverse")
    pubs, top = await s.node.history(channel, since, limit, reverse)
    return {"publications": [publication_dict(p) for p in pubs], "epoch": top.epoch, "offset": top.offset}


async def handle_sub_refresh(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    if channel not in s.subs:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "not subscribed")
    raise ReplyError(ErrorCode.NOT_AVAILABLE, "subscription tokens do not expire on this server yet")


async def handle_rpc(s: ClientSession, params: Result) -> Result:
    raise ReplyError(ErrorCode.NOT_AVAILABLE, "no RPC handler is configured")


HANDLERS: dict[str, Handler] = {
    "connect": handle_connect,
    "refresh": handle_refresh,
    "subscribe": handle_subscribe,
    "unsubscribe": handle_unsubscribe,
    "publish": handle_publish,
    "presence": handle_presence,
    "presence_stats": handle_presence_stats,
    "history": handle_history,
    "sub_refresh": handle_sub_refresh,
    "rpc": handle_rpc,
}
