"""The wire codec for Centrifugo client protocol v2 in its JSON form, and the table of wire codes.

Owns: `Command` and `decode_frame` (bytes in), the `encode_*` functions (bytes out), `ErrorCode` with its
messages, `Disconnect` with every close code we send, and the exceptions `ProtocolError` (the connection must
be closed) and `ReplyError` (the command gets an error reply). Does no I/O.
May import: model, orjson.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from .model import ClientInfo, Publication, StreamPosition

# Request keys in protocol v2, in the order the server looks for them ("the first non-null field wins").
METHODS = (
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
    "ping", "send", "rpc", "refresh", "sub_refresh",
)
MAX_COMMAND_ID = 2**32 - 1


class ErrorCode(IntEnum):
    """Error codes carried in a reply's `error` (Centrifuge `errors.go`)."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112


ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}
TEMPORARY_ERRORS = frozenset({ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS})


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A WebSocket close code with its plain-text reason. 3500–3999 and 4500–4999 tell SDKs not to reconnect."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        return not (3500 <= self.code <= 3999 or 4500 <= self.code <= 4999)


class Disconnects:
    """Every close code the server sends (Centrifuge `disconnect.go`)."""

    SHUTDOWN = Disconnect(3001, "shutdown")
    INTERNAL = Disconnect(3004, "internal server error")
    EXPIRED = Disconnect(3005, "connection expired")
    SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
    SLOW = Disconnect(3008, "slow")
    WRITE_ERROR = Disconnect(3009, "write error")
    INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
    FORCE_RECONNECT = Disconnect(3011, "force reconnect")
    NO_PONG = Disconnect(3012, "no pong")
    TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
    INVALID_TOKEN = Disconnect(3500, "invalid token")
    BAD_REQUEST = Disconnect(3501, "bad request")
    STALE = Disconnect(3502, "stale")
    FORCE_DISCONNECT = Disconnect(3503, "force disconnect")
    CONNECTION_LIMIT = Disconnect(3504, "connection limit")
    CHANNEL_LIMIT = Disconnect(3505, "channel limit")
    PERMISSION_DENIED = Disconnect(3507, "permission denied")
    NOT_AVAILABLE = Disconnect(3508, "not available")


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed with `disconnect` (3501 unless said otherwise)."""

    def __init__(self, detail: str, disconnect: Disconnect = Disconnects.BAD_REQUEST) -> None:
        super().__init__(detail)
        self.disconnect = disconnect


class ReplyError(Exception):
    """A command failed; the client gets `{"id", "error": {"code", "message"}}` and the connection stays."""

    def __init__(self, code: ErrorCode, detail: str = "", message: str = "") -> None:
        super().__init__(detail or ERROR_MESSAGES[code])
        self.code = code
        self.message = message or ERROR_MESSAGES[code]

    @property
    def temporary(self) -> bool:
        return self.code in TEMPORARY_ERRORS


@dataclass(frozen=True, slots=True)
class Command:
    """One decoded command.

    `method` is "" for a pong (`{}`). `params` is the request value as decoded; handlers check that it is an
    object (else error 107).
    """

    id: int
    method: str
    params: Any


PONG = Command(0, "", None)


def split_frame(frame: bytes | str) -> list[bytes]:
    """The non-blank lines of a text frame, in order (a frame is newline-joined JSON objects)."""
    data = frame.encode() if isinstance(frame, str) else frame
    return [line for line in data.split(b"\n") if line.strip()]


def decode_command(line: bytes) -> Command:
    """Decode one line. Raises `ProtocolError` on anything the connection cannot survive.

    A line that is not a JSON object, an `id` that is not a uint32, an id-less command other than `send` or
    the pong `{}`, or a command with no known request key is a protocol violation (Centrifuge closes with
    3501 for each).
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    cmd_id = obj.get("id", 0)
    if type(cmd_id) is not int or not 0 <= cmd_id <= MAX_COMMAND_ID:
        raise ProtocolError(f"expected id to be a uint32, got {cmd_id!r}")
    method = next((m for m in METHODS if obj.get(m) is not None), "")
    if cmd_id == 0:
        if method == "" and not obj.keys() - {"id"}:
            return PONG
        if method != "send":
            raise ProtocolError("command id required for commands with reply")
    elif method in ("", "ping"):
        raise ProtocolError(f"unknown command with keys {sorted(obj)[:5]}")
    return Command(cmd_id, method, obj[method])


# --- encoding ----------------------------------------------------------------------------------------------

PING_FRAME = b"{}"


def raw(data: bytes) -> orjson.Fragment:
    """Embed already-encoded JSON as it is."""
    return orjson.Fragment(data)


def info_dict(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info is not None:
        out["conn_info"] = orjson.Fragment(info.conn_info)
    if info.chan_info is not None:
        out["chan_info"] = orjson.Fragment(info.chan_info)
    return out


def publication_dict(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"data": orjson.Fragment(pub.data)}
    if pub.info is not None:
        out["info"] = info_dict(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = pub.tags
    return out


def encode_reply(cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": cmd_id, method: result})


def encode_error(cmd_id: int, error: ReplyError) -> bytes:
    body: dict[str, Any] = {"code": int(error.code), "message": error.message}
    if error.temporary:
        body["temporary"] = True
    return orjson.dumps({"id": cmd_id, "error": body})


def encode_push(channel: str, kind: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"push": {"channel": channel, kind: body}})


def encode_pub_push(channel: str, pub: Publication) -> bytes:
    return encode_push(channel, "pub", publication_dict(pub))


def encode_join_leave_push(channel: str, kind: str, info: ClientInfo) -> bytes:
    return encode_push(channel, kind, {"info": info_dict(info)})


def encode_unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return encode_push(channel, "unsubscribe", {"code": code, "reason": reason})


# --- request field access (wrong types are error 107, never a traceback) -------------------------------------


def request_object(method: str, params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{method}: expected an object, got {type(params).__name__}")
    return params


def get_str(params: dict[str, Any], key: str, default: str = "") -> str:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected a string, got {type(value).__name__}")
    return value


def get_int(params: dict[str, Any], key: str, default: int = 0) -> int:
    value = params.get(key)
    if value is None:
        return default
    if type(value) is not int:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected an integer, got {type(value).__name__}")
    return value


def get_bool(params: dict[str, Any], key: str) -> bool:
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected a boolean, got {type(value).__name__}")
    return value


def get_position(params: dict[str, Any], key: str) -> StreamPosition | None:
    """A `{"offset", "epoch"}` object, or None when absent."""
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected an object, got {type(value).__name__}")
    offset = get_int(value, "offset")
    if offset < 0:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}.offset: expected a non-negative integer")
    return StreamPosition(offset, get_str(value, "epoch"))


def get_data(params: dict[str, Any], key: str = "data") -> bytes:
    """The raw JSON of a required `data` field."""
    if params.get(key) is None:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key} required")
    return orjson.dumps(params[key])


def get_list(params: dict[str, Any], key: str) -> list[Any]:
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected a list, got {type(value).__name__}")
    return value


def channel_param(params: dict[str, Any]) -> str:
    """The `channel` of a request; an empty channel is a protocol violation (Centrifuge closes with 3501)."""
    channel = get_str(params, "channel")
    if not channel:
        raise ProtocolError("channel required")
    return channel


def get_str_dict(params: dict[str, Any], key: str) -> dict[str, str]:
    value = params.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ReplyError(ErrorCode.BAD_REQUEST, f"{key}: expected an object of strings")
    return value


def encode_subscribe_push(channel: str, body: dict[str, Any]) -> bytes:
    return encode_push(channel, "subscribe", body)
