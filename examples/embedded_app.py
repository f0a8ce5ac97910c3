"""A tiny Tornado application with its own login that embeds Gust at /rt (README "Embedding in a Tornado app").

    python -m examples.embedded_app [port]      # then open http://127.0.0.1:8000/

Its hooks decide who connects from the application's signed cookie, let logged-in users into `chat:*`, refuse
`admin:*` to everyone but "admin", stamp each chat message with its author, answer the `rpc` methods "whoami",
"echo" and "sleep", and echo `send` messages back on the user's server-side channel `personal:<user>`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import signal
import sys
from typing import Any

import tornado.web

from server.embed import (
    ConnectRequest,
    ConnectResult,
    DisconnectEvent,
    ErrorCode,
    Gust,
    Hooks,
    PublishRequest,
    PublishResult,
    Refuse,
    RpcRequest,
    RpcResult,
    SendRequest,
    SubscribeRequest,
    SubscribeResult,
)

log = logging.getLogger("example")

CONFIG: dict[str, Any] = {
    "channel": {"namespaces": [
        {"name": "chat", "presence": True, "join_leave": True, "history_size": 100, "history_ttl": "1h",
         "force_recovery": True},
        {"name": "personal"},
        {"name": "admin"},
    ]},
}


class ExampleApp:
    """The host application: its pages, its login, and the hooks it gives Gust."""

    def __init__(self, cookie_secret: str, config: dict[str, Any] | None = None) -> None:
        self.cookie_secret = cookie_secret
        self.gust = Gust(config or CONFIG, hooks=Hooks(
            on_connecting=self.on_connecting, on_subscribe=self.on_subscribe, on_publish=self.on_publish,
            on_rpc=self.on_rpc, on_send=self.on_send, on_disconnect=self.on_disconnect))
        self.online: dict[str, str] = {}  # client id → user
        self.disconnects: list[DisconnectEvent] = []

    def make_app(self) -> tornado.web.Application:
        return tornado.web.Application(
            [(r"/", HomeHandler), (r"/login", LoginHandler), (r"/logout", LogoutHandler)],
            cookie_secret=self.cookie_secret, login_url="/login")

    # --- hooks -------------------------------------------------------------------------------------------------

    async def on_connecting(self, req: ConnectRequest) -> ConnectResult:
        user = req.http.signed_cookie("user")  # the application's own session cookie
        if not user:
            raise Refuse(ErrorCode.UNAUTHORIZED, "log in first")
        self.online[req.client] = user
        return ConnectResult(user=user, info={"name": user}, data={"hello": user}, channels=[f"personal:{user}"])

    async def on_subscribe(self, req: SubscribeRequest) -> SubscribeResult | None:
        if req.channel.startswith("admin:") and req.user != "admin":
            raise Refuse(ErrorCode.PERMISSION_DENIED, "admins only")
        if req.channel.startswith(("chat:", "admin:")):
            return SubscribeResult(info={"joined_as": req.user})
        return None  # anything else: the namespace's own rules decide

    async def on_publish(self, req: PublishRequest) -> PublishResult | None:
        if not req.channel.startswith("chat:"):
            return None
        text = req.data.get("text") if isinstance(req.data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise Refuse(ErrorCode.BAD_REQUEST, "text required")
        return PublishResult(data={"text": text.strip(), "author": req.user})

    async def on_rpc(self, req: RpcRequest) -> RpcResult:
        if req.method == "whoami":
            return RpcResult({"user": req.user, "client": req.client})
        if req.method == "echo":
            return RpcResult(req.data)
        if req.method == "sleep":  # a slow backend call: only this connection waits
            seconds = float(req.data.get("seconds", 1)) if isinstance(req.data, dict) else 1.0
            await asyncio.sleep(min(seconds, 10.0))
            return RpcResult({"slept": seconds})
        raise Refuse(ErrorCode.METHOD_NOT_FOUND, f"no method {req.method!r}")

    async def on_send(self, req: SendRequest) -> None:
        await self.gust.publish(f"personal:{req.user}", {"echo": req.data})

    async def on_disconnect(self, event: DisconnectEvent) -> None:
        self.online.pop(event.client, None)
        self.disconnects.append(event)
        log.info("%s left (%d %s)", event.user, event.code, event.reason)


class HomeHandler(tornado.web.RequestHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        user = html.escape(str(self.current_user))
        self.write(f"<p>Hello {user}. Connect a Centrifugo SDK to <code>ws://{html.escape(self.request.host)}"
                   f"/rt/connection/websocket</code> from this browser (the cookie logs it in).</p>"
                   '<p><a href="/logout">log out</a></p>')

    def get_current_user(self) -> str | None:
        value = self.get_signed_cookie("user")
        return value.decode() if value else None


class LoginHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write('<form method="post"><input name="name" placeholder="name"><button>log in</button></form>')

    def post(self) -> None:
        name = self.get_body_argument("name", "").strip()
        if not name.isalnum() or len(name) > 32:
            raise tornado.web.HTTPError(400, reason="a name of letters and digits, please")
        self.set_signed_cookie("user", name, httponly=True, samesite="Lax")
        self.redirect("/")


class LogoutHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.clear_cookie("user")
        self.redirect("/login")


async def main(port: int = 8000) -> None:
    logging.basicConfig(level=logging.INFO)
    example = ExampleApp(cookie_secret="change me: a long random secret")
    app = example.make_app()
    await example.gust.mount(app, "/rt")  # adds /rt/connection/websocket and /rt/api/<method>, starts the node
    server = app.listen(port, "127.0.0.1")
    print(f"http://127.0.0.1:{port}/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await example.gust.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
