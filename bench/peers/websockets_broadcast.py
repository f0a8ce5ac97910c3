"""Peer: the `websockets` library's asyncio server, fanning out with `websockets.asyncio.server.broadcast()`.
Publications come in on a minimal HTTP/1.1 keep-alive endpoint on asyncio streams (websockets' own server
only answers GET). Run: `python -m bench.peers.websockets_broadcast --port P --api-port Q`.
"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from .common import PUBLISH_OK, answer, parse_args, push_frame

CHANNELS: dict[str, set[ServerConnection]] = {}
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(PUBLISH_OK)) + PUBLISH_OK


async def subscriber(ws: ServerConnection) -> None:
    channels: list[str] = []

    def subscribe(channel: str) -> None:
        CHANNELS.setdefault(channel, set()).add(ws)
        channels.append(channel)

    try:
        async for message in ws:
            reply = answer(message, subscribe)
            if reply:
                await ws.send(reply)
    except ConnectionClosed:
        pass
    finally:
        for channel in channels:
            subs = CHANNELS.get(channel)
            if subs is not None:
                subs.discard(ws)
                if not subs:
                    del CHANNELS[channel]


async def publish_endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            channel, frame = push_frame(await reader.readexactly(length))
            broadcast(CHANNELS.get(channel, ()), frame)
            writer.write(RESPONSE)
    writer.close()


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    api = await asyncio.start_server(publish_endpoint, "127.0.0.1", args.api_port)
    async with api, serve(subscriber, "127.0.0.1", args.port, compression=None, ping_interval=None,
                          max_size=1 << 20):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
