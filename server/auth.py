"""JWT verification for connection and subscription tokens (Centrifugo's token model).

The token's `alg` header picks the key: HS* → `hmac_secret_key`, RS*/PS* → `rsa_public_key`, ES* →
`ecdsa_public_key`; with `jwks_public_endpoint` set, the key comes from the JWKS by `kid` instead and its type
must match `alg`. Only that one family of algorithms is accepted for that key, so `alg: none` and RS↔HS key
confusion cannot pass. `aud`/`iss` are checked when configured.

Owns: `Claims`, `SubscriptionClaims`, `SubOptions`, `TokenVerifier`, `TokenExpired`, `TokenInvalid`,
`KeysUnavailable`. Raises token errors only, never protocol errors. May import: config, jwks, PyJWT, orjson.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .config import Config, ConfigError, TokenConfig
from .jwks import JwksKeys, KeysUnavailable, TokenError, TokenInvalid

__all__ = [
    "Claims",
    "KeysUnavailable",
    "SubOptions",
    "SubscriptionClaims",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenVerifier",
    "build_verifiers",
    "lifetime_over",
    "make_connection_token",
]

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
OVERRIDES = ("presence", "join_leave", "force_push_join_leave", "force_positioning", "force_recovery")


class TokenExpired(TokenError):
    """The token's `exp` (or `expire_at`) has passed: the client may fetch a new one."""


@dataclass(frozen=True, slots=True)
class SubOptions:
    """Options of one server-side subscription from a connection token's `subs`, or of a subscription token."""

    info: bytes | None = None
    data: bytes | None = None
    override: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a connection token says. JSON fields are raw JSON bytes; `expire_at` is unix seconds, 0 = never."""

    user: str
    expire_at: int = 0
    info: bytes | None = None
    meta: bytes | None = None
    subs: dict[str, SubOptions] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    user: str
    channel: str
    client: str = ""
    expire_at: int = 0
    options: SubOptions = field(default_factory=SubOptions)


def _json_or_b64(payload: dict[str, Any], name: str) -> bytes | None:
    """`name` as raw JSON, or `b64<name>` decoded (it must hold JSON too, since pushes embed it raw)."""
    if payload.get(name) is not None:
        return orjson.dumps(payload[name])
    b64 = payload.get("b64" + name)
    if b64 is None:
        return None
    if not isinstance(b64, str):
        raise TokenInvalid(f"b64{name} must be a string")
    try:
        decoded = base64.b64decode(b64, validate=True)
        orjson.loads(decoded)
    except (binascii.Error, orjson.JSONDecodeError):
        raise TokenInvalid(f"b64{name} must be base64 of JSON") from None
    return decoded


def _expire_at(payload: dict[str, Any]) -> int:
    """`expire_at` when present (0 = never), else `exp`, else 0."""
    value = payload["expire_at"] if "expire_at" in payload else payload.get("exp", 0)
    if value is None:
        return 0
    if type(value) not in (int, float):
        raise TokenInvalid("expire_at/exp must be a number")
    return int(value)


def _override(value: Any) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TokenInvalid("override must be an object")
    out: dict[str, bool] = {}
    for name, item in value.items():
        flag = item.get("value") if isinstance(item, dict) else item
        if name not in OVERRIDES or not isinstance(flag, bool):
            raise TokenInvalid(f"override.{name}: expected one of {', '.join(OVERRIDES)} with {{\"value\": bool}}")
        out[name] = flag
    return out


def _sub_options(payload: dict[str, Any]) -> SubOptions:
    return SubOptions(_json_or_b64(payload, "info"), _json_or_b64(payload, "data"), _override(payload.get("override")))


def _server_subs(payload: dict[str, Any]) -> dict[str, SubOptions]:
    """Server-side subscriptions: `subs` when it is not empty (then `channels` is ignored, as in Centrifugo)."""
    channels, subs = payload.get("channels") or [], payload.get("subs") or {}
    if subs:
        channels = []
    if not isinstance(channels, list) or not all(isinstance(c, str) and c for c in channels):
        raise TokenInvalid("channels must be a list of channel names")
    if not isinstance(subs, dict) or not all(isinstance(v, dict) for v in subs.values()):
        raise TokenInvalid("subs must map channel names to objects")
    out = {channel: SubOptions() for channel in channels}
    for channel, options in subs.items():
        if not channel:
            raise TokenInvalid("subs: empty channel name")
        out[channel] = _sub_options(options)
    return out


def _load_public_key(pem: str, key: str, kind: type) -> Any:
    try:
        loaded = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(key, f"cannot load the PEM public key: {exc}") from None
    if not isinstance(loaded, kind):
        raise ConfigError(key, f"expected a {kind.__name__.removesuffix('PublicKey')} public key")
    return loaded


class TokenVerifier:
    """Verifies tokens against one `TokenConfig`'s keys. Bad keys in the config raise `ConfigError` here."""

    def __init__(self, config: TokenConfig, key_prefix: str = "client.token") -> None:
        self._config = config
        self._rsa = _load_public_key(config.rsa_public_key, f"{key_prefix}.rsa_public_key",
                                     rsa.RSAPublicKey) if config.rsa_public_key else None
        self._ec = _load_public_key(config.ecdsa_public_key, f"{key_prefix}.ecdsa_public_key",
                                    ec.EllipticCurvePublicKey) if config.ecdsa_public_key else None
        self._jwks = JwksKeys(config.jwks_public_endpoint) if config.jwks_public_endpoint else None

    async def _key(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenInvalid("token has no alg")
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenInvalid("token has no kid (keys come from a JWKS)")
            return await self._jwks.key(kid, alg), alg
        if alg in HMAC_ALGORITHMS and self._config.hmac_secret_key:
            return self._config.hmac_secret_key, alg
        if alg in RSA_ALGORITHMS and self._rsa is not None:
            return self._rsa, alg
        if alg in EC_ALGORITHMS and self._ec is not None:
            return self._ec, alg
        raise TokenInvalid(f"no key configured for algorithm {alg!r}")

    async def decode(self, token: str) -> dict[str, Any]:
        """Verify signature, `exp`, `nbf`, and `aud`/`iss` when configured; return the raw claims."""
        key, alg = await self._key(token)
        cfg = self._config
        try:
            payload = jwt.decode(
                token, key, algorithms=[alg],
                audience=cfg.audience or None, issuer=cfg.issuer or None,
                options={"verify_aud": bool(cfg.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from None
        if not isinstance(payload, dict):
            raise TokenInvalid("token payload is not an object")
        return payload

    def _user(self, payload: dict[str, Any]) -> str:
        user = payload.get(self._config.user_id_claim or "sub", "")
        if not isinstance(user, str):
            raise TokenInvalid("the user claim must be a string")
        return user

    async def verify_connection(self, token: str) -> Claims:
        payload = await self.decode(token)
        if "channel" in payload:
            raise TokenInvalid("a connection token must not have a channel claim")
        meta = payload.get("meta")
        claims = Claims(
            user=self._user(payload), expire_at=_expire_at(payload), info=_json_or_b64(payload, "info"),
            meta=orjson.dumps(meta) if meta is not None else None, subs=_server_subs(payload),
        )
        return claims

    async def verify_subscription(self, token: str) -> SubscriptionClaims:
        payload = await self.decode(token)
        channel, client = payload.get("channel"), payload.get("client", "")
        if not isinstance(channel, str) or not channel:
            raise TokenInvalid("a subscription token needs a channel claim")
        if not isinstance(client, str):
            raise TokenInvalid("client must be a string")
        claims = SubscriptionClaims(self._user(payload), channel, client, _expire_at(payload), _sub_options(payload))
        return claims


def build_verifiers(config: Config) -> tuple[TokenVerifier, TokenVerifier]:
    """(connection, subscription) verifiers; the second is the first unless `client.subscription_token` is
    enabled. Raises `ConfigError` for keys that cannot be loaded."""
    connection = TokenVerifier(config.client.token)
    if not config.client.subscription_token.enabled:
        return connection, connection
    return connection, TokenVerifier(config.client.subscription_token, "client.subscription_token")


def lifetime_over(expire_at: int, now: float | None = None) -> bool:
    """True when a token's `expire_at` lifetime has passed (its `exp` may still be valid: Centrifuge answers
    error 110 "expired" then, not 109)."""
    return bool(expire_at) and expire_at <= (now if now is not None else time.time())


def make_connection_token(secret: str, user: str, ttl: int = 0, info: Any = None, now: float | None = None) -> str:
    """An HS256 connection token for `user`, expiring after `ttl` seconds (0 = never)."""
    claims: dict[str, Any] = {"sub": user}
    if ttl > 0:
        claims["exp"] = int((now if now is not None else time.time()) + ttl)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
