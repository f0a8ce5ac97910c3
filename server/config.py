"""Configuration: frozen dataclasses named after Centrifugo v6 options, loaded from defaults, a JSON or TOML
file, `GUST_*` environment variables and command-line flags (in rising precedence), validated before anything
listens. Errors name the offending key.

Owns: `Config` and its sections, `ChannelOptions`, `load_config`, `ConfigError`, `parse_duration`,
`tls_context` (the server's `SSLContext` from `http_server.tls`).
Must not import anything outside the standard library.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import ssl
import tempfile
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DURATION = {"duration": True}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
NAMESPACE_NAME_RE = re.compile(r"^[-a-zA-Z0-9_]{2,}$")
ROOM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # chat rooms: the part after the chat namespace
ENGINE_TYPES = ("memory",)


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
class EngineConfig:
    type: str = "memory"
    memory: MemoryEngineConfig = field(default_factory=MemoryEngineConfig)


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


# --- building dataclasses from plain data -----------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str, is_duration: bool) -> Any:
    if is_duration:
        return parse_duration(value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected an object, got {value!r}")
        return build(typing.cast(type, tp), value, key)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{key}[{i}]", False) for i, v in enumerate(value))
    ok = type(value) is tp or (tp is float and type(value) is int)
    if not ok:
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise `ConfigError` naming the key."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            raise ConfigError(key, "unknown option")
        kwargs[name] = _convert(hints[name], value, key, bool(fields[name].metadata.get("duration")))
    return cls(**kwargs)


def _parse_env_value(tp: Any, text: str, key: str, is_duration: bool) -> Any:
    if is_duration:
        return text
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(key, f"expected a boolean, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(key, f"expected {_type_name(tp)}, got {text!r}") from None
    if typing.get_origin(tp) is tuple:
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(key, f"expected a JSON list: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def env_overrides(environ: Mapping[str, str], cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Nested overrides from `GUST_<PATH>` variables, e.g. GUST_HTTP_SERVER_PORT → http_server.port."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested = env_overrides(environ, typing.cast(type, tp), key)
            if nested:
                out[f.name] = nested
            continue
        var = "GUST_" + key.upper().replace(".", "_")
        if var in environ:
            out[f.name] = _parse_env_value(tp, environ[var], key, bool(f.metadata.get("duration")))
    return out


# Other names accepted at the top level of a file, moved to their canonical option before anything else.
ALIASES = {"websocket_max_message_size": ("websocket", "message_size_limit")}


def apply_aliases(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for alias, (section, name) in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        current = out.get(section, {})
        if not isinstance(current, Mapping):
            continue  # `build` names the bad section
        if name in current and current[name] != value:
            raise ConfigError(alias, f"conflicts with {section}.{name}")
        out[section] = {**current, name: value}
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML file (by extension; JSON is tried first for other names)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"config file {path} must hold an object at the top level")
    return data


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < file (or the development preset when there is no file) < environment < flags."""
    data: dict[str, Any] = apply_aliases(read_config_file(path)) if path is not None else dict(DEVELOPMENT_PRESET)
    data = deep_merge(data, env_overrides(environ or {}))
    data = deep_merge(data, flags or {})
    config = typing.cast(Config, build(Config, data))
    validate(config)
    return config


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a plain (possibly nested) mapping, as a file would give it."""
    config = typing.cast(Config, build(Config, apply_aliases(data)))
    validate(config)
    return config


# --- validation -------------------------------------------------------------------------------------------


def _validate_channel_options(opts: ChannelOptions, key: str) -> None:
    if opts.history_size < 0:
        raise ConfigError(f"{key}.history_size", "must not be negative")
    if (opts.history_size > 0) != (opts.history_ttl > 0):
        raise ConfigError(key, "history_size and history_ttl must be set together")
    if (opts.force_recovery or opts.allow_recovery) and not opts.history_enabled:
        raise ConfigError(key, "recovery needs history: set history_size and history_ttl")
    if opts.channel_regex:
        try:
            re.compile(opts.channel_regex)
        except re.error as exc:
            raise ConfigError(f"{key}.channel_regex", f"invalid regular expression: {exc}") from None


def _validate_token(token: TokenConfig, key: str) -> None:
    if token.jwks_public_endpoint and not token.jwks_public_endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.jwks_public_endpoint", "expected an http:// or https:// URL")
    if token.jwks_public_endpoint and (token.rsa_public_key or token.ecdsa_public_key):
        raise ConfigError(f"{key}.jwks_public_endpoint", "set either a JWKS endpoint or public keys, not both")
    for name in ("rsa_public_key", "ecdsa_public_key"):
        value = getattr(token, name)
        if value and "-----BEGIN PUBLIC KEY-----" not in value:
            raise ConfigError(f"{key}.{name}", "expected a PEM public key (-----BEGIN PUBLIC KEY-----)")


def validate(config: Config) -> None:
    c = config.client
    if not 0 <= config.http_server.port <= 65535:
        raise ConfigError("http_server.port", f"expected 0..65535, got {config.http_server.port}")
    if c.ping_interval <= 0 or c.pong_timeout <= 0:
        raise ConfigError("client.ping_interval", "ping_interval and pong_timeout must be positive")
    if c.pong_timeout >= c.ping_interval:
        raise ConfigError("client.pong_timeout", "must be shorter than client.ping_interval")
    if config.http_api.max_body_size <= 0:
        raise ConfigError("http_api.max_body_size", "must be positive")
    for name in ("channel_limit", "queue_max_size", "history_max_publication_limit",
                 "recovery_max_publication_limit"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"client.{name}", "must be positive")
    if c.user_connection_limit < 0:
        raise ConfigError("client.user_connection_limit", "must not be negative (0 = no limit)")
    _validate_token(c.token, "client.token")
    if c.subscription_token.enabled:
        _validate_token(c.subscription_token, "client.subscription_token")
    if config.engine.type not in ENGINE_TYPES:
        raise ConfigError("engine.type", f"expected one of {', '.join(ENGINE_TYPES)}, got {config.engine.type!r}")
    memory = config.engine.memory
    if memory.persistence not in ("sqlite", "none"):
        raise ConfigError("engine.memory.persistence", f"expected sqlite or none, got {memory.persistence!r}")
    if memory.synchronous not in ("normal", "full"):
        raise ConfigError("engine.memory.synchronous", f"expected normal or full, got {memory.synchronous!r}")
    if not config.data_dir:
        raise ConfigError("data_dir", "must not be empty")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", f"expected debug, info, warning or error, got {config.log_level!r}")
    _validate_limits(config)
    if config.http_server.tls.enabled:
        tls_context(config.http_server.tls)
    _validate_channel_options(config.channel.without_namespace, "channel.without_namespace")
    seen: set[str] = set()
    for i, ns in enumerate(config.channel.namespaces):
        key = f"channel.namespaces[{i}]"
        if not NAMESPACE_NAME_RE.match(ns.name):
            raise ConfigError(f"{key}.name", f"expected a name matching {NAMESPACE_NAME_RE.pattern}, got {ns.name!r}")
        if ns.name in seen:
            raise ConfigError(f"{key}.name", f"duplicate namespace {ns.name!r}")
        seen.add(ns.name)
        _validate_channel_options(ns, key)
    _validate_chat(config.chat)


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(key, "must be positive")


def _validate_limits(config: Config) -> None:
    c, http = config.client, config.http_server
    for name in ("connection_limit", "connection_rate_limit"):
        if getattr(c, name) < 0:
            raise ConfigError(f"client.{name}", "must not be negative (0 = no limit)")
    if c.command_rate_limit.rate < 0:
        raise ConfigError("client.command_rate_limit.rate", "must not be negative (0 = no limit)")
    _positive(c.command_rate_limit.burst, "client.command_rate_limit.burst")
    _positive(c.command_rate_limit.close_after, "client.command_rate_limit.close_after")
    if not 0 <= http.internal_port <= 65535:
        raise ConfigError("http_server.internal_port", f"expected 0..65535, got {http.internal_port}")
    if http.internal_port and http.internal_port == http.port:
        raise ConfigError("http_server.internal_port", "must differ from http_server.port (0 = same port)")
    for name in ("header_timeout", "body_timeout", "max_header_size"):
        _positive(getattr(http, name), f"http_server.{name}")
    _positive(config.websocket.message_size_limit, "websocket.message_size_limit")
    _positive(config.watchdog.interval, "watchdog.interval")
    _positive(config.watchdog.lag_threshold, "watchdog.lag_threshold")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format", f"expected text or json, got {config.log_format!r}")


_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.+?-----END \1-----", re.S)


def load_pem(value: str, key: str) -> bytes:
    """Centrifugo's `PEMData`: PEM content, base64-encoded PEM, or the path of a PEM file. The value is never
    echoed in errors (it may be a private key)."""
    raw = value.encode("utf-8", "replace")
    if _PEM_BLOCK_RE.search(raw):
        return raw
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if _PEM_BLOCK_RE.search(decoded):
        return decoded
    try:
        is_file = bool(value) and "\n" not in value and Path(value).is_file()
        content = Path(value).read_bytes() if is_file else b""
    except OSError as exc:
        raise ConfigError(key, f"cannot read {value}: {exc.strerror}") from None
    if not is_file:
        raise ConfigError(key, "expected PEM content, base64-encoded PEM, or the path of an existing PEM file")
    if not _PEM_BLOCK_RE.search(content):
        raise ConfigError(key, f"file {value} holds no PEM data")
    return content


def tls_context(tls: TlsConfig, key: str = "http_server.tls") -> ssl.SSLContext:
    """A server `SSLContext` (TLS 1.2+) from `cert_pem` and `key_pem`; problems raise `ConfigError` naming the key."""
    for name in ("cert_pem", "key_pem"):
        if not getattr(tls, name):
            raise ConfigError(f"{key}.{name}", "required when TLS is enabled")
    cert = load_pem(tls.cert_pem, f"{key}.cert_pem")
    private = load_pem(tls.key_pem, f"{key}.key_pem")
    try:  # parses every certificate in it: a certificate problem is named as such, not as a key mismatch
        ssl.create_default_context().load_verify_locations(cadata=cert.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{key}.cert_pem", f"not a valid PEM certificate ({_ssl_reason(exc)})") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="gust-tls-") as tmp:  # OpenSSL loads a chain from files only
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", private)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            paths.append(path)
        try:  # an empty password: an encrypted key fails here instead of prompting on a terminal
            context.load_cert_chain(paths[0], paths[1], password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{key}.key_pem", "not an unencrypted private key matching cert_pem "
                              f"({_ssl_reason(exc)})") from None
    return context


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def _validate_chat(chat: ChatConfig) -> None:
    if not NAMESPACE_NAME_RE.match(chat.namespace):
        raise ConfigError("chat.namespace", f"expected a name matching {NAMESPACE_NAME_RE.pattern}")
    for name in ("max_message_length", "message_rate_burst", "message_rate_per_minute"):
        if getattr(chat, name) <= 0:
            raise ConfigError(f"chat.{name}", "must be positive")
    if chat.token_ttl < 30:
        raise ConfigError("chat.token_ttl", "must be at least 30s")
    for room in chat.default_rooms:
        if not ROOM_NAME_RE.fullmatch(room):
            raise ConfigError("chat.default_rooms", f"{room!r} is not a room name matching {ROOM_NAME_RE.pattern}")


