"""`/metrics`, `/health`, `/ready`, the internal port, and the logs: a scrape after a scenario shows what that
scenario moved (labelled by namespace, never by channel name); connection lifecycle lines carry client id, user
and close code but never a token, an API key or a cookie; `log_format = "json"` gives one JSON object per line."""

from __future__ import annotations

import http.client
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from server.app import Gust

from .conftest import SECRET
from .procs import Api, GustProcess, free_port
from .promscrape import scrape, scrape_sync, value, wait_for
from .test_durability import tmpfs  # noqa: F401  (the 512 KiB tmpfs fixture)
from .test_errors import ClientFactory, closed_with

METRICS = [  # every metric the README lists, as exposed (counters end in _total), with its type
    ("gust_connections", "gauge"), ("gust_clients", "gauge"), ("gust_users", "gauge"), ("gust_channels", "gauge"),
    ("gust_subscriptions", "gauge"), ("gust_messages_in_total", "counter"), ("gust_messages_out_total", "counter"),
    ("gust_broadcast_duration_seconds", "histogram"), ("gust_command_duration_seconds", "histogram"),
    ("gust_errors_total", "counter"), ("gust_disconnects_total", "counter"),
    ("gust_connections_refused_total", "counter"), ("gust_engine_errors_total", "counter"),
    ("gust_event_loop_lag_seconds", "histogram"), ("gust_event_loop_lag_last_seconds", "gauge"),
    ("gust_event_loop_blocked_total", "counter"), ("process_resident_memory_bytes", "gauge"),
]
API_SECRET = "api-key-that-must-never-be-logged"


@pytest.fixture
def config_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """An API key; with the `tmpfs` fixture, the data directory on it."""
    overrides: dict[str, Any] = {"http_api": {"key": API_SECRET}}
    if "tmpfs" in request.fixturenames:
        overrides["data_dir"] = str(request.getfixturevalue("tmpfs") / "data")
    return overrides


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    client = AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(HTTPRequest(url, request_timeout=10, **kwargs), raise_error=False)
    finally:
        client.close()
    return resp.code, dict(resp.headers), resp.body


async def api(base_url: str, method: str, params: dict[str, Any], key: str = API_SECRET) -> dict[str, Any]:
    code, _, body = await get(f"{base_url}/api/{method}", method="POST", body=json.dumps(params),
                              headers={"X-API-Key": key})
    assert code == 200, (code, body)
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.mark.gen_test
async def test_metrics_endpoint_exposes_every_documented_metric(base_url: str) -> None:
    code, headers, body = await get(f"{base_url}/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name, kind in METRICS:
        assert f"# TYPE {name} {kind}" in text, name
    code, headers, body = await get(f"{base_url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


@pytest.mark.gen_test
async def test_scrape_after_a_scenario_shows_what_it_moved(client_factory: ClientFactory, base_url: str) -> None:
    channel = "chat:room-name-that-must-not-be-a-label"
    client = await client_factory()
    await client.connect()
    assert "subscribe" in await client.command("subscribe", {"channel": channel})
    for i in range(3):
        assert "publish" in await client.command("publish", {"channel": channel, "data": {"i": i}})
    for i in range(2):
        assert "result" in await api(base_url, "publish", {"channel": channel, "data": {"api": i}})
    assert (await client.command("subscribe", {"channel": "plain"}))["error"]["code"] == 103
    assert (await api(base_url, "history", {"channel": "nope:x"}))["error"]["code"] == 102
    violator = await client_factory()
    await violator.send_raw("[1]")
    await closed_with(violator, 3501)

    _, _, body = await get(f"{base_url}/metrics")
    assert channel.split(":")[1] not in body.decode()
    s = await scrape(base_url)
    assert value(s, "gust_messages_in_total", namespace="chat") == 5
    assert value(s, "gust_messages_out_total", namespace="chat") == 5  # one subscriber, five publications
    assert value(s, "gust_broadcast_duration_seconds_count", namespace="chat") == 5
    assert value(s, "gust_command_duration_seconds_count", transport="client", method="publish") == 3
    assert value(s, "gust_command_duration_seconds_count", transport="client", method="connect") == 1
    assert value(s, "gust_command_duration_seconds_count", transport="api", method="publish") == 2
    assert value(s, "gust_errors_total", transport="client", code="103") == 1
    assert value(s, "gust_errors_total", transport="api", code="102") == 1
    assert value(s, "gust_disconnects_total", code="3501") == 1
    assert (value(s, "gust_clients"), value(s, "gust_subscriptions"), value(s, "gust_channels")) == (1, 1, 1)
    assert value(s, "gust_connections") == 1
    s = await wait_for(base_url, lambda s: value(s, "gust_event_loop_lag_seconds_count") > 0)
    assert value(s, "gust_event_loop_lag_seconds_count") > 0


@pytest.mark.gen_test
async def test_health_and_ready(gust: Gust, base_url: str) -> None:
    code, headers, body = await get(f"{base_url}/health")
    assert (code, json.loads(body)) == (200, {"status": "ok"})
    code, headers, body = await get(f"{base_url}/ready")
    assert (code, json.loads(body)) == (200, {"status": "ready"})
    assert headers["Cache-Control"] == "no-store"
    gust.drain.start_draining()
    code, _, body = await get(f"{base_url}/ready")
    assert (code, json.loads(body)) == (503, {"status": "shutting down"})
    code, _, _ = await get(f"{base_url}/health")
    assert code == 200  # alive, just not ready


@pytest.mark.gen_test(timeout=30)
async def test_engine_errors_are_counted(tmpfs: Path, base_url: str) -> None:  # noqa: F811
    big = "x" * 60_000
    for i in range(30):
        reply = await api(base_url, "publish", {"channel": "chat:full", "data": {"i": i, "pad": big}})
        if "error" in reply:
            break
    assert reply["error"]["code"] == 100, "the tmpfs never filled up"
    s = await scrape(base_url)
    assert value(s, "gust_engine_errors_total", method="publish") == 1
    assert value(s, "gust_errors_total", transport="api", code="100") == 1


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_internal_port_serves_health_ready_and_metrics_alone(tmp_path: Path) -> None:
    internal = free_port()
    proc = GustProcess(tmp_path, extra={"http_server": {"internal_port": internal}})
    proc.spawn()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if http_get(internal, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.proc is not None and proc.proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        assert http_get(internal, "/ready")[0] == 200
        assert b"gust_connections" in http_get(internal, "/metrics")[1]
        assert value(scrape_sync(f"http://127.0.0.1:{internal}"), "gust_clients") == 0
        for path in ("/health", "/ready", "/metrics"):
            assert http_get(proc.port, path)[0] == 404, path  # not on the public port
        assert http_get(internal, "/api/info")[0] == 404  # and nothing else on the internal one
        assert Api(proc.port).publish("chat:x", 1)["offset"] == 1
    finally:
        proc.kill()


# --- logs ---------------------------------------------------------------------------------------------------


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.gen_test
async def test_lifecycle_lines_name_client_user_and_code_but_no_secret(
    client_factory: ClientFactory, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = token(sub="alice", exp=int(time.time()) + 600)
    expired = token(sub="alice", exp=int(time.time()) - 60)
    client = await client_factory()
    reply = await client.command("connect", {"token": expired})
    assert reply["error"]["code"] == 109
    client_id = (await client.connect(token=good))["connect"]["client"]
    reply = await client.command("subscribe", {"channel": "chat:logs", "token": good + "x"})
    assert reply["error"]["code"] == 103  # an invalid subscription token
    assert "refresh" in await client.command("refresh", {"token": good})
    await client.send_raw("[]")
    await closed_with(client, 3501)
    invalid = await client_factory()
    await invalid.send({"id": 1, "connect": {"token": good[:-4] + "AAAA"}})
    await closed_with(invalid, 3500)
    await api(base_url, "info", {})
    code, _, _ = await get(f"{base_url}/api/info", method="POST", body="{}", headers={"X-API-Key": API_SECRET[:-1]})
    assert code == 401
    await get(f"{base_url}/chat", headers={"Cookie": "gust_user=cookie-value-that-must-never-be-logged"})

    lines = [r.getMessage() for r in caplog.records]
    assert f"client {client_id} connected: user 'alice'" in lines
    assert f"client {client_id} disconnected: user 'alice', code 3501 'bad request'" in lines
    assert any(" disconnected: user '', code 3500 'invalid token'" in line for line in lines)
    everything = "\n".join(caplog.text.splitlines() + lines)
    for secret in (good, good[-20:], expired[-20:], API_SECRET, "cookie-value-that-must-never-be-logged"):
        assert secret not in everything


def test_json_log_format_writes_one_object_per_line(tmp_path: Path) -> None:
    proc = GustProcess(tmp_path, extra={"log_format": "json"})
    proc.start()
    try:
        Api(proc.port).publish("chat:x", 1)
        from websockets.sync.client import connect

        with connect(proc.ws_url, open_timeout=10) as ws:
            ws.send('{"id":1,"connect":{}}')
            assert "connect" in str(ws.recv(timeout=10))
        deadline = time.monotonic() + 10
        while "disconnected" not in proc.stderr() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait_exit(10)
    records = [json.loads(line) for line in proc.stderr().splitlines()]
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert any(r["logger"] == "gust.session" and " connected: user ''" in r["message"] for r in records)
    assert any(" disconnected: user '', code 1000" in r["message"] for r in records), records
