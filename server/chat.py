"""The bundled chat web app: RequestHandlers for its pages and its small JSON endpoints.

Owns: the chat handlers, `chat_routes`, `RateLimiter`, `SecurityHeaders`. May import: node, config, chat_setup,
limits, model, protocol, auth, tornado.

Integration pattern (the same as any backend in front of Gust): the login form (XSRF-protected) puts the
nickname in a signed cookie; the chat page gets a connection token minted by the server for that user, and
fetches fresh ones from `/chat/token` when it expires; the browser then talks to `/connection/websocket`.
Rooms are channels `<namespace>:<room>`. Messages are posted to `/chat/rooms/<room>/messages`, which checks
length and rate and publishes through the node, so browsers cannot publish (or forge authors) directly.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
import tornado.routing
import tornado.web

from .auth import make_connection_token
from .chat_setup import ChatSetup
from .config import ROOM_NAME_RE, ChatConfig
from .engines import EngineError
from .limits import TokenBucket
from .node import Node
from .protocol import ReplyError

log = logging.getLogger("gust.chat")

USER_COOKIE = "gust_user"
NICKNAME_RE = re.compile(r"[^\W_][\w.-]{1,23}")  # letters/digits first, then letters, digits, _ . - (2..24)
HISTORY_ON_JOIN = 50
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def nickname_problem(nick: str) -> str:
    """Why `nick` cannot be used ("" when it can)."""
    if not nick:
        return "Please pick a nickname."
    if len(nick) < 2 or len(nick) > 24:
        return "A nickname has 2 to 24 characters."
    if not NICKNAME_RE.fullmatch(nick):
        return "Use letters, digits, '.', '_' or '-', starting with a letter or digit."
    return ""


class RateLimiter:
    """A token bucket per user: `burst` messages at once, refilled at `per_minute` per minute."""

    MAX_USERS = 10000  # above this, buckets that are full again are forgotten

    def __init__(self, burst: int, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, user: str) -> float:
        """Take one token for `user`: 0.0 when allowed, else the seconds until one is available."""
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= self.MAX_USERS:
                self._forget_full()
            bucket = self._buckets[user] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket.take_or_wait()

    def _forget_full(self) -> None:
        for user, bucket in list(self._buckets.items()):
            if bucket.level() >= self.burst:
                del self._buckets[user]


class SecurityHeaders(tornado.web.RequestHandler):
    """Headers every chat page and endpoint sends: a CSP that allows only our own scripts and styles."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")


class ChatHandler(SecurityHeaders):
    def initialize(self, node: Node, setup: ChatSetup, limiter: RateLimiter) -> None:
        self.node = node
        self.setup = setup
        self.chat: ChatConfig = setup.config.chat
        self.limiter = limiter

    def get_current_user(self) -> str | None:
        value = self.get_signed_cookie(USER_COOKIE, max_age_days=30)
        if value is None:
            return None
        nick = value.decode("utf-8", "replace")
        return None if nickname_problem(nick) else nick

    def mint_token(self, user: str) -> str:
        return make_connection_token(self.setup.token_key, user, ttl=int(self.chat.token_ttl), info={"name": user})

    def write_json(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(body))

    def write_error_json(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.write_json({"error": {"code": code, "message": message, **extra}}, status)

    def channel(self, room: str) -> str:
        return f"{self.chat.namespace}:{room}"


class LoginHandler(ChatHandler):
    """`/`: the landing page (pick a nickname); `POST /` logs in."""

    def get(self) -> None:
        if self.current_user:
            self.redirect(self.reverse_url("chat"))
            return
        self.render("login.html", error="", nickname="")

    def post(self) -> None:
        nick = self.get_body_argument("nickname", "").strip()
        problem = nickname_problem(nick)
        if problem:
            self.set_status(400)
            self.render("login.html", error=problem, nickname=nick)
            return
        self.set_signed_cookie(USER_COOKIE, nick, expires_days=30, httponly=True, samesite="Lax",
                               secure=self.request.protocol == "https")
        log.info("chat login: %s", nick)
        self.redirect(self.reverse_url("chat"))


class LogoutHandler(ChatHandler):
    def post(self) -> None:
        self.clear_cookie(USER_COOKIE)
        self.redirect(self.reverse_url("chat_login"))


class ChatPageHandler(ChatHandler):
    """`/chat`: the chat itself; the page's script connects with the token minted here."""

    def get(self) -> None:
        user = self.current_user
        if not user:
            self.redirect(self.reverse_url("chat_login"))
            return
        self.render("chat.html", user=user, token=self.mint_token(user), chat=self.chat,
                    ws_path=self.reverse_url("websocket"), history_limit=HISTORY_ON_JOIN,
                    xsrf=self.xsrf_token.decode())


class ChatEndpoint(ChatHandler):
    """A JSON endpoint for the logged-in user: anyone else gets 401 `login_required` (after Tornado's XSRF check)."""

    user = ""

    def prepare(self) -> None:
        user = self.current_user
        if not user:
            self.write_error_json(401, "login_required", "Your session has ended: please log in again.")
            return
        self.user = user


class TokenHandler(ChatEndpoint):
    """`/chat/token`: a fresh connection token for the logged-in user (the page's token refresh)."""

    def get(self) -> None:
        self.write_json({"token": self.mint_token(self.user)})


class RoomsHandler(ChatEndpoint):
    """`/chat/rooms`: rooms with people in them first (with counts), then the default rooms."""

    async def get(self) -> None:
        prefix = self.chat.namespace + ":"
        rooms: dict[str, int] = {room: 0 for room in self.chat.default_rooms}
        for channel in self.node.hub.channels():
            if channel.startswith(prefix):
                try:
                    stats = await self.node.presence_stats(channel)
                except (EngineError, ReplyError):
                    continue
                rooms[channel[len(prefix):]] = stats.num_users
        ordered = sorted(rooms.items(), key=lambda item: (-item[1], item[0]))
        self.write_json({"rooms": [{"name": name, "users": users} for name, users in ordered]})


class MessagesHandler(ChatEndpoint):
    """`POST /chat/rooms/<room>/messages` `{"text": ...}`: length and rate checked, then published."""

    async def post(self, room: str) -> None:
        if not ROOM_NAME_RE.fullmatch(room):
            self.write_error_json(400, "bad_room", "That is not a room name.")
            return
        text = self._text()
        if text is None:
            self.write_error_json(400, "bad_request", 'Expected a JSON body {"text": "..."}.')
            return
        await self._publish(self.user, room, text)

    def _text(self) -> str | None:
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError:
            return None
        text = body.get("text") if isinstance(body, dict) else None
        return text.strip() if isinstance(text, str) else None

    async def _publish(self, user: str, room: str, text: str) -> None:
        limit = self.chat.max_message_length
        if not text:
            self.write_error_json(400, "empty", "Type a message first.")
            return
        if len(text) > limit:
            self.write_error_json(413, "too_long", f"Messages can be at most {limit} characters "
                                  f"(this one has {len(text)}).", limit=limit)
            return
        wait = self.limiter.take(user)
        if wait > 0:
            seconds = max(1, round(wait))
            self.set_header("Retry-After", str(seconds))
            self.write_error_json(429, "rate_limited", f"You are sending messages too fast: wait {seconds} s.",
                                  retry_after=seconds)
            return
        data = orjson.dumps({"text": text, "user": user, "time": int(time.time() * 1000)})
        try:
            position = await self.node.publish(self.channel(room), data)
        except EngineError:
            log.warning("chat: publish to %s failed", room, exc_info=True)
            self.write_error_json(503, "unavailable", "The message could not be sent right now: try again.")
            return
        self.write_json({"offset": position.offset, "epoch": position.epoch})


def chat_routes(prefix: str, node: Node, setup: ChatSetup) -> list[tornado.routing.Rule]:
    chat = setup.config.chat
    kwargs = {"node": node, "setup": setup,
              "limiter": RateLimiter(chat.message_rate_burst, chat.message_rate_per_minute)}
    return [
        tornado.web.url(prefix + r"/", LoginHandler, kwargs, name="chat_login"),
        tornado.web.url(prefix + r"/logout", LogoutHandler, kwargs, name="chat_logout"),
        tornado.web.url(prefix + r"/chat", ChatPageHandler, kwargs, name="chat"),
        tornado.web.url(prefix + r"/chat/token", TokenHandler, kwargs, name="chat_token"),
        tornado.web.url(prefix + r"/chat/rooms", RoomsHandler, kwargs, name="chat_rooms"),
        tornado.web.url(prefix + r"/chat/rooms/([^/]+)/messages", MessagesHandler, kwargs, name="chat_messages"),
    ]
