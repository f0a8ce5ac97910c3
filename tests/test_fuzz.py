"""Property-based tests (hypothesis): any input gives a reply, an error code or a documented close; never an
exception in the log, never a stuck connection. Over the command decoder (pure), over random command
sequences fed to a session (in-process, many examples) and over random frames sent to a real server process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from server.auth import TokenVerifier
from server.engines.memory import MemoryEngine
from server.handlers import HANDLERS
from server.node import Node
from server.protocol import MAX_COMMAND_ID, METHODS, Command, Disconnects, ErrorCode, ProtocolError, decode_command
from server.session import ClientSession, State

from .conftest import make_config
from .procs import GustProcess
from .promscrape import scrape_sync, value
from .test_session import FakeTransport

DOCUMENTED_CLOSES = {d.code for d in vars(Disconnects).values() if hasattr(d, "code")} | {1009}
ERROR_CODES = {int(c) for c in ErrorCode}
PROBE_ID = MAX_COMMAND_ID
FIELDS = ["channel", "token", "data", "offset", "epoch", "recover", "limit", "since", "reverse", "positioned",
          "recoverable", "join_leave", "method", "name", "version", "subs", "flag", "b64data", "tags"]
CHANNELS = ["chat:a", "chat:b", "plain", "$chat:private", "nope:x", "", "chat:" + "x" * 300, "chat:ünï", "chat:a#1"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)
field_values = st.sampled_from(CHANNELS) | json_values
params = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5) | json_values
ids = st.integers(1, 50) | st.sampled_from([0, -1, MAX_COMMAND_ID, MAX_COMMAND_ID + 1, 2**64]) | json_scalars
methods = st.sampled_from([*METHODS, "dance", ""])


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    cmd: dict[str, Any] = {}
    if draw(st.integers(0, 9)) >= 2:  # mostly well-formed ids, so the commands reach their handlers
        cmd["id"] = draw(st.integers(1, 50) if draw(st.integers(0, 3)) else ids)
    method = draw(methods)
    if method:
        cmd[method] = draw(params)
    return cmd


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # the stdlib: integers beyond 64 bits too


VALID = [  # after a connect: commands that reach the deeper states
    {"id": 2, "subscribe": {"channel": "chat:a"}},
    {"id": 3, "publish": {"channel": "chat:a", "data": {"x": 1}}}, {"id": 4, "history": {"channel": "chat:a"}},
    {"id": 5, "presence": {"channel": "chat:a"}}, {"id": 6, "unsubscribe": {"channel": "chat:a"}},
    {"id": 7, "subscribe": {"channel": "chat:b", "recover": True, "offset": 1, "epoch": "x"}},
    {"id": 8, "history": {"channel": "chat:a", "limit": -1, "since": {"offset": 0, "epoch": ""}, "reverse": True}},
]
CONNECT = encode({"id": 1, "connect": {}})
GARBAGE = [b"{}", b"[]", b"42", b'"s"', b"null", b'{"id":1,"connect":{}', b"\xff\xfe", b" ", b'{"id":7}']
command_lines = st.sampled_from(VALID).map(encode) | commands().map(encode)
any_lines = command_lines | st.binary(max_size=40) | st.sampled_from(GARBAGE)
frames = st.lists(command_lines, min_size=1, max_size=6).map(b"\n".join) | st.lists(
    any_lines, min_size=1, max_size=6).map(b"\n".join)
sequences = st.tuples(st.booleans(), st.lists(frames, min_size=1, max_size=5)).map(
    lambda t: [CONNECT, *t[1]] if t[0] else t[1])  # half of them start connected, to reach the deeper states


# --- the decoder ----------------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | commands().map(encode))
def test_decoder_returns_a_command_or_raises_protocol_error(line: bytes) -> None:
    try:
        cmd = decode_command(line)
    except ProtocolError as exc:
        assert exc.disconnect.code in DOCUMENTED_CLOSES
        return
    assert isinstance(cmd, Command)
    assert 0 <= cmd.id <= MAX_COMMAND_ID
    assert cmd.method in METHODS or cmd.method == ""
    assert cmd.id > 0 or cmd.method in ("", "send")


# --- sessions, in-process -------------------------------------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_output(transport: FakeTransport) -> set[int]:
    """Every message the session sent is protocol: replies with a result or a known error, pushes, pings.
    The ids it answered."""
    answered: set[int] = set()
    for msg in transport.messages():
        assert isinstance(msg, dict)
        if "id" in msg:
            answered.add(msg["id"])
            if "error" in msg:
                assert msg["error"]["code"] in ERROR_CODES and msg["error"]["message"], msg
            else:
                assert len(msg) == 2, msg
        else:
            assert msg == {} or "push" in msg, msg
    return answered


async def run_session(frames: list[bytes]) -> None:
    node = Node(make_config({"engine": {"memory": {"persistence": "none"}}}), MemoryEngine())
    await node.start()
    transport = FakeTransport()
    session = ClientSession(node, transport, TokenVerifier(node.config.client.token), HANDLERS)
    try:
        for frame in frames:
            await session.handle_frame(frame)
        if session.state is not State.CLOSED:  # the probe: a stuck session would not answer it
            probe = "connect" if session.state is State.CONNECTING else "presence_stats"
            await session.handle_frame(orjson.dumps({"id": PROBE_ID, probe: {"channel": "chat:probe"}}))
        for _ in range(3):
            await asyncio.sleep(0)
        answered = check_output(transport)
        if transport.closed is not None:
            assert transport.closed[0] in DOCUMENTED_CLOSES, transport.closed
        else:
            assert PROBE_ID in answered
    finally:
        session.close(Disconnects.SHUTDOWN)
        await session.wait_released()
        await node.close()


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences)
def test_any_command_sequence_gets_replies_errors_or_a_documented_close(frames: list[bytes]) -> None:
    recorder = Recorder()
    logging.getLogger("gust").addHandler(recorder)
    try:
        asyncio.run(run_session(frames))
    finally:
        logging.getLogger("gust").removeHandler(recorder)
    assert not recorder.records, [r.getMessage() for r in recorder.records]


# --- a real server process ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GustProcess]:
    proc = GustProcess(tmp_path_factory.mktemp("fuzz"), extra={
        "client": {"allow_anonymous_connect_without_token": True},
        "channel": {"namespaces": [{"name": "chat", "presence": True, "history_size": 10, "history_ttl": "1m",
                                    "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
                                    "allow_publish_for_client": True, "allow_publish_for_anonymous": True,
                                    "allow_history_for_client": True, "allow_history_for_anonymous": True,
                                    "allow_presence_for_client": True, "allow_presence_for_anonymous": True}]}})
    proc.start()
    yield proc
    proc.kill()


def exchange(url: str, frames: list[bytes]) -> tuple[list[dict[str, Any]], int | None]:
    """Send `frames` (text frames, binary when not UTF-8), then a probe; read until the probe's answer or the
    close. The messages received and the close code (None when still open)."""
    received: list[dict[str, Any]] = []
    with ws_connect(url, open_timeout=5, close_timeout=2) as ws:
        try:
            for frame in frames:
                try:
                    ws.send(frame.decode())
                except UnicodeDecodeError:
                    ws.send(frame)
            # the probe: answered when not connected yet, else a 3501 close; either proves the connection is alive
            ws.send(encode({"id": PROBE_ID, "connect": {}}).decode())
            while True:
                data = ws.recv(timeout=5)
                text = data if isinstance(data, str) else data.decode()
                received += [orjson.loads(line) for line in text.split("\n")]
                if any(m.get("id") == PROBE_ID for m in received):
                    return received, None
        except ConnectionClosed as exc:
            return received, exc.rcvd.code if exc.rcvd is not None else 1006  # 1006: dropped without a close frame


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequences)
def test_real_server_answers_any_frames_and_logs_no_exception(server: GustProcess, frames: list[bytes]) -> None:
    received, code = exchange(server.ws_url, frames)
    for msg in received:
        if "error" in msg:
            assert msg["error"]["code"] in ERROR_CODES, msg
    if code is not None:
        assert code in DOCUMENTED_CLOSES, code
    else:
        assert any(m.get("id") == PROBE_ID for m in received), received
    log = server.stderr()
    assert "Traceback" not in log and " ERROR " not in log, log[-2000:]


def test_fuzzed_server_is_still_healthy(server: GustProcess) -> None:
    api = server.api()
    deadline = time.monotonic() + 10
    while api.result("info", {})["nodes"][0]["num_clients"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.result("info", {})["nodes"][0]["num_clients"] == 0  # every fuzzed connection was released
    assert value(scrape_sync(server.base_url), "gust_connections") == 0

