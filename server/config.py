"""Configuration: frozen dataclasses named after Centrifugo v6 options (loading and validation are in
`config_load.py`). Errors name the offending key.

Owns: `Config` and its sections, `ChannelOptions`, `ConfigError`, `parse_duration`, `DEVELOPMENT_PRESET`.
Must not import anything outside the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DURATION = {"duration": True}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
NAMESPACE_NAME_RE = re.compile(r"^[-a-zA-Z0-9_]{2,}$")
ROOM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # chat rooms: the part after the chat namespace
ENGINE_TYPES = ("memory", "redis")


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def dur(seconds: float) -> Any:
    """A duration field (seconds as float; accepts Go-style strings such as "25s", "720h", "1m30s")."""
    return field(default=seconds, metadata=DURATION)


def parse_duration(value: object, key: str) -> float:
    """Parse a Centrifugo duration: a Go duration string ("25s", "1h30m", "500ms") or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration such as \"25s\", got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(key, f"expected a non-negative duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ConfigError(key, f"expected a duration such as \"25s\" or \"720h\", got {value!r}")


# --- the option tree --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelOptions:
    """Per-namespace channel options, with Centrifugo's names and semantics (all off by default)."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float = dur(0.0)
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_client: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


@dataclass(frozen=True)
class Namespace(ChannelOptions):
    name: str = ""


@dataclass(frozen=True)
class ChannelConfig:
    without_namespace: ChannelOptions = field(default_factory=ChannelOptions)
    namespaces: tuple[Namespace, ...] = ()
    max_length: int = 255
    history_meta_ttl: float = dur(720 * 3600.0)


@dataclass(frozen=True)
class TokenConfig:
    """Keys and checks for JWTs (Centrifugo `client.token`). With `jwks_public_endpoint` set, keys come from
    that JWKS only (picked by the token's `kid`); otherwise the token's `alg` picks the HMAC, RSA or ECDSA key."""

    hmac_secret_key: str = ""
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    jwks_public_endpoint: str = ""
    audience: str = ""
    issuer: str = ""
    user_id_claim: str = ""


@dataclass(frozen=True)
class SubscriptionTokenConfig(TokenConfig):
    """`client.subscription_token`: when `enabled`, subscription tokens use these keys instead of
    `client.token`'s."""

    enabled: bool = False


@dataclass(frozen=True)
class CommandRateLimitConfig:
    """`client.command_rate_limit`: a token bucket per connection over its commands and WebSocket ping frames.
    Over the bucket → error 111 (temporary); `close_after` refusals in a row → close 3013. `rate` 0 = off."""

    rate: float = 0.0  # commands per second, on average
    burst: int = 200  # commands at once (centrifuge-js sends connect + every subscribe in one frame)
    close_after: int = 100


@dataclass(frozen=True)
class ClientConfig:
    token: TokenConfig = field(default_factory=TokenConfig)
    subscription_token: SubscriptionTokenConfig = field(default_factory=SubscriptionTokenConfig)
    insecure: bool = False
    disallow_anonymous_connection_tokens: bool = False
    user_connection_limit: int = 0
    connection_limit: int = 0  # open WebSocket connections on this node (0 = unlimited) → HTTP 503
    connection_rate_limit: int = 0  # new WebSocket connections per second on this node (0 = unlimited) → HTTP 503
    command_rate_limit: CommandRateLimitConfig = field(default_factory=CommandRateLimitConfig)
    expired_close_delay: float = dur(25.0)
    expired_sub_close_delay: float = dur(25.0)
    allowed_origins: tuple[str, ...] = ()
    allow_anonymous_connect_without_token: bool = False
    ping_interval: float = dur(25.0)
    pong_timeout: float = dur(8.0)
    stale_close_delay: float = dur(10.0)
    presence_update_interval: float = dur(27.0)
    presence_ttl: float = dur(60.0)
    channel_limit: int = 128
    queue_max_size: int = 1048576
    history_max_publication_limit: int = 300
    recovery_max_publication_limit: int = 300


@dataclass(frozen=True)
class TlsConfig:
    """`http_server.tls` (Centrifugo v6's TLS object, server side): `cert_pem` and `key_pem` each take PEM content,
    base64-encoded PEM, or the path of a PEM file (checked in that order, as Centrifugo's `PEMData`)."""

    enabled: bool = False
    cert_pem: str = ""  # the certificate, followed by any intermediates
    key_pem: str = ""  # its private key (unencrypted)


@dataclass(frozen=True)
class HttpServerConfig:
    address: str = "127.0.0.1"
    port: int = 8000
    tls: TlsConfig = field(default_factory=TlsConfig)
    tls_external: bool = False  # TLS only on `port`, not on `internal_port`
    internal_port: int = 0  # /metrics, /health, /ready on this port instead (0 = on `port`)
    internal_address: str = ""  # "" = `address`
    header_timeout: float = dur(20.0)  # a request's headers must arrive within this (also the keep-alive idle limit)
    body_timeout: float = dur(60.0)  # a request body must arrive within this
    max_header_size: int = 16384  # bytes of request line + headers
    workers: int = 1  # processes serving `port` (SO_REUSEPORT), each a full node; > 1 needs engine.type "redis"


@dataclass(frozen=True)
class WebSocketConfig:
    message_size_limit: int = 65536  # bytes of one inbound message (→ close 1009); alias websocket_max_message_size


@dataclass(frozen=True)
class WatchdogConfig:
    """The event-loop lag watchdog (`server/watchdog.py`)."""

    enabled: bool = True
    interval: float = dur(0.05)  # how often the loop's tick is scheduled
    lag_threshold: float = dur(0.02)  # a tick later than this → one WARNING per incident, with the blocking stack


@dataclass(frozen=True)
class HttpApiConfig:
    key: str = ""
    insecure: bool = False
    max_body_size: int = 1048576


@dataclass(frozen=True)
class MemoryEngineConfig:
    persistence: str = "sqlite"  # "sqlite": history kept in data_dir/history.sqlite3; "none": RAM only
    synchronous: str = "normal"  # SQLite's PRAGMA synchronous: "normal" (survives a crash of the process), "full"


@dataclass(frozen=True)
class RedisEngineConfig:
    """`engine.redis`: one address, or several to shard channels across Redis instances (a channel lives on the
    instance its name hashes to; the first instance also carries the nodes' control channel)."""

    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)  # redis://[user:password@]host:port/db, rediss:// = TLS
    prefix: str = "gust"  # every key and pub/sub channel starts with this
    connect_timeout: float = dur(1.0)  # a Redis that cannot be reached fails the operation after this
    io_timeout: float = dur(4.0)  # a command without an answer fails after this (never a hang)
    reconnect_max_delay: float = dur(5.0)  # the pub/sub listener retries with capped, jittered backoff


@dataclass(frozen=True)
class EngineConfig:
    type: str = "memory"
    memory: MemoryEngineConfig = field(default_factory=MemoryEngineConfig)
    redis: RedisEngineConfig = field(default_factory=RedisEngineConfig)


@dataclass(frozen=True)
class ChatConfig:
    """The bundled chat web app (`server/chat.py`): pages at `/`, rooms are channels of `namespace`."""

    enabled: bool = False
    namespace: str = "room"  # added with the options the chat needs when it is not configured
    default_rooms: tuple[str, ...] = ("lobby",)
    cookie_secret: str = ""  # empty: generated on first run and kept in data_dir/cookie_secret (0600)
    token_ttl: float = dur(600.0)  # lifetime of the connection tokens the pages mint (refreshed by the page)
    max_message_length: int = 1000  # characters
    message_rate_burst: int = 5  # messages a user may send at once...
    message_rate_per_minute: int = 30  # ...and on average


@dataclass(frozen=True)
class ShutdownConfig:
    timeout: float = dur(30.0)


@dataclass(frozen=True)
class Config:
    http_server: HttpServerConfig = field(default_factory=HttpServerConfig)
    http_api: HttpApiConfig = field(default_factory=HttpApiConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    data_dir: str = "var"
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    development: bool = False

    def namespace_options(self, name: str) -> ChannelOptions | None:
        """Options for namespace `name` ("" = channels without a namespace); None when not configured."""
        if name == "":
            return self.channel.without_namespace
        return next((ns for ns in self.channel.namespaces if ns.name == name), None)


# The development setup `make run` starts when no configuration file is given at all.
DEVELOPMENT_PRESET: dict[str, Any] = {
    "development": True,
    "chat": {"enabled": True},
    "client": {"allow_anonymous_connect_without_token": True},
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "presence": True,
                "join_leave": True,
                "force_push_join_leave": True,
                "history_size": 100,
                "history_ttl": "24h",
                "force_recovery": True,
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
                "allow_publish_for_client": True,
                "allow_publish_for_anonymous": True,
                "allow_history_for_client": True,
                "allow_history_for_anonymous": True,
                "allow_presence_for_client": True,
                "allow_presence_for_anonymous": True,
            }
        ]
    },
}
