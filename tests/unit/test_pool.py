"""The account pool's rules with an injected clock: no test sleeps for a cooldown."""

from __future__ import annotations

import pytest

from auth.credentials import StaticKey
from auth.pool import AccountPool, AllCoolingDown, CooldownRules, NoUsableAccount, PoolAccount


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 3, strategy="round-robin", clock=None, unusable: dict[int, str] | None = None) -> AccountPool:
    members = [PoolAccount(f"a{i}", StaticKey("key-long-enough"), (unusable or {}).get(i)) for i in range(n)]
    return AccountPool("p", members, strategy=strategy, rules=CooldownRules(), clock=clock or Clock())


def take(p: AccountPool, model="m", exclude=frozenset()) -> str:
    acct = p.acquire(model, exclude)
    p.release(acct)
    return acct.label


def test_strategies():
    rr = pool()
    assert [take(rr) for _ in range(4)] == ["a0", "a1", "a2", "a0"]
    ff = pool(strategy="fill-first")
    assert [take(ff) for _ in range(3)] == ["a0", "a0", "a0"]
    clock = Clock()
    lru = pool(strategy="least-recently-used", clock=clock)
    order = []
    for _ in range(4):
        clock.now += 1
        order.append(take(lru))
    assert order == ["a0", "a1", "a2", "a0"]


def test_rate_limit_cools_only_that_model_and_honours_retry_after():
    clock = Clock()
    p = pool(1, clock=clock)
    acct = p.acquire("m")
    p.report_failure(acct, "m", "rate_limited", "slow down", retry_after=2.0)
    with pytest.raises(AllCoolingDown) as e:
        p.acquire("m")
    assert e.value.retry_after == 2.0
    assert take(p, "other-model") == "a0"
    clock.now += 2.01
    assert take(p, "m") == "a0"


def test_rate_limit_without_delay_backs_off_exponentially_to_the_cap():
    clock = Clock()
    p = pool(1, clock=clock)
    acct = p.accounts[0]
    delays = []
    for _ in range(13):
        p.report_failure(acct, "m", "rate_limited", "429")
        delays.append(acct.state.cooldown_until["m"] - clock.now)
    assert delays[:4] == [1, 2, 4, 8]
    assert delays[-1] == 1800
    p.report_success(acct, "m")
    p.report_failure(acct, "m", "rate_limited", "429")
    assert acct.state.cooldown_until["m"] - clock.now == 1


def test_transient_cools_every_model_for_a_minute():
    clock = Clock()
    p = pool(2, clock=clock)
    acct = p.acquire("m")
    p.report_failure(acct, "m", "transient", "502")
    assert [take(p, "x") for _ in range(2)] == ["a1", "a1"]
    clock.now += 60.01
    assert {take(p, "x") for _ in range(2)} == {"a0", "a1"}


def test_request_faults_do_not_penalise_the_account():
    p = pool(1)
    acct = p.acquire("m")
    for kind in ("bad_request", "context_too_long", "not_found"):
        p.report_failure(acct, "m", kind, "bad")
    assert acct.state.errors == 0
    assert take(p) == "a0"


def test_auth_and_suspension_disable_with_the_reason():
    p = pool(2)
    p.report_failure(p.accounts[0], "m", "auth", "invalid token")
    p.report_failure(p.accounts[1], "m", "suspended", "account suspended")
    with pytest.raises(NoUsableAccount) as e:
        p.acquire("m")
    assert "a0: login expired or key refused: invalid token" in str(e.value)
    assert "a1: account suspended" in str(e.value)
    p.recover(p.accounts[1])
    assert take(p) == "a1"


def test_quota_until_reset_then_back():
    clock = Clock()
    p = pool(1, clock=clock)
    p.report_failure(p.accounts[0], "m", "quota_exhausted", "monthly", until=clock.now + 3600)
    with pytest.raises(AllCoolingDown) as e:
        p.acquire("m")
    assert e.value.retry_after == 3600
    clock.now += 3601
    assert take(p) == "a0"


def test_exclude_and_unusable_accounts():
    p = pool(3, unusable={2: "credentials file missing"})
    assert take(p, exclude={"a0"}) == "a1"
    with pytest.raises(NoUsableAccount) as e:
        pool(1, unusable={0: "credentials file missing"}).acquire("m")
    assert "a0: credentials file missing" in str(e.value)
    assert [row["state"] for row in p.status()] == ["ready", "ready", "unusable"]


def test_windowed_error_count_forgets_old_errors():
    clock = Clock()
    p = pool(1, clock=clock)
    acct = p.accounts[0]
    p.report_failure(acct, "m", "transient", "x")
    clock.now += 601
    p.report_failure(acct, "m", "transient", "y")
    assert len(acct.state.recent_errors) == 1
    assert acct.state.errors == 2


def test_snapshot_restore_keeps_live_cooldowns_only():
    clock = Clock()
    p = pool(2, clock=clock)
    p.report_failure(p.accounts[0], "m", "rate_limited", "x", retry_after=100)
    p.report_failure(p.accounts[1], "m", "rate_limited", "x", retry_after=5)
    p.report_failure(p.accounts[1], "m", "suspended", "locked")
    saved = p.snapshot()
    clock.now += 10
    fresh = pool(2, clock=clock)
    fresh.restore(saved)
    assert set(fresh.accounts[0].state.cooldown_until) == {"m"}
    assert fresh.accounts[1].state.cooldown_until == {}
    assert fresh.accounts[1].state.disabled == "locked"
    with pytest.raises(AllCoolingDown) as e:
        fresh.acquire("m")
    assert e.value.retry_after == pytest.approx(90)


def test_in_flight_counts():
    p = pool(1)
    a = p.acquire("m")
    b = p.acquire("m")
    assert a.state.in_flight == 2
    p.release(a)
    p.release(b)
    p.release(b)
    assert a.state.in_flight == 0
