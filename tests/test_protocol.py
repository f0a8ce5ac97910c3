"""The codec: pure, no event loop."""

from __future__ import annotations

import orjson
import pytest

from server.model import ClientInfo, Publication
from server.protocol import (
    PONG,
    Disconnects,
    ErrorCode,
    ProtocolError,
    ReplyError,
    decode_command,
    encode_error,
    encode_pub_push,
    encode_reply,
    get_bool,
    get_int,
    get_position,
    get_str,
    request_object,
    split_frame,
)


def test_split_frame_keeps_order_and_skips_blank_lines() -> None:
    assert split_frame(b'{"id":1}\n\n{"id":2}\n') == [b'{"id":1}', b'{"id":2}']
    assert split_frame('{"id":1}') == [b'{"id":1}']


def test_decode_command_takes_first_request_key() -> None:
    cmd = decode_command(b'{"id":7,"subscribe":{"channel":"a","flag":1}}')
    assert (cmd.id, cmd.method, cmd.params) == (7, "subscribe", {"channel": "a", "flag": 1})


def test_empty_object_is_a_pong() -> None:
    assert decode_command(b"{}") is PONG


def test_send_needs_no_id() -> None:
    assert decode_command(b'{"send":{"data":1}}').method == "send"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"id":1,',
        b"[1,2]",
        b"42",
        b'"text"',
        b'{"publish":{"channel":"a","data":1}}',  # id-less command with a reply
        b'{"id":"1","publish":{}}',
        b'{"id":-1,"publish":{}}',
        b'{"id":4294967296,"publish":{}}',
        b'{"id":true,"publish":{}}',
        b'{"id":3,"nope":{}}',  # no known request key
        b'{"id":3}',
        b'{"id":3,"ping":{}}',
        b"\xff\xfe",
    ],
)
def test_malformed_lines_are_protocol_violations(line: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_command(line)
    assert info.value.disconnect == Disconnects.BAD_REQUEST


def test_request_fields_with_wrong_types_are_bad_request() -> None:
    with pytest.raises(ReplyError) as info:
        request_object("publish", [1])
    assert info.value.code == ErrorCode.BAD_REQUEST
    for getter, value in ((get_str, 1), (get_int, "1"), (get_int, True), (get_bool, "yes")):
        with pytest.raises(ReplyError) as info:
            getter({"k": value}, "k")
        assert info.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(ReplyError):
        get_position({"since": {"offset": -1}}, "since")
    assert get_position({}, "since") is None


def test_reply_and_error_encoding_always_carry_result_and_message() -> None:
    assert orjson.loads(encode_reply(5, "publish", {})) == {"id": 5, "publish": {}}
    assert orjson.loads(encode_error(6, ReplyError(ErrorCode.PERMISSION_DENIED))) == {
        "id": 6, "error": {"code": 103, "message": "permission denied"}}
    internal = orjson.loads(encode_error(7, ReplyError(ErrorCode.INTERNAL)))
    assert internal["error"]["temporary"] is True


def test_publication_push_embeds_raw_json_and_info() -> None:
    pub = Publication(data=b'{"a":[1,2]}', offset=3, info=ClientInfo("u", "c", b'{"n":"x"}'), tags={"t": "1"})
    assert orjson.loads(encode_pub_push("chat:1", pub)) == {
        "push": {"channel": "chat:1", "pub": {
            "data": {"a": [1, 2]}, "offset": 3, "tags": {"t": "1"},
            "info": {"user": "u", "client": "c", "conn_info": {"n": "x"}}}}}


def test_disconnect_reconnect_ranges() -> None:
    assert Disconnects.SHUTDOWN.reconnect and Disconnects.SLOW.reconnect
    assert not Disconnects.INVALID_TOKEN.reconnect and not Disconnects.BAD_REQUEST.reconnect
    all_codes = [v for v in vars(Disconnects).values() if hasattr(v, "code")]
    assert all(len(d.reason.encode()) <= 123 for d in all_codes)
