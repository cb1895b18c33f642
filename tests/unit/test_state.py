"""The state backends against a real redis-server: exact windowed counters under concurrency,
usage increments, account records over pub/sub, affinity bindings, the refresh lock and its
fence, and what happens when Redis is unreachable (bounded, short-circuited, degraded)."""

from __future__ import annotations

import asyncio
import time

import pytest

from auth.pool import AccountPool, PoolAccount
from auth.state import LocalState, RedisState, redact_url
from tests.redis_server import RedisServer, free_port


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    redis_server.client().flushall()
    return redis_server


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@10.0.0.2:6380/1", "redis://***@10.0.0.2:6380/1"),
        ("rediss://user:s3cret@cache.example:6379/0", "rediss://***@cache.example:6379/0"),
    ],
)
def test_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_windowed_counter_is_exact_across_two_clients_under_concurrency(server: RedisServer) -> None:
    async def main() -> list[int]:
        a, b = RedisState(server.url), RedisState(server.url)
        end = time.time() + 60
        try:
            values = await asyncio.gather(*(s.incr("alice|requests|day|0", 1, end) for s in [a, b] * 100))
            return [v for v in values if v is not None] + [await a.get("alice|requests|day|0") or 0]
        finally:
            await a.close()
            await b.close()

    values = run(main())
    assert sorted(values[:-1]) == list(range(1, 201))  # every increment saw its own, distinct value
    assert values[-1] == 200
    assert 0 < server.client().ttl("aiclient:count:alice|requests|day|0") <= 61


def test_usage_increments_add_up(server: RedisServer) -> None:
    async def main() -> dict[str, int] | None:
        state = RedisState(server.url)
        try:
            await asyncio.gather(*(state.add_usage({"f": 2, "g": 1}) for _ in range(10)))
            return await state.usage()
        finally:
            await state.close()

    assert run(main()) == {"f": 20, "g": 10}


def test_account_changes_reach_the_other_process_mirror(server: RedisServer) -> None:
    async def main() -> tuple[dict, dict | None]:
        a, b = RedisState(server.url), RedisState(server.url)
        pool_b = AccountPool("p", [PoolAccount("x", None), PoolAccount("y", None)])
        b.on_account(lambda provider, label, record: pool_b.apply_shared(label, record))
        await b.start()
        await asyncio.sleep(0.3)  # subscribed
        pool_a = AccountPool("p", [PoolAccount("x", None), PoolAccount("y", None)])
        pool_a.report_failure(pool_a.accounts[0], "m", "rate_limited", "slow down", retry_after=30)
        await a.put_account("p", "x", pool_a.shared_record(pool_a.accounts[0]))
        for _ in range(50):
            if pool_b.accounts[0].state.cooldown_until:
                break
            await asyncio.sleep(0.05)
        try:
            return pool_b.status()[0], await a.accounts()
        finally:
            await a.close()
            await b.close()

    status, stored = run(main())
    assert status["state"] == "cooling" and status["last_error"] == "rate_limited: slow down"
    assert stored is not None and "x" in stored["p"]


def test_an_older_record_does_not_undo_a_newer_one() -> None:
    pool = AccountPool("p", [PoolAccount("x", None)])
    acct = pool.accounts[0]
    pool.disable(acct, "refused")
    newer = pool.shared_record(acct)
    pool.recover(acct)
    assert not pool.apply_shared("x", newer)  # ours is newer
    newer["changed_at"] = acct.state.changed_at + 1
    assert pool.apply_shared("x", newer)
    assert pool.status()[0]["state"] == "disabled"


def test_affinity_binding_is_shared_and_expires(server: RedisServer) -> None:
    async def main() -> tuple[str | None, str | None, int]:
        a, b = RedisState(server.url), RedisState(server.url)
        try:
            assert await a.bind("s1", "acct-1", ttl=5)
            assert not await a.bind("s1", "acct-1", ttl=5)  # still fresh: no write
            seen = await b.bound("s1")
            await a.bind("s2", "acct-2", ttl=0.2)
            await asyncio.sleep(0.35)
            gone = await RedisState(server.url).bound("s2")
            return seen, gone, server.client().pttl("aiclient:affinity:s1")
        finally:
            await a.close()
            await b.close()

    seen, gone, ttl = run(main())
    assert seen == "acct-1" and gone is None and 0 < ttl <= 5000


def test_local_affinity_expires() -> None:
    now = [1000.0]
    state = LocalState(clock=lambda: now[0])

    async def main() -> list[str | None]:
        await state.bind("s", "a", ttl=10)
        first = await state.bound("s")
        now[0] += 11
        return [first, await state.bound("s")]

    assert run(main()) == ["a", None]


def test_refresh_lock_one_holder_at_a_time_and_the_published_credential(server: RedisServer) -> None:
    async def main() -> tuple[list[str], list[object]]:
        states = [RedisState(server.url), RedisState(server.url)]
        order: list[str] = []
        seen: list[object] = []

        async def holder(i: int) -> None:
            async with states[i % 2].refresh_lock("acct") as fence:
                order.append(f"in{i}")
                seen.append(await fence.published())
                assert await fence.held()
                await asyncio.sleep(0.05)
                await fence.publish({"token": f"t{i}"}, ttl=60)
                order.append(f"out{i}")

        try:
            await asyncio.gather(*(holder(i) for i in range(4)))
        finally:
            for s in states:
                await s.close()
        return order, seen

    order, seen = run(main())
    assert all(order[i][:2] == "in" and order[i + 1] == "out" + order[i][2:] for i in range(0, 8, 2))
    assert seen[0] is None and all(isinstance(s, dict) for s in seen[1:])


def test_unreachable_redis_answers_fallbacks_fast_and_says_degraded() -> None:
    async def main() -> tuple[list[object], float, bool, dict]:
        state = RedisState(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.2)
        started = time.monotonic()
        results = [
            await state.incr("k", 1, time.time() + 60),
            await state.get("k"),
            await state.put_account("p", "x", {}),
            await state.add_usage({"f": 1}),
            await state.bound("s"),
        ]
        elapsed = time.monotonic() - started
        started = time.monotonic()
        # A refresh keeps trying for its lock a little (a blip must not mean two refreshes), then goes on.
        async with state.refresh_lock("acct") as fence:
            results.append(await fence.held())
        lock_wait = time.monotonic() - started
        try:
            return results, (elapsed, lock_wait), state.degraded, state.describe()
        finally:
            await state.close()

    results, (elapsed, lock_wait), degraded, described = run(main())
    assert results == [None, None, False, False, None, True]
    assert elapsed < 1.5  # the first call fails within its timeout, the others short-circuit
    assert 2.5 < lock_wait < 6
    assert degraded and described["state"] == "degraded" and "pw" not in described["url"]


def test_a_code_assist_project_one_process_discovered_serves_the_other(server: RedisServer, tmp_path) -> None:
    from auth.code_assist import ProjectDiscovery, ProjectStore
    from tests.fakes.code_assist import FakeCodeAssist

    async def main(fake: FakeCodeAssist, token: str) -> tuple[str, str, int, int]:
        first, second = RedisState(server.url), RedisState(server.url)
        try:
            ProjectStore.shared = first
            found = await ProjectDiscovery(fake.url, "acct", ProjectStore(tmp_path / "a"), poll_interval=0.01)(token)
            calls = len(fake.requests)
            ProjectStore.shared = second  # another process, its own state_dir
            reused = await ProjectDiscovery(fake.url, "acct", ProjectStore(tmp_path / "b"), poll_interval=0.01)(token)
            return found, reused, calls, len(fake.requests)
        finally:
            ProjectStore.shared = None
            await first.close()
            await second.close()

    with FakeCodeAssist() as fake:
        token = fake.issue_login()["access_token"]
        found, reused, calls, after = run(main(fake, token))
    assert found == reused == fake.project_id
    assert calls > 0 and after == calls  # the second process asked Code Assist nothing
    assert ProjectStore(tmp_path / "b").get("acct") == fake.project_id  # and keeps it in its own file


def test_counts_no_decision_waits_for_are_batched_into_one_send(server: RedisServer) -> None:
    from auth.client_keys import LocalCounters
    from auth.state import SharedCounters

    async def main() -> tuple[int, int, int | None]:
        state = RedisState(server.url)
        counters = SharedCounters(lambda: state, LocalCounters())
        try:
            end = time.time() + 60
            for _ in range(50):
                await counters.count("bob|tokens|day|0", 10, end)
            before = server.client().get("aiclient:count:bob|tokens|day|0")
            await asyncio.sleep(0.3)  # one batch later
            return (
                int(before or 0),
                await counters.get("bob|tokens|day|0"),
                await counters.local.get("bob|tokens|day|0"),
            )
        finally:
            await state.close()

    before, after, local = run(main())
    assert (before, after, local) == (0, 500, 0)
