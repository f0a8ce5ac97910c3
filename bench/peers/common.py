"""What both peer servers share: the minimal client flow and the publish endpoint's format.

A peer accepts the same client flow as Gust in a minimal form: every line of a client frame is a JSON command;
`connect` is answered `{"id":N,"connect":{"client":..}}`, `subscribe` adds the connection to the channel and is
answered `{"id":N,"subscribe":{}}`, anything else (the `{}` pong) is ignored. Publications arrive as
`POST /api/publish` with Gust's body `{"channel": c, "data": d}` (the key header is not checked) and go out to
each subscriber as Gust's push `{"push":{"channel":c,"pub":{"data":d}}}`, answered `{"result":{}}`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

PUBLISH_OK = b'{"result":{}}'


def answer(frame: str | bytes, subscribe: Callable[[str], None]) -> str:
    """The reply frame for a client frame (possibly empty), calling `subscribe(channel)` for each subscribe."""
    replies = []
    for line in (frame.decode() if isinstance(frame, bytes) else frame).split("\n"):
        if not line.strip():
            continue
        cmd: dict[str, Any] = json.loads(line)
        cmd_id = cmd.get("id", 0)
        if "connect" in cmd:
            replies.append(json.dumps({"id": cmd_id, "connect": {"client": str(id(subscribe)), "version": "peer"}},
                                      separators=(",", ":")))
        elif "subscribe" in cmd:
            subscribe(cmd["subscribe"]["channel"])
            replies.append(f'{{"id":{cmd_id},"subscribe":{{}}}}')
    return "\n".join(replies)


def push_frame(body: bytes) -> tuple[str, str]:
    """(channel, push frame) for a publish request body."""
    params = json.loads(body)
    channel = params["channel"]
    return channel, json.dumps({"push": {"channel": channel, "pub": {"data": params["data"]}}},
                               separators=(",", ":"))


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="WebSocket port on 127.0.0.1")
    parser.add_argument("--api-port", type=int, required=True, help="publish endpoint port on 127.0.0.1")
    return parser.parse_args()
