"""Peer: the naive Tornado broadcast server. On each publication it calls `write_message` once per subscribed
client (the frame is encoded once, as a str). Run: `python -m bench.peers.naive_tornado --port P --api-port Q`.
"""

from __future__ import annotations

import asyncio

import tornado.httpserver
import tornado.web
import tornado.websocket

from .common import PUBLISH_OK, answer, parse_args, push_frame

CHANNELS: dict[str, set[SubscriberHandler]] = {}


class SubscriberHandler(tornado.websocket.WebSocketHandler):
    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.channels: list[str] = []

    def _subscribe(self, channel: str) -> None:
        CHANNELS.setdefault(channel, set()).add(self)
        self.channels.append(channel)

    def on_message(self, message: str | bytes) -> None:
        reply = answer(message, self._subscribe)
        if reply:
            self.write_message(reply)

    def on_close(self) -> None:
        for channel in getattr(self, "channels", ()):
            subs = CHANNELS.get(channel)
            if subs is not None:
                subs.discard(self)
                if not subs:
                    del CHANNELS[channel]


class PublishHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        channel, frame = push_frame(self.request.body)
        for client in list(CHANNELS.get(channel, ())):
            try:  # noqa: SIM105 (a try costs less than contextlib.suppress per client)
                client.write_message(frame)
            except tornado.websocket.WebSocketClosedError:
                pass
        self.set_header("Content-Type", "application/json")
        self.finish(PUBLISH_OK)


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tornado.httpserver.HTTPServer(tornado.web.Application([(r"/connection/websocket", SubscriberHandler)])).listen(
        args.port, "127.0.0.1")
    tornado.httpserver.HTTPServer(tornado.web.Application([(r"/api/publish", PublishHandler)])).listen(
        args.api_port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
