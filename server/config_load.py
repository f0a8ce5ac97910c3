"""Loading and checking the configuration: defaults, a JSON or TOML file, `GUST_*` environment variables and
command-line flags (in rising precedence), validated before anything listens. Errors name the offending key.

Owns: `load_config`, `from_dict`, `validate`, `deep_merge`, `env_overrides`, `tls_context` (the server's
`SSLContext` from `http_server.tls`). May import: config. Must not import anything outside the standard library.
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
from pathlib import Path
from typing import Any

from .config import (
    DEVELOPMENT_PRESET,
    ENGINE_TYPES,
    NAMESPACE_NAME_RE,
    ROOM_NAME_RE,
    ChannelOptions,
    ChatConfig,
    Config,
    ConfigError,
    TlsConfig,
    TokenConfig,
    parse_duration,
)

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
        if isinstance(value, str) and typing.get_args(tp)[0] is str:
            value = [value]  # one string where a list of strings is expected (engine.redis.address)
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
    _validate_redis(config)
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


def _validate_redis(config: Config) -> None:
    workers = config.http_server.workers
    if workers < 1:
        raise ConfigError("http_server.workers", f"must be at least 1, got {workers}")
    if workers > 1 and config.engine.type != "redis":
        raise ConfigError("http_server.workers", f"{workers} workers need engine.type \"redis\": with the memory "
                          "engine each process would have its own channels, history and presence")
    if config.engine.type != "redis":
        return
    redis = config.engine.redis
    if not redis.address:
        raise ConfigError("engine.redis.address", "at least one redis:// address is required")
    for i, address in enumerate(redis.address):
        if not re.match(r"^(redis|rediss|unix)://", address):
            raise ConfigError(f"engine.redis.address[{i}]", f"expected redis://, rediss:// or unix://, got {address!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", redis.prefix):
        raise ConfigError("engine.redis.prefix", "expected letters, digits, _ . : or -")
    for name in ("connect_timeout", "io_timeout", "reconnect_max_delay"):
        _positive(getattr(redis, name), f"engine.redis.{name}")


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


