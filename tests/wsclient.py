"""A minimal raw protocol client for tests: sends JSON commands, reads replies, pushes and close codes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from tornado.websocket import WebSocketClientConnection, websocket_connect

DEFAULT_TIMEOUT = 5.0


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawClient:
    """Keeps every decoded message in order; `recv` returns the next one, `reply(id)` waits for one reply."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self.frames: list[str] = []
        self._next_id = 0

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        return cls(await websocket_connect(url, **kwargs))

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, data: str | bytes, binary: bool = False) -> None:
        await self.conn.write_message(data, binary=binary)

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.send_raw("\n".join(orjson.dumps(c).decode() for c in commands))

    async def command(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        cmd_id = self.next_id()
        await self.send({"id": cmd_id, method: params or {}})
        return await self.reply(cmd_id)

    async def connect(self, **params: Any) -> dict[str, Any]:
        reply = await self.command("connect", params)
        assert "connect" in reply, reply
        return reply

    async def _read_frame(self, timeout: float) -> None:
        frame = await asyncio.wait_for(self.conn.read_message(), timeout)
        if frame is None:
            raise Closed(self.conn.close_code, self.conn.close_reason)
        text = frame.decode() if isinstance(frame, bytes) else frame
        self.frames.append(text)
        for line in text.split("\n"):
            self.messages.append(orjson.loads(line))

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        while not self.messages:
            await self._read_frame(timeout)
        return self.messages.pop(0)

    async def reply(self, cmd_id: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The reply with `cmd_id`; pushes and pings read meanwhile stay queued for `recv`/`push`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.messages):
                if msg.get("id") == cmd_id:
                    return self.messages.pop(i)
            await self._read_frame(max(0.01, deadline - loop.time()))

    async def push(self, kind: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next push of `kind` (e.g. "pub"); other messages before it are dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.messages:
                msg = self.messages.pop(0)
                push = msg.get("push")
                if push is not None and kind in push:
                    return push  # type: ignore[no-any-return]
            await self._read_frame(max(0.01, deadline - loop.time()))

    async def closed(self, timeout: float = DEFAULT_TIMEOUT) -> Closed:
        """Read until the server closes; return the close code and reason."""
        try:
            while True:
                await self._read_frame(timeout)
        except Closed as exc:
            return exc

    def close(self) -> None:
        self.conn.close()
