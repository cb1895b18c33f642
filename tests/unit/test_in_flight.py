"""in_flight bookkeeping as a property: after any interleaving of attempts, outcomes, disables,
cooldowns and (repeated) releases through Exchange.release, with nothing running, every account's
in_flight is 0 -- and while attempts run, it equals the number of them holding the account."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from addons.upstream import Exchange
from auth.credentials import StaticKey
from auth.pool import AccountPool, AllCoolingDown, CooldownRules, NoUsableAccount, PoolAccount

KINDS = ["rate_limited", "transient", "auth", "quota", "bad_request", "suspended", "not_found"]

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(["m1", "m2"])),
        st.tuples(st.just("release"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("release_twice"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("fail"), st.integers(min_value=0, max_value=20), st.sampled_from(KINDS)),
        st.tuples(st.just("succeed"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("disable"), st.integers(min_value=0, max_value=2)),
        st.tuples(st.just("recover"), st.integers(min_value=0, max_value=2)),
        st.tuples(st.just("tick"), st.floats(min_value=0, max_value=4000)),
    ),
    max_size=60,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from(["round-robin", "least-recently-used", "fill-first"]))
def test_in_flight_returns_to_zero_after_any_sequence(ops: list[tuple], strategy: str) -> None:
    clock = Clock()
    members = [PoolAccount(f"a{i}", StaticKey("key-long-enough")) for i in range(3)]
    pool = AccountPool("p", members, strategy=strategy, rules=CooldownRules(), clock=clock)
    running: list[Exchange] = []
    for op in ops:
        name = op[0]
        if name == "acquire":
            try:
                member = pool.acquire(op[1])
            except (AllCoolingDown, NoUsableAccount):
                continue
            running.append(Exchange("p", op[1], None, None, pool, member, {}, False))  # type: ignore[arg-type]
        elif name in ("release", "release_twice", "fail", "succeed") and running:
            ex = running.pop(op[1] % len(running))
            if name == "fail":
                pool.report_failure(ex.member, ex.model, op[2], "boom")
            elif name == "succeed":
                pool.report_success(ex.member, ex.model)
            ex.release()
            if name == "release_twice":  # the normal path and the safety net both release
                ex.release()
        elif name == "disable":
            pool.disable(members[op[1]], "test")
        elif name == "recover":
            pool.recover(members[op[1]])
        elif name == "tick":
            clock.now += op[1]
        holding = Counter(ex.member.label for ex in running if not ex.released)
        assert {m.label: m.state.in_flight for m in members} == {m.label: holding[m.label] for m in members}
    for ex in running:
        ex.release()
    assert all(m.state.in_flight == 0 for m in members)
