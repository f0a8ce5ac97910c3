"""Prepares the bundled chat web app before the node is built: its namespace, its token key, its cookie secret.

Owns: `ChatSetup`, `prepare_chat`, `ChatSetupError`, `load_or_create_secret`. May import: config, stdlib.

The chat pages act like any backend that integrates with Gust: they keep the user in a signed cookie and mint
HS256 connection tokens with `client.token.hmac_secret_key`. When no token key of any kind is configured (the
`make run` development setup), a key is generated once and kept in `<data_dir>/chat_token_key`; the cookie
secret likewise in `<data_dir>/cookie_secret`. Both files are owner-only (0600, in a 0700 directory). This
runs once at startup, before the IOLoop serves anything.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .config import ROOM_NAME_RE, Config, ConfigError, Namespace

log = logging.getLogger("gust.chat")
COOKIE_SECRET_FILE = "cookie_secret"
TOKEN_KEY_FILE = "chat_token_key"


class ChatSetupError(Exception):
    """A chat secret cannot be read or created; the message says which file and why."""


@dataclass(frozen=True)
class ChatSetup:
    config: Config  # the config the node runs with: the chat namespace and token key filled in
    cookie_secret: str
    token_key: str


def room_namespace(name: str) -> Namespace:
    """The options the chat needs: presence with join/leave, history with recovery, subscribe for users,
    publish only through the chat's own HTTP endpoint (which enforces the length and rate limits)."""
    return Namespace(
        name=name, presence=True, join_leave=True, force_push_join_leave=True,
        history_size=200, history_ttl=7 * 24 * 3600.0, force_recovery=True, force_positioning=True,
        allow_subscribe_for_client=True, allow_presence_for_subscriber=True, allow_history_for_subscriber=True,
        channel_regex=ROOM_NAME_RE.pattern,
    )


def _check_namespace(ns: Namespace) -> None:
    missing = [what for what, ok in (
        ("presence", ns.presence), ("join_leave", ns.join_leave), ("history_size/history_ttl", ns.history_enabled),
        ("force_recovery", ns.force_recovery or ns.allow_recovery),
        ("allow_subscribe_for_client", ns.allow_subscribe_for_client)) if not ok]
    if missing:
        raise ConfigError("chat.namespace", f"namespace {ns.name!r} is used by the chat and needs: {', '.join(missing)}"
                          " (or remove it and the chat adds one with the right options)")


def load_or_create_secret(path: Path) -> str:
    """The secret kept in `path`, created (random, owner-only) when the file does not exist yet."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text(encoding="ascii").strip()
            if len(value) < 32:
                raise ChatSetupError(f"{path} holds no usable secret (delete it to have a new one generated)") from None
            return value
        value = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(value + "\n")
        log.info("generated a new secret in %s", path)
        return value
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise ChatSetupError(f"cannot read or create {path}: {reason}") from None


def _with_namespace(config: Config) -> Config:
    name = config.chat.namespace
    existing = next((ns for ns in config.channel.namespaces if ns.name == name), None)
    if existing is not None:
        _check_namespace(existing)
        return config
    channel = dataclasses.replace(config.channel, namespaces=(*config.channel.namespaces, room_namespace(name)))
    return dataclasses.replace(config, channel=channel)


def _token_key(config: Config, data_dir: Path) -> tuple[Config, str]:
    token = config.client.token
    if token.hmac_secret_key:
        return config, token.hmac_secret_key
    if token.rsa_public_key or token.ecdsa_public_key or token.jwks_public_endpoint:
        raise ConfigError("chat.enabled", "the chat mints HS256 connection tokens: set client.token.hmac_secret_key "
                          "as well, or disable the chat")
    key = load_or_create_secret(data_dir / TOKEN_KEY_FILE)
    client = dataclasses.replace(config.client, token=dataclasses.replace(token, hmac_secret_key=key))
    return dataclasses.replace(config, client=client), key


def prepare_chat(config: Config) -> ChatSetup:
    data_dir = Path(config.data_dir)
    config = _with_namespace(config)
    config, token_key = _token_key(config, data_dir)
    cookie_secret = config.chat.cookie_secret or load_or_create_secret(data_dir / COOKIE_SECRET_FILE)
    return ChatSetup(config=config, cookie_secret=cookie_secret, token_key=token_key)
