"""Local request limits per account, checked before a request is sent upstream.

Why local: Qwen's free tier published 60 requests/min and 2,000/day per account, and going over
it upstream gets throttled or banned. Counting here lets the gateway answer a clean 429 with
Retry-After instead. Sliding windows: a request counts for exactly the window's length after it
was admitted. Counts live in memory (a restart forgets them).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from core.config import Provider

MINUTE = 60.0
DAY = 86_400.0


class SlidingWindow:
    """At most `limit` events in any `length` seconds."""

    __slots__ = ("_times", "length", "limit")

    def __init__(self, limit: int, length: float) -> None:
        if limit <= 0 or length <= 0:
            raise ValueError("limit and length must be positive")
        self.limit = limit
        self.length = length
        self._times: deque[float] = deque()

    def wait(self, now: float) -> float:
        """Seconds until one more event fits (0.0: it fits now)."""
        while self._times and self._times[0] <= now - self.length:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.length - now

    def add(self, now: float) -> None:
        self._times.append(now)

    def used(self, now: float) -> int:
        """Events inside the window now (read-only: for the dashboard)."""
        return sum(1 for t in self._times if t > now - self.length)


class RequestLimiter:
    """Per-account requests_per_minute / requests_per_day of one provider."""

    def __init__(
        self,
        per_minute: int | None = None,
        per_day: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.per_day = per_day
        self._clock = clock
        self._accounts: dict[str, list[SlidingWindow]] = {}

    def _windows(self, account: str) -> list[SlidingWindow]:
        windows = self._accounts.get(account)
        if windows is None:
            windows = []
            if self.per_minute:
                windows.append(SlidingWindow(self.per_minute, MINUTE))
            if self.per_day:
                windows.append(SlidingWindow(self.per_day, DAY))
            self._accounts[account] = windows
        return windows

    def acquire(self, account: str) -> float | None:
        """Counts one request for `account` and returns None, or, when a window is full, counts
        nothing and returns the seconds until the request would fit."""
        now = self._clock()
        windows = self._windows(account)
        wait = max((w.wait(now) for w in windows), default=0.0)
        if wait > 0:
            return wait
        for w in windows:
            w.add(now)
        return None


class ProviderLimits:
    """The limiters of every provider, built from its config on first use (rebuilt when the
    configured limits change), so the Upstream addon needs one call and no setup."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limiters: dict[str, tuple[tuple[int | None, int | None], RequestLimiter]] = {}

    def acquire(self, provider_id: str, provider: Provider, account: str) -> float | None:
        """None when the request may go (and it is counted); else seconds to wait."""
        limits = (provider.requests_per_minute, provider.requests_per_day)
        if limits == (None, None):
            return None
        known = self._limiters.get(provider_id)
        if known is None or known[0] != limits:
            known = (limits, RequestLimiter(*limits, clock=self._clock))
            self._limiters[provider_id] = known
        return known[1].acquire(account)

    def windows(self, provider_id: str, account: str) -> list[dict[str, float]]:
        """The account's request windows as {length, used, limit}: what the dashboard shows."""
        known = self._limiters.get(provider_id)
        if known is None:
            return []
        now = self._clock()
        return [{"length": w.length, "used": w.used(now), "limit": w.limit} for w in known[1]._windows(account)]

    def refusal(self, provider_id: str, provider: Provider, account: str) -> LimitRefusal | None:
        """acquire(), worded for the client: None when the request may go, else what to answer."""
        wait = self.acquire(provider_id, provider, account)
        if wait is None:
            return None
        message = limit_message(provider_id, account, provider, wait)
        return LimitRefusal(message, {"retry-after": retry_after_header(wait)})


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """A request stopped locally: the 429 message and its Retry-After header."""

    message: str
    headers: dict[str, str]


def retry_after_header(wait: float) -> str:
    """Retry-After in whole seconds, rounded up (a client retrying on time must fit)."""
    return str(max(1, math.ceil(wait)))


def limit_message(provider_id: str, account: str, provider: Provider, wait: float) -> str:
    """The 429 text for a request stopped locally; says which limit and when to retry."""
    limits = []
    if provider.requests_per_minute:
        limits.append(f"requests_per_minute={provider.requests_per_minute}")
    if provider.requests_per_day:
        limits.append(f"requests_per_day={provider.requests_per_day}")
    return (
        f"local request limit of {provider_id} account {account} reached ({', '.join(limits)}); "
        f"retry in {retry_after_header(wait)} s"
    )


# The gateway's one set of limiters (one gateway per process).
request_limits = ProviderLimits()
