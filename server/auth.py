"""JWT verification for connection and subscription tokens (HMAC keys for now).

Owns: `Claims`, `SubscriptionClaims`, `TokenVerifier`, `TokenExpired`, `TokenInvalid`.
Raises token errors only, never protocol errors. May import: config, PyJWT, orjson.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from .config import TokenConfig

HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]


class TokenError(Exception):
    """Base class of token problems. The message is for logs, never for clients."""


class TokenInvalid(TokenError):
    """Bad signature, malformed token, wrong claims: the client must not retry with it."""


class TokenExpired(TokenError):
    """The token's `exp` has passed: the client may fetch a new one."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a connection token says. `info` is raw JSON (or None); `expire_at` is unix seconds, 0 = never."""

    user: str
    expire_at: int = 0
    info: bytes | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    user: str
    channel: str
    client: str = ""
    expire_at: int = 0
    info: bytes | None = None


def _info(payload: dict[str, Any]) -> bytes | None:
    if payload.get("info") is not None:
        return orjson.dumps(payload["info"])
    b64 = payload.get("b64info")
    if b64 is None:
        return None
    if not isinstance(b64, str):
        raise TokenInvalid("b64info must be a string")
    try:
        decoded = base64.b64decode(b64, validate=True)
        orjson.loads(decoded)
    except (binascii.Error, orjson.JSONDecodeError):
        raise TokenInvalid("b64info must be base64 of JSON") from None
    return decoded


def _expire_at(payload: dict[str, Any]) -> int:
    value = payload.get("expire_at", payload.get("exp", 0))
    if value is None:
        return 0
    if type(value) not in (int, float):
        raise TokenInvalid("expire_at/exp must be a number")
    return int(value)


class TokenVerifier:
    """Verifies tokens against the configured keys."""

    def __init__(self, config: TokenConfig) -> None:
        self._config = config

    def decode(self, token: str) -> dict[str, Any]:
        """Verify signature and expiry; return the raw claims."""
        if not self._config.hmac_secret_key:
            raise TokenInvalid("no token key configured (client.token.hmac_secret_key)")
        try:
            payload = jwt.decode(
                token,
                self._config.hmac_secret_key,
                algorithms=HMAC_ALGORITHMS,
                options={"verify_aud": False, "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from None
        if not isinstance(payload, dict):
            raise TokenInvalid("token payload is not an object")
        return payload

    def verify_connection(self, token: str) -> Claims:
        payload = self.decode(token)
        user = payload.get("sub", "")
        if not isinstance(user, str):
            raise TokenInvalid("sub must be a string")
        if "channel" in payload:
            raise TokenInvalid("a connection token must not have a channel claim")
        return Claims(user=user, expire_at=_expire_at(payload), info=_info(payload))

    def verify_subscription(self, token: str) -> SubscriptionClaims:
        payload = self.decode(token)
        user, channel, client = payload.get("sub", ""), payload.get("channel"), payload.get("client", "")
        if not isinstance(channel, str) or not channel:
            raise TokenInvalid("a subscription token needs a channel claim")
        if not isinstance(user, str) or not isinstance(client, str):
            raise TokenInvalid("sub and client must be strings")
        return SubscriptionClaims(user, channel, client, _expire_at(payload), _info(payload))


def make_connection_token(secret: str, user: str, ttl: int = 0, info: Any = None, now: float | None = None) -> str:
    """An HS256 connection token for `user`, expiring after `ttl` seconds (0 = never)."""
    claims: dict[str, Any] = {"sub": user}
    if ttl > 0:
        claims["exp"] = int((now if now is not None else time.time()) + ttl)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
