"""The server API methods (Centrifugo's `POST /api/<method>`), independent of HTTP: each takes the request
object and returns the result object, or raises `ReplyError`. Collection fields are always present, because
`cent` requires them.

Owns: `API_METHODS`, `call`. May import: model, protocol, node, session, handlers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .cluster import ControlOp, SurveyOp
from .engines import EngineError
from .node import Node
from .protocol import (
    Disconnect,
    Disconnects,
    ErrorCode,
    ReplyError,
    get_bool,
    get_int,
    get_list,
    get_position,
    get_str,
    get_str_dict,
    info_dict,
    publication_dict,
    request_object,
)
from .session import ClientSession
from .subscriptions import server_subscribe

Result = dict[str, Any]
log = logging.getLogger("gust.api")
Method = Callable[[Node, Result], Awaitable[Result]]


def _required_str(params: Result, key: str) -> str:
    value = get_str(params, key)
    if not value:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key} required")
    return value


def _json_field(params: Result, key: str) -> bytes | None:
    """Raw JSON from `key` (any JSON value) or from `b64<key>` (base64 of JSON bytes); None when neither."""
    if params.get(key) is not None:
        return orjson.dumps(params[key])
    b64 = get_str(params, "b64" + key)
    if not b64:
        return None
    try:
        raw = base64.b64decode(b64, validate=True)
        orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"b64{key} must be base64 of JSON (JSON protocol)") from None
    return raw


def _sessions(node: Node, params: Result) -> list[ClientSession]:
    """Connections of `user` on this node, narrowed to `client` when given."""
    user = get_str(params, "user")
    client = get_str(params, "client")
    if not user and not client:
        raise ReplyError(ErrorCode.BAD_REQUEST, "user required")
    found = node.hub.user_sessions(user) if user else [s for s in [node.hub.session(client)] if s is not None]
    return [s for s in found if isinstance(s, ClientSession) and (not client or s.client_id == client)]


async def publish(node: Node, params: Result) -> Result:
    channel = _required_str(params, "channel")
    data = _json_field(params, "data")
    if data is None:
        raise ReplyError(ErrorCode.BAD_REQUEST, "data required")
    position = await node.publish(
        channel, data, tags=get_str_dict(params, "tags"), skip_history=get_bool(params, "skip_history"),
        idempotency_key=get_str(params, "idempotency_key"))
    return {"offset": position.offset, "epoch": position.epoch} if position.offset else {}


async def broadcast(node: Node, params: Result) -> Result:
    channels = get_list(params, "channels")
    if not channels or not all(isinstance(c, str) for c in channels):
        raise ReplyError(ErrorCode.BAD_REQUEST, "channels required: a list of strings")
    responses: list[Result] = []
    for channel in channels:
        try:
            responses.append({"result": await publish(node, {**params, "channel": channel})})
        except ReplyError as exc:
            responses.append({"error": error_body(exc)})
    return {"responses": responses}


# Connection operations: checked here, then run on every node (`Cluster.send`) by the CONTROL_OPS below, so
# they reach the user's connections wherever they are connected.


async def subscribe(node: Node, params: Result) -> Result:
    node.resolve(_required_str(params, "channel"))
    _json_field(params, "info")
    _json_field(params, "data")
    _check_target(params)
    await node.cluster.send("subscribe", params)
    return {}


async def unsubscribe(node: Node, params: Result) -> Result:
    _required_str(params, "channel")
    _check_target(params)
    await node.cluster.send("unsubscribe", params)
    return {}


async def disconnect(node: Node, params: Result) -> Result:
    _disconnect_reason(params)
    _check_target(params)
    await node.cluster.send("disconnect", params)
    return {}


async def refresh(node: Node, params: Result) -> Result:
    get_bool(params, "expired")
    get_int(params, "expire_at")
    _json_field(params, "info")
    _check_target(params)
    await node.cluster.send("refresh", params)
    return {}


def _check_target(params: Result) -> None:
    if not get_str(params, "user") and not get_str(params, "client"):
        raise ReplyError(ErrorCode.BAD_REQUEST, "user required")


def _disconnect_reason(params: Result) -> Disconnect:
    spec = params.get("disconnect")
    if spec is None:
        return Disconnects.FORCE_DISCONNECT
    spec = request_object("disconnect", spec)
    code = get_int(spec, "code", Disconnects.FORCE_DISCONNECT.code)
    if not 3000 <= code <= 4999:
        raise ReplyError(ErrorCode.BAD_REQUEST, "disconnect.code must be in 3000..4999")
    text = get_str(spec, "reason", Disconnects.FORCE_DISCONNECT.reason)
    if len(text.encode()) > 123:
        raise ReplyError(ErrorCode.BAD_REQUEST, "disconnect.reason longer than 123 bytes")
    return Disconnect(code, text)


async def _apply_subscribe(node: Node, params: Result) -> None:
    channel = get_str(params, "channel")
    chan_info, data = _json_field(params, "info"), _json_field(params, "data")
    for session in _sessions(node, params):
        try:
            await server_subscribe(session, channel, chan_info, data)
        except ReplyError as exc:
            log.info("server subscribe of client %s to %s: %s", session.client_id, channel, exc.message)


async def _apply_unsubscribe(node: Node, params: Result) -> None:
    channel = get_str(params, "channel")
    for session in _sessions(node, params):
        session.server_unsubscribe(channel)


async def _apply_disconnect(node: Node, params: Result) -> None:
    whitelist = set(get_list(params, "whitelist"))
    reason = _disconnect_reason(params)
    for session in _sessions(node, params):
        if session.client_id not in whitelist:
            session.close(reason)


async def _apply_refresh(node: Node, params: Result) -> None:
    expired = get_bool(params, "expired")
    expire_at = get_int(params, "expire_at")
    info = _json_field(params, "info")
    for session in _sessions(node, params):
        if expired:
            session.close(Disconnects.EXPIRED)
            continue
        if info is not None:
            session.conn_info = info
        session.set_expiry(expire_at)


async def presence(node: Node, params: Result) -> Result:
    entries = await node.presence(_required_str(params, "channel"))
    return {"presence": {cid: info_dict(info) for cid, info in entries.items()}}


async def presence_stats(node: Node, params: Result) -> Result:
    stats = await node.presence_stats(_required_str(params, "channel"))
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


async def history(node: Node, params: Result) -> Result:
    channel = _required_str(params, "channel")
    since = get_position(params, "since")
    reverse = get_bool(params, "reverse")
    pubs, top = await node.history(channel, since, get_int(params, "limit"), reverse)
    return {"publications": [publication_dict(p) for p in pubs], "epoch": top.epoch, "offset": top.offset}


async def history_remove(node: Node, params: Result) -> Result:
    await node.remove_history(_required_str(params, "channel"))
    return {}


async def channels(node: Node, params: Result) -> Result:
    """Channels with subscribers on any node, with the number of clients summed over the nodes."""
    pattern = get_str(params, "pattern")
    totals: dict[str, int] = {}
    for answer in await node.cluster.survey("channels", {"pattern": pattern}):
        for name, count in answer.get("channels", {}).items():
            totals[name] = totals.get(name, 0) + int(count)
    return {"channels": {name: {"num_clients": n} for name, n in totals.items()}}


async def _local_channels(node: Node, params: Result) -> Result:
    pattern = get_str(params, "pattern")
    return {"channels": {name: n for name, n in node.hub.channels().items()
                         if not pattern or fnmatch.fnmatchcase(name, pattern)}}


async def info(node: Node, params: Result) -> Result:
    return {"nodes": node.cluster.nodes()}


async def batch(node: Node, params: Result) -> Result:
    """Top-level `replies` (no `result` wrapper), one per command, in order."""
    commands = get_list(params, "commands")

    async def one(command: Any) -> Result:
        try:
            if not isinstance(command, dict) or len(command) != 1:
                raise ReplyError(ErrorCode.BAD_REQUEST, "each command is an object with one method key")
            (method, body), = command.items()
            if method == "batch" or method not in API_METHODS:
                raise ReplyError(ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}")
            return {method: await call(node, method, body)}
        except ReplyError as exc:
            node.metrics.error("api", exc.code)
            return {"error": error_body(exc)}
        except EngineError as exc:
            log.warning("api batch %s: engine error: %s", method, exc)
            node.metrics.engine_error(method)
            node.metrics.error("api", ErrorCode.INTERNAL)
            return {"error": error_body(ReplyError(ErrorCode.INTERNAL))}

    if get_bool(params, "parallel"):
        replies = list(await asyncio.gather(*(one(c) for c in commands)))
    else:
        replies = [await one(c) for c in commands]
    return {"replies": replies}


def error_body(exc: ReplyError) -> Result:
    return {"code": int(exc.code), "message": exc.message}


API_METHODS: dict[str, Method] = {
    "publish": publish,
    "broadcast": broadcast,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "disconnect": disconnect,
    "refresh": refresh,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "history_remove": history_remove,
    "channels": channels,
    "info": info,
    "batch": batch,
}


CONTROL_OPS: dict[str, ControlOp] = {
    "subscribe": _apply_subscribe,
    "unsubscribe": _apply_unsubscribe,
    "disconnect": _apply_disconnect,
    "refresh": _apply_refresh,
}
SURVEYS: dict[str, SurveyOp] = {"channels": _local_channels}


async def call(node: Node, method: str, params: Any) -> Result:
    """Run API `method`; `ReplyError` for any failure the caller should see."""
    return await API_METHODS[method](node, request_object(method, params))
