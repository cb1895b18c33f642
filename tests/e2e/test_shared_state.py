"""Two real gateway processes sharing one real redis-server (`state: {backend: redis}`).

A cooldown one process applied is seen (and honoured) by the other; usage is aggregated; one
refresh of a rotating token in the whole cluster; Redis killed mid-test (both keep answering,
/health says degraded) and back (state resynchronised); session affinity across turns and
processes, and re-binding after a cooldown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import CLIENT_KEY, OPENAI_KEY
from tests.e2e.test_qwen import PROVIDER as QWEN
from tests.e2e.test_qwen import qwen_config, write_creds
from tests.fakes.qwen import FakeQwen
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway
from tests.redis_server import RedisServer

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi there"}]}


def cluster_config(fakes, redis_url: str, **extra: Any) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": {
            "openai-custom": {
                "base_url": f"{fakes.openai.url}/v1",
                "accounts": [{"label": "a", "api_key": OPENAI_KEY}, {"label": "b", "api_key": OPENAI_KEY}],
            }
        },
        "retry": {"max_attempts": 3, "max_wait": 2},
        "state": {"backend": "redis", "redis_url": redis_url, "timeout": 2.0},
        **extra,
    }


def start_two(tmp_path: Path, config: dict) -> list[GatewayProcess]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda name: start_gateway(tmp_path / name, config), ["gw1", "gw2"]))


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushall()
    yield redis_server
    if redis_server.proc is None:  # a test stopped it
        redis_server.start()


@pytest.fixture
def pair(fakes, redis, tmp_path) -> Iterator[list[GatewayProcess]]:
    gws = start_two(tmp_path, cluster_config(fakes, redis.url))
    yield gws
    for gw in gws:
        gw.stop()


def chat(gw: GatewayProcess, body: dict | None = None, headers: dict | None = None) -> httpx2.Response:
    return httpx2.post(
        f"{gw.url}/v1/chat/completions", headers={**AUTH, **(headers or {})}, json=body or CHAT, timeout=30
    )


def pool_of(gw: GatewayProcess, provider: str = "openai-custom") -> dict[str, dict]:
    data = httpx2.get(f"{gw.url}/pool", headers=AUTH, timeout=10).json()
    return {a["label"]: a for a in data["providers"][provider]}


def health(gw: GatewayProcess) -> dict:
    return httpx2.get(f"{gw.url}/health", timeout=10).json()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def cooling(gw: GatewayProcess) -> set[str]:
    return {label for label, a in pool_of(gw).items() if a["state"] == "cooling"}


def test_health_names_the_shared_state(pair):
    for gw in pair:
        assert wait_for(lambda gw=gw: health(gw)["state"] == "ok")
        assert health(gw)["state_backend"] == "redis"


def test_a_cooldown_in_one_process_is_honoured_by_the_other(pair, fakes):
    gw1, gw2 = pair
    fakes.openai.faults.append(
        Fault(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": "60"})
    )
    assert chat(gw1).status_code == 200  # one account got the 429, the other answered
    [cooled] = cooling(gw1)
    assert wait_for(lambda: cooling(gw2) == {cooled})
    assert pool_of(gw2)[cooled]["last_error"].startswith("rate_limited")
    before = pool_of(gw2)[cooled]["requests"]
    for _ in range(4):
        assert chat(gw2, {**CHAT, "messages": [{"role": "user", "content": f"q{_}"}]}).status_code == 200
    assert pool_of(gw2)[cooled]["requests"] == before  # gw2 never sent the cooled account


def test_usage_on_either_process_counts_both(pair, fakes):
    gw1, gw2 = pair
    for i in range(3):
        assert chat(gw1, {**CHAT, "messages": [{"role": "user", "content": f"u{i}"}]}).status_code == 200
    for i in range(2):
        assert chat(gw2, {**CHAT, "messages": [{"role": "user", "content": f"v{i}"}]}).status_code == 200

    def total(gw: GatewayProcess) -> dict:
        return httpx2.get(f"{gw.url}/usage", headers=AUTH, timeout=10).json()

    assert wait_for(lambda: total(gw1)["total"]["requests"] == 5)
    one, two = total(gw1), total(gw2)
    assert one["scope"] == two["scope"] == "cluster"
    assert one["total"] == two["total"] and one["total"]["output_tokens"] > 0


def test_a_conversation_stays_on_one_account_across_turns_and_processes(pair, fakes):
    gw1 = pair[0]
    served: list[str] = []
    for turn in range(6):
        gw = pair[turn % 2]
        before = {label: a["requests"] for label, a in pool_of(gw).items()}
        r = chat(gw, {**CHAT, "stream": turn % 3 == 0}, headers={"x-session-id": "conv-1"})  # streams bind too
        assert r.status_code == 200
        after = pool_of(gw)
        [label] = [lb for lb, a in after.items() if a["requests"] != before[lb]]
        served.append(label)
    assert len(set(served)) == 1, served
    # Without a session the round-robin spreads the requests over both accounts.
    spread = set()
    for i in range(4):
        before = {label: a["requests"] for label, a in pool_of(gw1).items()}
        chat(gw1, {**CHAT, "messages": [{"role": "user", "content": f"other conversation {i}"}]})
        spread |= {lb for lb, a in pool_of(gw1).items() if a["requests"] != before[lb]}
    assert spread == {"a", "b"}


def test_a_conversation_is_rebound_after_its_account_cools(pair, fakes):
    gw1, gw2 = pair

    def turn(gw: GatewayProcess) -> str:
        before = {label: a["requests"] for label, a in pool_of(gw).items()}
        assert chat(gw, headers={"x-session-id": "conv-2"}).status_code == 200
        return next(lb for lb, a in pool_of(gw).items() if a["requests"] != before[lb] and a["state"] != "cooling")

    first = turn(gw1)
    # Its account answers 429 for 1 s: the next turn (other process) fails over and re-binds.
    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "1"}))
    second = turn(gw2)
    assert second != first
    time.sleep(1.5)  # the first account is ready again; the conversation stays where it went
    assert [turn(gw1), turn(gw2), turn(gw1)] == [second] * 3


def test_redis_down_both_keep_answering_and_resync_when_back(pair, fakes, redis):
    gw1, gw2 = pair
    assert chat(gw1).status_code == 200
    redis.stop()
    started = time.monotonic()
    for i in range(6):
        r = chat(pair[i % 2], {**CHAT, "messages": [{"role": "user", "content": f"down {i}"}]})
        assert r.status_code == 200
    assert time.monotonic() - started < 10
    assert wait_for(lambda: health(gw1)["state"] == "degraded" and health(gw2)["state"] == "degraded")
    assert health(gw1)["status"] == "ok"
    # A cooldown while Redis is away stays local ...
    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "120"}))
    assert chat(gw1, {**CHAT, "messages": [{"role": "user", "content": "cool one"}]}).status_code == 200
    [cooled] = cooling(gw1)
    assert cooling(gw2) == set()
    # ... and reaches the other process once Redis is back (empty: it had no persistence).
    redis.start()
    assert wait_for(lambda: health(gw1)["state"] == "ok" and health(gw2)["state"] == "ok", timeout=15)
    assert wait_for(lambda: cooling(gw2) == {cooled}, timeout=15)
    assert "unreachable" in gw1.log() and "is back; resynchronising" in gw1.log()


def test_one_refresh_in_the_cluster_for_twenty_requests_on_an_expired_rotating_token(redis, tmp_path):
    """Each process has its own copy of the token file (as on two machines): only the Redis lock
    and the published token keep the second process from spending the rotated refresh token."""
    with FakeQwen() as fake:
        data = fake.token_file(lifetime=-60)
        fake.refresh_delay = 0.3
        gws: list[GatewayProcess] = []
        try:

            def start(name: str) -> GatewayProcess:
                creds = write_creds(tmp_path / f"{name}-creds.json", data)
                config = qwen_config(fake, creds, base_url=f"{fake.url}/v1")
                config["state"] = {"backend": "redis", "redis_url": redis.url}
                return start_gateway(tmp_path / name, config)

            with ThreadPoolExecutor(2) as pool:
                gws = list(pool.map(start, ["gw1", "gw2"]))
            body = {"model": "coder-model", "messages": [{"role": "user", "content": "hi"}]}
            with ThreadPoolExecutor(20) as pool:
                answers = list(
                    pool.map(
                        lambda i: httpx2.post(
                            f"{gws[i % 2].url}/{QWEN}/v1/chat/completions", headers=AUTH, json=body, timeout=60
                        ),
                        range(20),
                    )
                )
        finally:
            for gw in gws:
                gw.stop()
        assert [a.status_code for a in answers] == [200] * 20
        assert fake.refresh_grants == 1
        assert len(fake.oauth_requests("refresh_token")) == 1
        for name in ("gw1", "gw2"):  # both files hold the one rotated, still valid refresh token
            saved = json.loads((tmp_path / f"{name}-creds.json").read_text())
            assert saved["refresh_token"] != data["refresh_token"]
            assert fake.refresh_token_valid(saved["refresh_token"])
        for gw in gws:
            assert saved["refresh_token"] not in gw.log() and saved["access_token"] not in gw.log()


def test_the_redis_password_never_reaches_the_log_or_health(fakes, redis, tmp_path):
    url = f"redis://:hunter2-secret@127.0.0.1:{redis.port}/0"
    redis.client().config_set("requirepass", "hunter2-secret")
    try:
        gw = start_gateway(tmp_path / "gw", cluster_config(fakes, url))
        try:
            assert chat(gw).status_code == 200
            assert wait_for(lambda: health(gw)["state"] == "ok")
            assert "hunter2-secret" not in json.dumps(health(gw))
        finally:
            gw.stop()
        assert "hunter2-secret" not in gw.log() and "***@127.0.0.1" in gw.log()
    finally:
        redis.client(password="hunter2-secret").config_set("requirepass", "")


def test_a_key_limit_is_exact_across_both_processes_under_concurrency(fakes, redis, tmp_path):
    alice = "sk-alice-limited-42"
    config = cluster_config(fakes, redis.url)
    config["api_keys"] = [CLIENT_KEY, {"key": alice, "name": "alice", "requests_per_day": 7}]
    gws = start_two(tmp_path, config)
    try:

        def ask(i: int) -> int:
            body = {**CHAT, "messages": [{"role": "user", "content": f"limit {i}"}]}
            return httpx2.post(
                f"{gws[i % 2].url}/v1/chat/completions",
                headers={"authorization": f"Bearer {alice}"},
                json=body,
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(ask, range(20)))
    finally:
        for gw in gws:
            gw.stop()
    assert sorted(statuses) == [200] * 7 + [429] * 13
    day = [k for k in redis.client().keys("aiclient:count:alice|requests|day|*")]
    assert len(day) == 1 and redis.client().get(day[0]) == "7"  # refused requests count nothing
