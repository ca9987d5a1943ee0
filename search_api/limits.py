"""In-process read rate limits per caller (the `limits` library, moving windows): a burst and a sustained rate."""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from promptdex.errors import QuotaExceeded
from promptdex.settings import ApiSettings


@dataclass(frozen=True)
class Allowance:
    """What the RateLimit-* headers of an allowed request say: the tightest of the limits."""

    limit: int
    remaining: int
    reset: int  # seconds

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


class RateLimits:
    """Request rates per caller key (a user, or a client address for anonymous calls), and sign-in attempts.

    In-process: each API replica counts its own callers, so N replicas allow N times the rate; generation
    quotas, which must hold across replicas, are counted from the jobs table instead.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._reads: list[tuple[str, RateLimitItem]] = [
            ("rate_burst", RateLimitItemPerSecond(settings.rate_burst)),
            ("rate_sustained", RateLimitItemPerMinute(settings.rate_sustained)),
        ]
        self._login = RateLimitItemPerMinute(settings.login_attempts)

    def _check(self, items: list[tuple[str, RateLimitItem]], key: str, what: str) -> Allowance:
        tightest: Allowance | None = None
        for name, item in items:
            stats = self._limiter.get_window_stats(item, key)
            reset = max(1, int(stats.reset_time - time.time() + 0.999))
            if not self._limiter.hit(item, key):
                per = "second" if item.GRANULARITY.name == "second" else "minute"
                raise QuotaExceeded(
                    f"{name}: more than {item.amount} {what} per {per} (PROMPTDEX_API__{name.upper()}); "
                    f"try again in {reset} s", retry_after=reset, limit=item.amount, remaining=0)
            remaining = max(0, stats.remaining - 1)
            if tightest is None or remaining < tightest.remaining:
                tightest = Allowance(item.amount, remaining, reset)
        if tightest is None:
            raise ValueError("no limits configured")
        return tightest

    def request(self, key: str) -> Allowance:
        """Count one API request of `key`; QuotaExceeded over the burst or the sustained rate."""
        return self._check(self._reads, f"req:{key}", "requests")

    def login_attempt(self, address: str) -> None:
        self._check([("login_attempts", self._login)], f"login:{address}", "sign-in attempts")
