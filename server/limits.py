"""Rate and count limits that protect the node from one client or from a connection storm.

Owns: `TokenBucket`; `CommandLimiter` (per connection: error 111, then close 3013 — `client.command_rate_limit`);
`ConnectionGate` (per node: `client.connection_limit` open WebSocket connections and `client.connection_rate_limit`
new ones per second, both refused with HTTP 503 before the upgrade). Pure bookkeeping, no I/O.
May import: config.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from .config import ClientConfig, CommandRateLimitConfig

log = logging.getLogger("gust.limits")
REFUSAL_LOG_EVERY = 10.0  # seconds between two warnings about refused upgrades


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; `take` spends one when there is one."""

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._stamp = clock()

    def level(self) -> float:
        """The tokens available now (refilled up to `burst`)."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self.tokens

    def take(self) -> bool:
        if self.level() >= 1:
            self.tokens -= 1
            return True
        return False

    def take_or_wait(self) -> float:
        """Spend a token: 0.0 when there was one, else the seconds until there is one."""
        if self.take():
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # error 111 "too many requests" (temporary)
    CLOSE = "close"  # close 3013 "too many requests"


class CommandLimiter:
    """One connection's command budget: over the bucket a command is refused; `close_after` refusals with no
    accepted command between them mean the client keeps hammering, and it is closed."""

    __slots__ = ("_bucket", "_close_after", "refused_in_a_row")

    def __init__(self, config: CommandRateLimitConfig) -> None:
        self._bucket = TokenBucket(config.rate, config.burst) if config.rate > 0 else None
        self._close_after = config.close_after
        self.refused_in_a_row = 0

    def check(self) -> Verdict:
        if self._bucket is None or self._bucket.take():
            self.refused_in_a_row = 0
            return Verdict.ALLOW
        self.refused_in_a_row += 1
        return Verdict.CLOSE if self.refused_in_a_row >= self._close_after else Verdict.REFUSE


class ConnectionGate:
    """Admission of new WebSocket connections on this node, checked before the upgrade."""

    def __init__(self, config: ClientConfig) -> None:
        self.limit = config.connection_limit
        self._rate = TokenBucket(config.connection_rate_limit, config.connection_rate_limit) \
            if config.connection_rate_limit > 0 else None
        self.open = 0
        self._logged_at = -REFUSAL_LOG_EVERY

    def refusal(self) -> str | None:
        """None to admit one more connection, else why not: "connection_limit" or "connection_rate_limit"."""
        if self.limit and self.open >= self.limit:
            return self._refuse("connection_limit", f"{self.open} connections open, limit {self.limit}")
        if self._rate is not None and not self._rate.take():
            return self._refuse("connection_rate_limit", f"more than {self._rate.rate:g} new connections per second")
        return None

    def _refuse(self, reason: str, detail: str) -> str:
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            self._logged_at = now
            log.warning("refusing WebSocket upgrades with 503: %s (%s)", reason, detail)
        return reason

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open = max(0, self.open - 1)
