"""Acknowledged publishes per second, with the SQLite history store on and off.

Starts Gust in a subprocess on a free loopback port, then from this process (the load generator) publishes
to a history channel: through the HTTP API one request at a time on a keep-alive connection, through `batch`
(100 publications per request), from 32 concurrent API connections, and over one WebSocket both one command
at a time and with 200 commands in flight. Every figure counts acknowledged publications only.

Run: `make bench` (all benchmarks) or `.venv/bin/python -m bench.publish [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import time

import orjson
from tornado.websocket import websocket_connect

from .gustproc import API_KEY, GustProcess

CHANNEL = "bench:durable"


def api_sequential(port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    started = time.perf_counter()
    for i in range(n):
        conn.request("POST", "/api/publish", orjson.dumps({"channel": CHANNEL, "data": {"i": i}}), headers)
        body = orjson.loads(conn.getresponse().read())
        assert "result" in body, body
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def api_batch(port: int, n: int, parallel: bool, per_request: int = 100) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    command = [{"publish": {"channel": CHANNEL, "data": {"i": i}}} for i in range(per_request)]
    payload = orjson.dumps({"commands": command, "parallel": parallel})
    started = time.perf_counter()
    for _ in range(n // per_request):
        conn.request("POST", "/api/batch", payload, headers)
        body = orjson.loads(conn.getresponse().read())
        assert len(body["replies"]) == per_request and "error" not in body["replies"][0], body
    elapsed = time.perf_counter() - started
    conn.close()
    return (n // per_request) * per_request / elapsed


async def api_concurrent(port: int, n: int, workers: int = 32) -> float:
    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"channel": CHANNEL, "data": {"x": 1}})
        request = (f"POST /api/publish HTTP/1.1\r\nHost: bench\r\nX-API-Key: {API_KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            reply = await reader.readexactly(length)
            assert b'"result"' in reply, reply
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // workers) for _ in range(workers)))
    return (n // workers) * workers / (time.perf_counter() - started)


async def websocket(port: int, n: int, window: int) -> float:
    conn = await websocket_connect(f"ws://127.0.0.1:{port}/connection/websocket")
    await conn.write_message(orjson.dumps({"id": 1, "connect": {}}).decode())
    await conn.read_message()
    acked = 0
    started = time.perf_counter()
    next_id = 2
    inflight = 0
    while acked < n:
        while inflight < window and next_id - 2 < n:
            await conn.write_message(orjson.dumps({"id": next_id, "publish": {"channel": CHANNEL,
                                                                              "data": {"i": next_id}}}).decode())
            next_id += 1
            inflight += 1
        frame = await conn.read_message()
        assert isinstance(frame, str), frame
        for line in frame.split("\n"):
            reply = orjson.loads(line)
            if reply.get("id"):
                assert "publish" in reply, reply
                acked += 1
                inflight -= 1
            else:
                await conn.write_message("{}")  # pong
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def run(persistence: str, quick: bool) -> dict[str, float]:
    n = 500 if quick else 3000
    figures: dict[str, float] = {}
    with GustProcess(persistence=persistence) as gust:
        port = gust.port
        figures["API, one at a time"] = api_sequential(port, n)
        figures["API, batch of 100"] = api_batch(port, n * 4, parallel=False)
        figures["API, batch of 100, parallel"] = api_batch(port, n * 4, parallel=True)
        figures["API, 32 connections"] = asyncio.run(api_concurrent(port, n * 2))
        figures["WebSocket, one at a time"] = asyncio.run(websocket(port, n, 1))
        figures["WebSocket, 200 in flight"] = asyncio.run(websocket(port, n * 4, 200))
        gust.check_alive()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer publications (a smoke run)")
    args = parser.parse_args(argv)
    results = {p: run(p, args.quick) for p in ("sqlite", "none")}
    print("\nAcknowledged publishes per second (history channel; load generator in its own process)\n")
    print(f"| {'path':<28} | {'sqlite store':>13} | {'RAM only':>10} | {'cost':>6} |")
    print(f"|{'-' * 30}|{'-' * 15}|{'-' * 12}|{'-' * 8}|")
    for name in results["sqlite"]:
        on, off = results["sqlite"][name], results["none"][name]
        print(f"| {name:<28} | {on:>13,.0f} | {off:>10,.0f} | {1 - on / off:>6.0%} |")

if __name__ == "__main__":
    main()
