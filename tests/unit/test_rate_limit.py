"""Local per-account request limits: sliding windows with an injected clock."""

from __future__ import annotations

import pytest

from auth.rate_limit import DAY, MINUTE, ProviderLimits, RequestLimiter, SlidingWindow, retry_after_header
from core.config import Provider


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_window_admits_up_to_the_limit_then_says_when_the_oldest_leaves():
    w = SlidingWindow(2, 60)
    assert w.wait(0) == 0
    w.add(0)
    w.add(10)
    assert w.wait(30) == 30  # the event at 0 leaves at 60
    assert w.wait(60) == 0
    w.add(60)
    assert w.wait(65) == pytest.approx(5)  # now the event at 10 is the oldest


def test_window_rejects_nonsense():
    with pytest.raises(ValueError):
        SlidingWindow(0, 60)


def test_per_minute_limit_refuses_the_third_request_and_counts_only_admitted_ones():
    clock = Clock()
    limiter = RequestLimiter(per_minute=2, clock=clock)
    assert limiter.acquire("a") is None
    clock.now += 1
    assert limiter.acquire("a") is None
    clock.now += 1
    assert limiter.acquire("a") == pytest.approx(58)
    # refused requests do not count: the slot opens exactly when the first request is a minute old
    clock.now = 1000.0 + MINUTE
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == pytest.approx(1)


def test_accounts_are_limited_separately():
    limiter = RequestLimiter(per_minute=1, clock=Clock())
    assert limiter.acquire("a") is None
    assert limiter.acquire("b") is None
    assert limiter.acquire("a") is not None


def test_per_day_limit_holds_after_the_minute_window_clears():
    clock = Clock()
    limiter = RequestLimiter(per_minute=60, per_day=3, clock=clock)
    for _ in range(3):
        assert limiter.acquire("a") is None
        clock.now += 120
    wait = limiter.acquire("a")
    assert wait == pytest.approx(DAY - 360)
    clock.now = 1000.0 + DAY
    assert limiter.acquire("a") is None


def test_no_limits_never_refuses():
    limiter = RequestLimiter(clock=Clock())
    assert all(limiter.acquire("a") is None for _ in range(1000))


def test_provider_limits_follow_the_config():
    clock = Clock()
    limits = ProviderLimits(clock=clock)
    unlimited = Provider()
    assert all(limits.acquire("p", unlimited, "a") is None for _ in range(100))
    one = Provider(requests_per_minute=1)
    assert limits.acquire("p", one, "a") is None
    refusal = limits.refusal("p", one, "a")
    assert refusal is not None
    assert refusal.headers == {"retry-after": "60"}
    assert "requests_per_minute=1" in refusal.message and "account a" in refusal.message
    # a changed limit starts over with new windows
    assert limits.acquire("p", Provider(requests_per_minute=5), "a") is None


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")])
def test_retry_after_rounds_up_to_whole_seconds(wait, header):
    assert retry_after_header(wait) == header
