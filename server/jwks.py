"""Public keys from a JWKS endpoint, picked by `kid`, fetched with Tornado's non-blocking HTTP client.

Keys are cached for an hour. An unknown `kid` triggers one refetch (at most one every `MIN_REFETCH` seconds,
so random `kid`s cannot make us hammer the endpoint); concurrent misses share one fetch. A failed fetch raises
`KeysUnavailable` (the client sees a temporary internal error and retries); it never lets a token through.

Owns: `JwksKeys`, `TokenError`, `TokenInvalid`, `KeysUnavailable`. May import: PyJWT, tornado, orjson.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import orjson
from tornado.httpclient import AsyncHTTPClient

log = logging.getLogger("gust.jwks")

CACHE_TTL = 3600.0
MIN_REFETCH = 5.0
FETCH_TIMEOUT = 1.0
FETCH_ATTEMPTS = 2
MAX_JWKS_BYTES = 1 << 20
# Which `alg` values a key of each JWK `kty` may verify: never an HMAC algorithm.
ALGORITHMS_BY_KTY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}


class TokenError(Exception):
    """Base class of token problems. The message is for logs, never for clients."""


class TokenInvalid(TokenError):
    """Bad signature, malformed token, wrong claims, unknown key: the client must not retry with it."""


class KeysUnavailable(Exception):
    """The JWKS endpoint could not be read: nothing can be verified right now (a temporary condition)."""


class JwksKeys:
    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -CACHE_TTL
        self._fetching: asyncio.Future[None] | None = None
        self._client: AsyncHTTPClient | None = None

    async def key(self, kid: str, alg: str) -> Any:
        """The verification key for `kid`, usable with `alg`; `TokenInvalid` when there is no such key."""
        now = time.monotonic()
        stale = now - self._fetched_at > CACHE_TTL
        if stale or (kid not in self._keys and now - self._fetched_at > MIN_REFETCH):
            await self._refresh()
        jwk = self._keys.get(kid)
        if jwk is None:
            raise TokenInvalid(f"no key with kid {kid!r} in the JWKS")
        if alg not in ALGORITHMS_BY_KTY.get(jwk.key_type or "", ()):
            raise TokenInvalid(f"key {kid!r} ({jwk.key_type}) cannot verify {alg}")
        return jwk.key

    async def _refresh(self) -> None:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        try:
            await asyncio.shield(fetching)
        finally:
            if fetching.done() and self._fetching is fetching:
                self._fetching = None

    async def _fetch(self) -> None:
        if self._client is None:  # its own client: a body limit of its own, created on the IOLoop
            self._client = AsyncHTTPClient(force_instance=True, max_body_size=MAX_JWKS_BYTES)
        client = self._client
        error = ""
        for _ in range(FETCH_ATTEMPTS):
            try:
                response = await client.fetch(
                    self.url, connect_timeout=FETCH_TIMEOUT, request_timeout=FETCH_TIMEOUT,
                    headers={"Accept": "application/json"},
                )
                self._keys = parse_jwks(response.body)
                self._fetched_at = time.monotonic()
                return
            except Exception as exc:  # any failure to fetch or parse: nothing gets verified with it
                error = str(exc) or type(exc).__name__
        log.warning("cannot fetch JWKS from %s: %s", self.url, error)
        raise KeysUnavailable(f"JWKS endpoint unavailable: {error}")


def parse_jwks(body: bytes) -> dict[str, jwt.PyJWK]:
    """Keys by `kid` from a JWKS document; keys without `kid`, symmetric keys and unusable keys are skipped."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS must be an object with a keys list")
    keys: dict[str, jwt.PyJWK] = {}
    for item in document["keys"]:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
            continue
        if item.get("kty") not in ALGORITHMS_BY_KTY or item.get("use", "sig") != "sig":
            continue
        try:
            keys[item["kid"]] = jwt.PyJWK(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            log.warning("skipping JWKS key %r: %s", item["kid"], exc)
    return keys
