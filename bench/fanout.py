"""Fan-out benchmark suite (issue #8): Gust against two peers, a naive Tornado broadcast server and the
`websockets` library's `broadcast()`, in the same run, each in its own process, started afresh per scenario.

This process is the load generator (`bench/loadgen.py`: raw asyncio WebSocket clients and keep-alive HTTP
publishers). Every server gets the same flow: each client sends `connect` + `subscribe` in one frame, and
publications go to `POST /api/publish` as `{"channel", "data": {"p": publisher, "s": seq, "t": monotonic ns}}`
over keep-alive connections, one request at a time on each (Gust's real server API; a minimal endpoint on the
peers). Each publisher numbers its own publications; clients check the order per publisher. Gust runs
gustproc's config: the "fan" namespace (no history, so no offsets and no SQLite; persistence "none"),
anonymous connect allowed.

Scenarios: fan-out to 1000 subscribers of one channel as fast as possible (each publisher waits while more
than `window` deliveries are outstanding), from 1 publisher (one publication reaches the server at a time) and
from 4 publishers on the same channel concurrently (as from a backend's pool of HTTP connections: publications
arrive together, and Gust coalesces what one connection must send in one IOLoop turn into one frame; the ≤ 4 µs
goal is read from this one), and at 20 publications/s from 1 publisher; many channels with 4 subscribers each
(4 publishers, each with channels of its own); API publish throughput (4 publishers, one subscriber per
channel); idle connections (connect+subscribe handshakes/s from a burst with bounded concurrency, then server
memory per connected, subscribed, idle client).

Fan-out on Redis: the 4-publisher max-rate and the 20 pub/s fan-out-to-1000 scenarios again, for Gust alone on
the Redis engine (our own `redis-server` on a free loopback port, started afresh per run) with 1 worker and with
2 workers (a supervisor and two processes sharing the port with SO_REUSEPORT; every node delivers from its Redis
pub/sub link), and the memory-engine Gust for reference when the scenario repeated is not in the same run.
Server CPU sums the supervisor and every worker; the redis-server's CPU per delivery is a column of its own.
How many subscribers each worker got is counted from /proc (its established sockets on the port) and
cross-checked with the `info` API's per-node `num_clients`. Included in a full run, left out of `--quick`
unless `--redis`; skipped with a one-line message when `redis-server` is not installed.

Figures: server CPU µs per delivery = server process CPU time (all threads, /proc schedstat) over the measured
window ÷ deliveries; latency = receive time − publish time (same host, monotonic clock); lost = expected −
received deliveries; memory per connection = (RSS with N idle clients − RSS before) ÷ N. The generator's own
CPU is reported too, and flagged when it was near a full core (then rates and latencies are the generator's).

Run: `make bench` or `.venv/bin/python -m bench.fanout [--quick] [--servers gust,websockets] [--only idle]
[--redis | --no-redis]`; `--only redis` runs just the Redis-engine scenarios (`--only` ignores case).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

from tests.redisproc import redis_available

from .loadgen import Publisher, Stats, WsClient, open_clients
from .servers import REDIS_SERVERS, SERVERS, Target, raise_nofile, start

SATURATED = 0.9  # generator CPU, in cores, from which a run is flagged
FAN_MAX_1 = "fan-out 1000 subs, max rate, 1 publisher"
FAN_MAX = "fan-out 1000 subs, max rate, 4 publishers"  # the one the ≤ 4 µs goal is read from


@dataclass(frozen=True)
class Traffic:
    name: str
    conns: int
    channels: int
    publishers: int  # publisher j's i-th publication goes to channel (j + i·publishers) mod channels
    rate: float | None  # publications/s; None = as fast as the delivery window allows
    max_pubs: int
    seconds: float
    window: int  # a publisher waits while more than this many deliveries are outstanding
    per: str = "delivery"  # what the rate and the CPU figure count: "delivery" or "publication"
    twin: str | None = None  # Redis-engine scenarios: the memory-engine scenario they repeat (Gust only)


@dataclass(frozen=True)
class Idle:
    name: str
    conns: int
    concurrency: int
    settle: float  # seconds between the last handshake and the memory reading


Scenario = Traffic | Idle


@dataclass
class Result:
    scenario: str
    server: str
    per: str
    rate: float = 0.0
    cpu_us: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    lost: int | None = None
    kib_per_conn: float | None = None
    redis_cpu_us: float | None = None  # our redis-server's CPU per op (Redis-engine runs)
    gen_cores: float = 0.0
    gen_us: float = 0.0
    fixed_rate: bool = False
    notes: list[str] = field(default_factory=list)


def scenarios(quick: bool, idle_conns: int | None) -> list[Scenario]:
    q = quick
    idle = idle_conns or (1000 if q else 15000)
    fan_max1 = Traffic(FAN_MAX_1, 1000, 1, 1, None, 200 if q else 3000, 1.5 if q else 10, 4000)
    # The same window per publisher: with 4000 for all 4, mostly one of them at a time got through the window.
    fan_max = replace(fan_max1, name=FAN_MAX, publishers=4, window=4 * fan_max1.window)
    fan_20 = Traffic("fan-out 1000 subs, 20 pub/s", 1000, 1, 1, 20.0, 30 if q else 200, 1.5 if q else 10, 1 << 40)
    return [
        fan_max1,
        fan_max,
        fan_20,
        replace(fan_max, name="fan-out on Redis, 1000 subs, max rate, 4 publishers", twin=fan_max.name),
        replace(fan_20, name="fan-out on Redis, 1000 subs, 20 pub/s", twin=fan_20.name),
        Traffic(f"{256 if q else 512} channels × 4 subs, max rate", 1024 if q else 2048, 256 if q else 512, 4,
                None, 4000 if q else 40000, 1.5 if q else 8, 400),
        Traffic("API publish, 4 HTTP conns", 4, 4, 4, None, 4000 if q else 40000, 1.5 if q else 6, 64,
                per="publication"),
        Idle(f"idle {idle} conns", idle, 100, 1.0 if q else 2.0),
    ]


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6 if sorted_ns else float("nan")


def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.abort()


async def run_traffic(target: Target, sc: Traffic) -> Result:
    stats = Stats()
    names = [f"{target.channel_prefix}c{i}" for i in range(sc.channels)]
    clients, failures, _ = await open_clients(
        stats, target.ws_port, target.ws_path, [[names[i % sc.channels]] for i in range(sc.conns)], 100)
    result = Result(sc.name, target.name, sc.per, fixed_rate=sc.rate is not None)
    if failures:
        result.notes.append(f"{failures} handshakes failed")
    per_channel = Counter(c.channels[0] for c in clients)
    if target.workers:  # counted before the publishers' connections exist: subscribers only
        spread = target.connections()
        result.notes.append("subscribers per worker (/proc): " + ", ".join(
            f"{n} (pid {pid})" for pid, n in spread.items()))
    publishers = [await Publisher.open(target.api_port, target.api_headers, j) for j in range(sc.publishers)]
    await asyncio.sleep(0.3)
    issued = expected = published = 0
    stalled = False
    t0_ns = time.monotonic_ns()
    t0, cpu0, gen0 = time.monotonic(), target.cpu_seconds(), time.process_time()
    redis0 = target.redis_cpu_seconds()
    deadline = t0 + sc.seconds

    async def publish_loop(publisher: Publisher) -> None:
        # Publisher j publishes to channels j, j + P, j + 2P, ... (mod C) in turn: with C a multiple of P each
        # publisher has channels of its own, with fewer channels than publishers several share a channel. Each
        # publisher numbers its publications 0, 1, 2, ... and every client checks the order per publisher (the
        # order between publishers' concurrent publications is not defined), so any disorder seen is the
        # server's.
        nonlocal issued, expected, published, stalled
        j, i = publisher.index, 0
        while issued < sc.max_pubs and time.monotonic() < deadline and not stalled:
            k = issued
            issued += 1
            channel = names[(j + i * sc.publishers) % sc.channels]
            i += 1
            if sc.rate:
                delay = t0 + k / sc.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                # Checked again after every wait: other publishers may have added to `expected` meanwhile, and
                # this bounds what is outstanding at `window` + one publication's deliveries.
                while stats.delivered < expected - sc.window:
                    if not await stats.wait_delivered(expected - sc.window, 5.0):
                        stalled = True
                        return
            expected += per_channel[channel]
            await publisher.publish(channel)
            published += 1

    await asyncio.gather(*(publish_loop(p) for p in publishers))
    await stats.drain(expected)
    end = time.monotonic()
    cpu, gen = target.cpu_seconds() - cpu0, time.process_time() - gen0
    redis1 = target.redis_cpu_seconds()
    window = (stats.last_rx_ns - t0_ns) / 1e9 if stats.delivered else end - t0
    if target.workers:  # while the clients are still connected (nodes announce themselves every 3 s)
        result.notes.append(f"info API num_clients: {node_clients(target)}")
    for publisher in publishers:
        publisher.close()
    close_all(clients)
    ops = stats.delivered if sc.per == "delivery" else published
    result.rate = ops / window
    result.cpu_us = cpu / max(1, ops) * 1e6
    if redis0 is not None and redis1 is not None:
        result.redis_cpu_us = (redis1 - redis0) / max(1, ops) * 1e6
    lat = sorted(stats.latency_ns[::len(stats.latency_ns) // 500_000 + 1])  # a systematic sample of ≤ 500k
    result.p50_ms, result.p99_ms = percentile(lat, 0.50), percentile(lat, 0.99)
    result.lost = expected - stats.delivered
    result.gen_cores = gen / (end - t0)
    result.gen_us = gen / max(1, stats.delivered) * 1e6
    if sc.rate and published and result.rate < 0.95 * sc.rate * expected / published:
        result.notes.append(f"fell behind the offered {sc.rate:g} pub/s: "
                            f"{result.rate * published / max(1, expected):.1f} pub/s delivered")
    if stalled:
        result.notes.append("publisher stalled 5 s waiting for deliveries")
    if stats.disorder:
        result.notes.append(f"{stats.disorder} out of order")
    if stats.closed:
        result.notes.append(f"server closed {stats.closed} connections")
    return result


def node_clients(target: Target) -> str:
    """Each node's `num_clients` from `POST /api/info` (whichever worker answers; the others' figures are
    from their last announcement)."""
    request = urllib.request.Request(f"http://127.0.0.1:{target.api_port}/api/info", data=b"{}",
                                     headers={**target.api_headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.loads(response.read())["result"]["nodes"]
        return ", ".join(f"{n['num_clients']} ({n['name'].rsplit('_', 1)[-1]})" for n in nodes)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unavailable ({exc})"


async def run_idle(target: Target, sc: Idle) -> Result:
    stats = Stats()
    # Spread the clients over source addresses 127.0.0.2, .3, ... beyond ~10,000 connections, so that a
    # burst never runs short of ephemeral ports (one range per source address).
    sources: list[str | None] = [f"127.0.0.{2 + i}" for i in range(sc.conns // 10000 + 1)] if sc.conns > 10000 \
        else [None]
    rss0, cpu0, gen0 = target.rss_bytes(), target.cpu_seconds(), time.process_time()
    channel_sets = [[f"{target.channel_prefix}idle{i}"] for i in range(sc.conns)]
    clients, failures, elapsed = await open_clients(
        stats, target.ws_port, target.ws_path, channel_sets, sc.concurrency, sources)
    cpu, gen = target.cpu_seconds() - cpu0, time.process_time() - gen0
    await asyncio.sleep(sc.settle)
    rss1 = target.rss_bytes()
    result = Result(sc.name, target.name, "handshake")
    n = max(1, len(clients))
    result.rate = len(clients) / elapsed
    result.cpu_us = cpu / n * 1e6
    result.kib_per_conn = (rss1 - rss0) / n / 1024
    result.lost = failures
    result.gen_cores = gen / elapsed
    result.gen_us = gen / n * 1e6
    if stats.closed:
        result.notes.append(f"server closed {stats.closed} idle connections")
    close_all(clients)
    return result


async def run_one(name: str, sc: Scenario) -> Result:
    with start(name) as target:
        result = await (run_traffic(target, sc) if isinstance(sc, Traffic) else run_idle(target, sc))
    await asyncio.sleep(0.2)
    return result


# --- report -------------------------------------------------------------------------------------------------

SHORT = {"delivery": "deliv", "publication": "pub", "handshake": "hs"}


def fmt(value: float | int | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def ratios(gust: Result, peer: Result | None) -> str:
    if peer is None or not peer.cpu_us:
        return "–"
    parts = [f"cpu {gust.cpu_us / peer.cpu_us:.2f}×"]
    if gust.kib_per_conn is not None and peer.kib_per_conn:
        parts.append(f"mem {gust.kib_per_conn / peer.kib_per_conn:.2f}×")
    if gust.per == "handshake" and peer.rate:
        parts.append(f"rate {gust.rate / peer.rate:.2f}×")
    elif gust.fixed_rate and gust.p99_ms and peer.p99_ms:
        parts.append(f"p99 {gust.p99_ms / peer.p99_ms:.2f}×")
    return ", ".join(parts)


def table(results: list[Result], servers: list[str]) -> str:
    peers = [s for s in servers if s != "gust" and any(r.server == s for r in results)]
    with_redis = any(r.redis_cpu_us is not None for r in results)
    head = ["scenario", "server", "rate", "server CPU", "p50 ms", "p99 ms", "lost", "KiB/conn",
            "generator CPU"] + (["redis-server CPU"] if with_redis else []) + [f"Gust ÷ {p}" for p in peers]
    rows = [head, ["---"] * len(head)]
    for r in results:
        gen = f"{r.gen_cores:.0%} ({r.gen_us:.1f} µs/msg)" if r.per != "handshake" else f"{r.gen_cores:.0%}"
        if r.gen_cores >= SATURATED:
            gen += " SATURATED"
        row = [r.scenario, r.server, f"{r.rate:,.0f} {SHORT[r.per]}/s", f"{r.cpu_us:.1f} µs/{SHORT[r.per]}",
               fmt(r.p50_ms, ".1f"), fmt(r.p99_ms, ".1f"), fmt(r.lost, "d"), fmt(r.kib_per_conn, ".1f"), gen]
        if with_redis:
            row.append("–" if r.redis_cpu_us is None else f"{r.redis_cpu_us:.2f} µs/{SHORT[r.per]}")
        for p in peers:
            peer = next((x for x in results if x.scenario == r.scenario and x.server == p), None)
            row.append(ratios(r, peer) if r.server == "gust" else "")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) if c != "---" else "-" * w for c, w in zip(row, widths, strict=True))
             + " |" for row in rows]
    notes = [f"- {r.scenario} / {r.server}: {'; '.join(r.notes)}" for r in results if r.notes]
    return "\n".join(lines + (["", "Notes:", *notes] if notes else []))


def goals(results: list[Result]) -> list[str]:
    def find(prefix: str) -> Result | None:
        return next((r for r in results if r.server == "gust" and r.scenario.startswith(prefix)), None)

    out = []
    if (r := find(FAN_MAX)) is not None:
        one = find(FAN_MAX_1)
        out.append(f"- server CPU per delivery at 1000 subscribers ≤ 4 µs: {r.cpu_us:.1f} µs with 4 concurrent "
                   f"publishers ({'met' if r.cpu_us <= 4 else 'not met'})"
                   + (f"; {one.cpu_us:.1f} µs with 1 serial publisher" if one is not None else ""))
    if (r := find("fan-out 1000 subs, 20 pub/s")) is not None and r.p99_ms is not None:
        out.append(f"- p99 publish-to-receive ≤ 20 ms at 1000 subscribers × 20/s: {r.p99_ms:.1f} ms "
                   f"({'met' if r.p99_ms <= 20 else 'not met'})")
    if (r := find("idle")) is not None and r.kib_per_conn is not None:
        out.append(f"- ≤ 12 KiB per idle subscribed client with 15,000 clients: {r.kib_per_conn:.1f} KiB "
                   f"with {r.scenario.split()[1]} ({'met' if r.kib_per_conn <= 12 else 'not met'})")
        out.append(f"- ≥ 2,000 connect+subscribe handshakes/s: {r.rate:,.0f}/s "
                   f"({'met' if r.rate >= 2000 else 'not met'})")
    return out


def redis_summary(results: list[Result], chosen: list[Scenario]) -> list[str]:
    """Per Redis-engine scenario: Gust's CPU per delivery on Redis with 1 and 2 workers (+ redis-server) against
    the memory engine in the same run."""
    out = []
    for sc in chosen:
        if not (isinstance(sc, Traffic) and sc.twin):
            continue
        def get(server: str, scenario: str = sc.name) -> Result | None:
            return next((r for r in results if r.scenario == scenario and r.server == server), None)
        memory = get("gust") or get("gust", sc.twin)
        parts = []
        for name in REDIS_SERVERS:
            if (r := get(name)) is None:
                continue
            total = r.cpu_us + (r.redis_cpu_us or 0)
            part = f"{name} {r.cpu_us:.1f} µs + redis-server {r.redis_cpu_us or 0:.2f} µs = {total:.1f} µs/deliv"
            if memory is not None and memory.cpu_us:
                part += f" ({total / memory.cpu_us:.2f}× memory)"
            parts.append(part)
        if parts:
            ref = f"memory engine {memory.cpu_us:.1f} µs/deliv; " if memory is not None else ""
            out.append(f"- {sc.name}: {ref}{'; '.join(parts)}")
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    libs = ", ".join(f"{p} {version(p)}" for p in ("tornado", "websockets", "orjson"))
    return (f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
            f"Python {platform.python_version()}; {libs}")


def servers_for(sc: Scenario, servers: list[str], chosen: list[Scenario]) -> list[str]:
    """Who runs `sc`: every chosen server, or for a Redis-engine scenario Gust on Redis with 1 and 2 workers,
    plus Gust on the memory engine when the scenario it repeats is not in this run."""
    if not (isinstance(sc, Traffic) and sc.twin):
        return servers
    if "gust" not in servers:
        return []
    reference = [] if any(c.name == sc.twin for c in chosen) else ["gust"]
    return [*reference, *REDIS_SERVERS]


async def run_all(servers: list[str], chosen: list[Scenario]) -> list[Result]:
    results = []
    for sc in chosen:
        for name in servers_for(sc, servers, chosen):
            print(f"… {sc.name} / {name}", file=sys.stderr, flush=True)
            results.append(await run_one(name, sc))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run in well under a minute")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {SERVERS}")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this text (any case; "
                        "'redis' = the Redis-engine scenarios)")
    parser.add_argument("--redis", action=argparse.BooleanOptionalAction, default=None,
                        help="include the fan-out on Redis scenarios (default: in a full run, not with --quick, "
                        "unless --only selects them)")
    parser.add_argument("--no-uvloop", action="store_true", help="run the generator on asyncio's own loop")
    parser.add_argument("--idle-conns", type=int, default=None, help="idle clients (default 15000, quick 2000)")
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    chosen = [sc for sc in scenarios(args.quick, args.idle_conns) if args.only.lower() in sc.name.lower()]
    on_redis = [sc for sc in chosen if isinstance(sc, Traffic) and sc.twin]
    include_redis = args.redis if args.redis is not None else not args.quick or "redis" in args.only.lower()
    skipped = []
    if on_redis and (not include_redis or "gust" not in servers):
        chosen = [sc for sc in chosen if sc not in on_redis]
    elif on_redis and not redis_available():
        chosen = [sc for sc in chosen if sc not in on_redis]
        skipped.append("Skipped fan-out on Redis: redis-server not found: install it (apt-get install "
                       "redis-server) to run the Redis engine scenarios")
        print(skipped[-1], file=sys.stderr)
    biggest = max((sc.conns for sc in chosen), default=0)
    limit = raise_nofile(biggest + 1024)
    if limit < biggest + 256:
        sys.exit(f"RLIMIT_NOFILE is {limit}: too low for {biggest} connections (use --idle-conns)")
    loop = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed: the generator uses asyncio's own loop (about half as fast)",
                  file=sys.stderr)
        else:
            loop = f"uvloop {version('uvloop')}"
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    load = os.getloadavg()[0]
    started = time.monotonic()
    results = asyncio.run(run_all(servers, chosen))
    print(f"\nFan-out benchmark ({'quick' if args.quick else 'full'}, {time.monotonic() - started:.0f} s; generator "
          f"on {loop}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after). {machine()}\n")
    print(table(results, servers))
    if skipped:
        print("\n" + "\n".join(skipped))
    print("\nrate: deliveries (or acknowledged publications, or connect+subscribe handshakes) per second, from the "
          "first publish to the last delivery. server CPU: the server process's CPU time in that window per "
          "delivery (publication, handshake). lost: deliveries expected but not received (idle row: failed "
          "handshakes). generator CPU: the load generator's own CPU time over the run, in cores, and per message "
          "received; SATURATED from 90 %, then rate and latency are the generator's limit, not the server's.\n"
          "Gust ÷ peer: Gust's figure divided by the peer's (server CPU per op; memory per connection; p99 "
          "at a fixed rate; handshake rate). Below 1 means Gust uses less.")
    if any(r.redis_cpu_us is not None for r in results):
        print("On Redis: gust-redis-Nw is Gust on the Redis engine with N workers; its server CPU sums the "
              "supervisor and every worker; redis-server CPU is our own redis-server's, per delivery, in the same "
              "window.")
        print("\nRedis engine vs memory engine (Gust, server CPU per delivery):")
        print("\n".join(redis_summary(results, chosen)))
    if lines := goals(results):
        print("\nGoals (Gust):")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
