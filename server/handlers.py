"""Command handlers of the client protocol: one `async def` per command, each returning the result object
or raising `ReplyError` (an error reply) or `ProtocolError` (close). Permission rules follow Centrifugo.

Owns: `HANDLERS`, the dispatch table a `ClientSession` uses. May import: model, protocol, auth, channels,
session, config, hooks. The embedding application's hooks (`s.hooks`) are awaited here, inside the command.
"""

from __future__ import annotations

import functools
from typing import Any

from .auth import Claims, SubOptions, SubscriptionClaims
from .channels import PRIVATE_PREFIX, may, user_limited_allows
from .config import ChannelOptions
from .hooks import (
    ConnectRequest,
    PublishRequest,
    RpcRequest,
    SubscribeRequest,
    SubscribeResult,
    UpgradeRequest,
    encode_json,
)
from .model import StreamPosition
from .protocol import (
    Disconnects,
    ErrorCode,
    ProtocolError,
    ReplyError,
    channel_param,
    get_bool,
    get_data,
    get_int,
    get_position,
    get_str,
    info_dict,
    publication_dict,
    raw,
)
from .session import SERVER_VERSION, ClientSession, Handler, ttl_of, verify_token
from .subscriptions import connect_server_subs, establish, go_live, new_subscription, resolve_server_subs, with_override

Result = dict[str, Any]


async def _connect_claims(s: ClientSession, params: Result) -> tuple[Claims | None, bytes | None]:
    """The connection's identity: from its token, else from `hooks.on_connecting` when set (None from the hook:
    as without it). With the reply's `data` the hook chose."""
    token = get_str(params, "token")
    on_connecting = s.hooks.on_connecting
    if token or on_connecting is None:
        return await s.authenticate(token), None
    request = ConnectRequest(s.client_id, s.http or UpgradeRequest({}), params.get("data"), get_str(params, "name"),
                             get_str(params, "version"))
    decided = await on_connecting(request)
    if decided is None:
        return await s.authenticate(""), None
    info = encode_json(decided.info) if decided.info is not None else None
    claims = Claims(decided.user, decided.expire_at, info, None, {ch: SubOptions() for ch in decided.channels})
    return claims, encode_json(decided.data) if decided.data is not None else None


async def handle_connect(s: ClientSession, params: Result) -> Result:
    claims, reply_data = await _connect_claims(s, params)
    server_subs = resolve_server_subs(s, claims.subs) if claims is not None else []
    s.check_user_connection_limit(claims.user if claims is not None else "")
    s.accept(claims)
    result = s.connect_result()
    if reply_data is not None:
        result["data"] = raw(reply_data)
    if server_subs:
        result["subs"] = await connect_server_subs(s, server_subs, params.get("subs"))
    return result


async def handle_refresh(s: ClientSession, params: Result) -> Result:
    token = get_str(params, "token")
    if not token:
        raise ProtocolError("refresh token required")
    claims = await verify_token(s.verifier.verify_connection(token), ProtocolError(
        "refresh token expired", Disconnects.EXPIRED))
    if claims.user != s.user:
        raise ProtocolError("refresh token is for another user", Disconnects.INVALID_TOKEN)
    s.conn_info = claims.info if claims.info is not None else s.conn_info
    s.set_expiry(claims.expire_at)
    result: Result = {"client": s.client_id, "version": SERVER_VERSION}
    if s.expire_at:
        result.update(expires=True, ttl=s.ttl())
    return result


async def _subscription_claims(
    s: ClientSession, channel: str, token: str, on_invalid: Exception | None = None
) -> SubscriptionClaims:
    """Verify a subscription token for `channel`: expired → 109; invalid → `on_invalid` (default close 3500);
    for another channel, user or client → close 3500."""
    claims = await verify_token(
        s.sub_verifier.verify_subscription(token), ReplyError(ErrorCode.TOKEN_EXPIRED), on_invalid)
    if claims.channel != channel:
        raise ProtocolError("subscription token is for another channel", Disconnects.INVALID_TOKEN)
    if claims.user != s.user:
        raise ProtocolError("subscription token is for another user", Disconnects.INVALID_TOKEN)
    if claims.client not in ("", s.client_id):
        raise ProtocolError("subscription token is for another client", Disconnects.INVALID_TOKEN)
    return claims


def _check_subscribe_permission(s: ClientSession, opts: ChannelOptions, channel: str) -> None:
    """Without a token, Centrifugo's order: private channel (103), user-limited channel, namespace rules,
    `client.insecure`."""
    insecure = s.config.client.insecure
    if channel.startswith(PRIVATE_PREFIX) and not insecure:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "private channel needs a subscription token")
    if user_limited_allows(opts, channel, s.user):
        return
    if opts.allow_subscribe_for_client and (s.user or opts.allow_subscribe_for_anonymous):
        return
    if not insecure:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "subscribe not allowed")


def _may(s: ClientSession, channel: str, for_subscriber: bool, for_client: bool, for_anonymous: bool) -> bool:
    return s.config.client.insecure or may(
        for_subscriber, for_client, for_anonymous, subscribed=channel in s.subs, user=s.user)


def _may_read_presence(s: ClientSession, opts: ChannelOptions, channel: str) -> bool:
    return opts.presence and _may(
        s, channel, opts.allow_presence_for_subscriber, opts.allow_presence_for_client,
        opts.allow_presence_for_anonymous)


async def handle_subscribe(s: ClientSession, params: Result) -> Result:
    channel = channel_param(params)
    if len(channel.encode()) > s.config.channel.max_length:
        raise ReplyError(ErrorCode.BAD_REQUEST, "channel name too long")
    if channel in s.subs:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    if len(s.subs) >= s.config.client.channel_limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED, "channel limit reached")
    opts = s.node.resolve(channel)
    token = get_str(params, "token")
    claims = None
    if token:  # Centrifugo answers 103 for an invalid subscription token at subscribe (3500 at sub_refresh)
        denied = ReplyError(ErrorCode.PERMISSION_DENIED, "invalid subscription token")
        claims = await _subscription_claims(s, channel, token, denied)
    decided: SubscribeResult | None = None
    if claims is None:
        on_subscribe = s.hooks.on_subscribe
        if on_subscribe is not None:
            decided = await on_subscribe(SubscribeRequest(s.client_id, s.user, channel, params.get("data")))
        if decided is None:
            _check_subscribe_permission(s, opts, channel)
    else:
        opts = with_override(opts, claims.options.override)
    if channel in s.subs:  # subscribed meanwhile by the server (the token check awaited)
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    wants_recovery, wants_position = get_bool(params, "recoverable"), get_bool(params, "positioned")  # 107 if mistyped
    recoverable = opts.force_recovery or (opts.allow_recovery and wants_recovery)
    positioned = opts.force_positioning or (opts.allow_positioning and wants_position)
    join_leave = get_bool(params, "join_leave") and _may_read_presence(s, opts, channel)
    chan_info = claims.options.info if claims is not None else None
    if decided is not None and decided.info is not None:
        chan_info = encode_json(decided.info)
    sub = new_subscription(s, channel, opts, chan_info, recoverable, positioned, join_leave)
    requested = StreamPosition(get_int(params, "offset"), get_str(params, "epoch"))
    if requested.offset < 0:
        raise ReplyError(ErrorCode.BAD_REQUEST, "offset: expected a non-negative integer")
    result = await establish(s, sub, get_bool(params, "recover") and sub.recoverable, requested)
    if claims is not None:
        if claims.options.data is not None:
            result["data"] = raw(claims.options.data)
        if claims.expire_at:
            s.set_sub_expiry(sub, claims.expire_at)
            result.update(expires=True, ttl=ttl_of(claims.expire_at))
    if decided is not None and decided.data is not None:
        result["data"] = raw(encode_json(decided.data))
    s.after_reply(functools.partial(go_live, s, sub))
    return result


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
    on_publish = s.hooks.on_publish
    decided = None
    if on_publish is not None:
        decided = await on_publish(PublishRequest(s.client_id, s.user, channel, params["data"]))
    if decided is None:
        if not _may(s, channel, opts.allow_publish_for_subscriber, opts.allow_publish_for_client,
                    opts.allow_publish_for_anonymous):
            raise ReplyError(ErrorCode.PERMISSION_DENIED, "publish not allowed")
    elif decided.data is not None:
        data = encode_json(decided.data)
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
    if not _may(s, channel, opts.allow_history_for_subscriber, opts.allow_history_for_client,
                opts.allow_history_for_anonymous):
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
    """A new subscription token before the old one expires: move the subscription's expiry."""
    channel = channel_param(params)
    sub = s.subs.get(channel)
    if sub is None:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "not subscribed")
    if sub.server_side:
        raise ProtocolError("sub_refresh for a server-side subscription")
    token = get_str(params, "token")
    if not token:
        raise ReplyError(ErrorCode.BAD_REQUEST, "sub_refresh needs a token")
    claims = await _subscription_claims(s, channel, token)
    if s.subs.get(channel) is not sub:
        raise ReplyError(ErrorCode.PERMISSION_DENIED, "not subscribed")
    s.set_sub_expiry(sub, claims.expire_at)
    return {"expires": True, "ttl": ttl_of(claims.expire_at)} if claims.expire_at else {}


async def handle_rpc(s: ClientSession, params: Result) -> Result:
    """To `hooks.on_rpc`; 108 without it (as Centrifugo without RPC proxies)."""
    on_rpc = s.hooks.on_rpc
    if on_rpc is None:
        raise ReplyError(ErrorCode.NOT_AVAILABLE, "no RPC handler is configured")
    decided = await on_rpc(RpcRequest(s.client_id, s.user, get_str(params, "method"), params.get("data")))
    return {"data": raw(encode_json(decided.data if decided is not None else None))}


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
