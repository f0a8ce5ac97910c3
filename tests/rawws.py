"""A hand-made WebSocket client over asyncio streams, for what Tornado's client will not do: send fragments,
invalid UTF-8 or a handshake one byte at a time, use a tiny receive buffer, or stop reading altogether."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import orjson

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
TIMEOUT = 5.0


def handshake_request(port: int, path: str = "/connection/websocket", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A client frame's header up to its length (the mask follows)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        return head + bytes([0x80 | length])
    if length < 65536:
        return head + bytes([0x80 | 126]) + struct.pack("!H", length)
    return head + bytes([0x80 | 127]) + struct.pack("!Q", length)


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    return frame_header(opcode, len(payload), fin) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_socket(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=rcvbuf or 2**16)


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_fin = False  # the FIN bit of the frame `read_frame` returned last

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None, headers: dict[str, str] | None = None
                      ) -> RawWebSocket:
        reader, writer = await open_socket(port, rcvbuf)
        writer.write(handshake_request(port, headers=headers))
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if not response.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(response.split(b"\r\n", 1)[0].decode())
        return cls(reader, writer)

    async def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin))
        await self.writer.drain()

    async def announce_frame(self, opcode: int, length: int, fin: bool = True) -> None:
        """Only the header of a frame of `length` bytes: the server can refuse it (1009) with nothing left unread,
        so its close frame is not lost to a TCP reset."""
        self.writer.write(frame_header(opcode, length, fin))
        await self.writer.drain()

    async def send_commands(self, *commands: dict[str, object]) -> None:
        await self.send_frame(TEXT, b"\n".join(orjson.dumps(c) for c in commands))

    async def read_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; EOFError when the TCP connection ends."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            self.last_fin = bool(head[0] & 0x80)
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except asyncio.IncompleteReadError as exc:
            raise EOFError from exc
        except ConnectionResetError as exc:
            raise EOFError from exc

    async def read_messages(self, timeout: float = TIMEOUT) -> list[dict[str, object]]:
        """The JSON messages of the next text frame."""
        opcode, payload = await self.read_frame(timeout)
        assert opcode == TEXT, (opcode, payload[:200])
        return [orjson.loads(line) for line in payload.split(b"\n")]

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes: its close code, or None when the connection ended without a close frame."""
        while True:
            try:
                opcode, payload = await self.read_frame(timeout)
            except EOFError:
                return None
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def close(self) -> None:
        self.writer.close()
