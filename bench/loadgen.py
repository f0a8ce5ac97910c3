"""The load generator's client side: a minimal WebSocket client on a raw asyncio `Protocol`, and a keep-alive
HTTP publisher on raw streams. Both are written for low CPU per message, so that the generator is not what
limits a benchmark (its own CPU time is measured and reported alongside the server's).

The client speaks just enough RFC 6455 (handshake without extensions or subprotocol, masked client frames,
unmasked server frames, fragmentation, ping/close control frames) and just enough Centrifugo client protocol
v2: it sends `connect` and its `subscribe` commands in one frame, as centrifuge-js does, is ready when the last
subscribe is answered, answers the server's `{}` pings with `{}`, and splits frames on "\\n" (Gust coalesces
several pushes into one frame). Each `pub` push must carry `{"p": publisher, "s": sequence, "t": monotonic ns at
publish}` (what `Publisher` sends); a client checks the order of each publisher's sequence numbers separately,
since the order between publishers publishing concurrently is not defined. Pub pushes in the layout the servers
under test produce are read with one regular expression, everything else through orjson.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import re
import socket
import time
import typing
from array import array
from collections.abc import Sequence

import orjson

loads = orjson.loads
monotonic_ns = time.monotonic_ns
# A pub push as Gust and the peers encode it: channel, then the publication with `data` first, as published.
# Anything else (another layout, other pushes, replies, pings) takes the general path through orjson.
match_pub = re.compile(rb'\{"push":\{"channel":"[^"\\]*","pub":\{"data":\{"p":(\d+),"s":(\d+),"t":(\d+)\}').match
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: pick the port at connect()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, final client frame (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not n:
        return header + mask
    key = (mask * (n // 4 + 1))[:n]
    return header + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Stats:
    """What every client of one run adds to: deliveries, latencies (ns), anomalies, and waiters on progress."""

    def __init__(self) -> None:
        self.delivered = 0
        self.latency_ns = array("q")
        self.disorder = 0  # a sequence number not above the previous one from its publisher on one connection
        self.closed = 0  # connections the server closed (or lost) after the handshake
        self.pings = 0
        self.last_rx_ns = 0
        self.wake_at = 1 << 62
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def wake(self) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._waiters:
            if fut.done():
                continue
            if self.delivered >= target:
                fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiters = keep
        self.wake_at = min((t for t, _ in keep), default=1 << 62)

    async def wait_delivered(self, target: int, timeout: float) -> bool:
        """Wait until `delivered >= target`; False on timeout."""
        if self.delivered >= target:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        self.wake_at = min(self.wake_at, target)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True

    async def drain(self, target: int, idle: float = 1.5, limit: float = 15.0) -> None:
        """Wait for `target` deliveries, giving up after `idle` s without progress or `limit` s overall."""
        deadline = time.monotonic() + limit
        while self.delivered < target and time.monotonic() < deadline:
            before = self.delivered
            if not await self.wait_delivered(target, idle) and self.delivered == before:
                return


class WsClient(asyncio.Protocol):
    """One subscriber connection. `ready` resolves when the last command of `hello` has been answered."""

    def __init__(self, stats: Stats, host: str, path: str, hello: Sequence[bytes]) -> None:
        self.stats = stats
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self._hello = client_frame(b"\n".join(hello))
        self._last_id = len(hello)
        self._pong = client_frame(b"{}")
        self._buf = b""
        self._frag = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.channels: tuple[str, ...] = ()
        self.last_seq: dict[int, int] = {}  # publisher → the last sequence number received from it
        self.close_code = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready (code {self.close_code}): {exc}"))
        elif self._upgraded:
            self.stats.closed += 1
        self._upgraded = False
        self.transport = None

    def abort(self) -> None:
        """Drop the connection at once with a RST (SO_LINGER 0): no TIME_WAIT left behind on either side."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self._upgraded = False
        transport.abort()

    def data_received(self, data: bytes) -> None:
        now = monotonic_ns()
        self.stats.last_rx_ns = now
        # The common case first: the read is exactly one whole, final text frame of at most 125 bytes (one
        # push), and nothing is left over from an earlier read.
        n = len(data)
        if 1 < n < 128 and data[0] == 0x81 and data[1] == n - 2 and self._upgraded and not self._buf:
            self._text(data[2:], now)
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {data[:end].decode(errors='replace')!r}")
                return
            self._upgraded = True
            assert self.transport is not None
            self.transport.write(self._hello)
            data = data[end + 4:]
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, length = data[pos], data[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
            end = head + length
            if end > n:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0x80:
                self._text(data[head:end], now)
            elif opcode in (0x0, 0x1):
                self._frag += data[head:end]
                if b0 & 0x80:
                    payload, self._frag = self._frag, b""
                    self._text(payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(data[head:end], 0xA))
            elif opcode == 0x8:
                self.close_code = int.from_bytes(data[head:head + 2], "big") if length >= 2 else 1005
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < n:
            self._buf = data[pos:]

    def _text(self, payload: bytes, now: int) -> None:
        stats, last_seq = self.stats, self.last_seq
        for line in payload.split(b"\n") if 10 in payload else (payload,):
            m = match_pub(line)
            if m is not None:
                ps, ss, ts = m.groups()
                p, seq, t = int(ps), int(ss), int(ts)
            elif line.startswith(b'{"push"'):  # a pub push in another layout, or another push
                pub = loads(line)["push"].get("pub")
                if pub is None:  # join, leave, unsubscribe, ...
                    continue
                data = pub["data"]
                p, seq, t = data["p"], data["s"], data["t"]
            else:
                self._control(line)
                continue
            stats.latency_ns.append(now - t)
            if seq <= last_seq.get(p, -1):
                stats.disorder += 1
            last_seq[p] = seq
            stats.delivered += 1
            if stats.delivered >= stats.wake_at:
                stats.wake()

    def _control(self, line: bytes) -> None:
        """A line that is not a push: a ping, or a reply to one of the `hello` commands."""
        if line == b"{}":
            self.stats.pings += 1
            if self.transport is not None:
                self.transport.write(self._pong)
        elif line:
            reply = loads(line)
            if "error" in reply:
                self._fail(f"error reply: {line.decode()}")
            elif reply.get("id") == self._last_id and not self.ready.done():
                self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()


def hello_commands(channels: Sequence[str]) -> list[bytes]:
    """`connect` then one `subscribe` per channel, ids 1, 2, ... (the replies the client waits for)."""
    lines = [b'{"id":1,"connect":{}}']
    lines += [orjson.dumps({"id": i + 2, "subscribe": {"channel": ch}}) for i, ch in enumerate(channels)]
    return lines


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, port: int) -> None:
    """Non-blocking connect with add_writer (uvloop's sock_connect keeps the descriptor to itself)."""
    err = sock.connect_ex(("127.0.0.1", port))
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(err, os.strerror(err))
    done: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(sock.fileno(), writable)
    try:
        await done
    finally:
        loop.remove_writer(sock.fileno())
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def open_client(stats: Stats, port: int, path: str, channels: Sequence[str], source_ip: str | None,
                      timeout: float = 15.0) -> WsClient:
    """Connect to 127.0.0.1:`port` (from `source_ip` when given), upgrade, connect and subscribe."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_ip is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_ip, 0))
        await asyncio.wait_for(_connect(loop, sock, port), timeout)
        client = WsClient(stats, f"127.0.0.1:{port}", path, hello_commands(channels))
        client.channels = tuple(channels)
        await loop.create_connection(lambda: client, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(asyncio.shield(client.ready), timeout)
    except BaseException:
        client.abort()
        raise
    return client


async def open_clients(stats: Stats, port: int, path: str, channel_sets: Sequence[Sequence[str]],
                       concurrency: int, source_ips: Sequence[str | None] = (None,)
                       ) -> tuple[list[WsClient], int, float]:
    """Open one client per entry of `channel_sets`, at most `concurrency` handshakes in flight.
    Returns (clients, failures, seconds)."""
    clients: list[WsClient] = []
    failures = 0
    next_index = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal next_index, failures
        while next_index < len(channel_sets):
            i = next_index
            next_index += 1
            try:
                clients.append(await open_client(stats, port, path, channel_sets[i], source_ips[i % len(source_ips)]))
            except (OSError, TimeoutError) as exc:
                failures += 1
                if len(errors) < 3:
                    errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(channel_sets)))))
    elapsed = time.perf_counter() - started
    if errors:
        print(f"  ! {failures} handshake(s) failed, e.g. {'; '.join(errors)}", flush=True)
    return clients, failures, elapsed


class Publisher:
    """One keep-alive HTTP/1.1 connection that POSTs publications to `/api/publish`, one at a time, as publisher
    `index`: data `{"p": index, "s": seq, "t": monotonic ns}`, with seq 0, 1, 2, ... over everything it publishes,
    whatever the channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                 headers: dict[str, str], index: int) -> None:
        self._reader, self._writer = reader, writer
        self.index = index
        self.seq = 0  # the next publication's sequence number
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = (f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                      "Content-Type: application/json\r\nContent-Length: ").encode()

    @classmethod
    async def open(cls, port: int, headers: dict[str, str], index: int) -> Publisher:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, port, headers, index)

    async def publish(self, channel: str) -> None:
        """Publish `{"p": index, "s": seq, "t": now}` to `channel`; raise unless the server acknowledged it."""
        seq, self.seq = self.seq, self.seq + 1
        body = b'{"channel":"%s","data":{"p":%d,"s":%d,"t":%d}}' % (channel.encode(), self.index, seq,
                                                                    monotonic_ns())
        self._writer.write(self._head + b"%d\r\n\r\n" % len(body) + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        reply = await self._reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200") or b'"result"' not in reply:
            raise RuntimeError(f"publish refused: {head.splitlines()[0]!r} {reply[:200]!r}")

    def close(self) -> None:
        self._writer.close()
