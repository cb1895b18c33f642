"""Pools, retries and failover through the real gateway, with faults injected at the fakes.

Two accounts share the fake OpenAI upstream (same key, different labels) so a scripted fault
hits whichever account the round-robin picks first; /pool shows what happened to each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi there"}]}


def failover_config(fakes) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": {
            "openai-custom": {
                "base_url": f"{fakes.openai.url}/v1",
                "accounts": [{"label": "a", "api_key": OPENAI_KEY}, {"label": "b", "api_key": OPENAI_KEY}],
            },
            "claude-custom": {"base_url": fakes.claude.url, "accounts": [{"label": "c", "api_key": CLAUDE_KEY}]},
        },
        "fallback": {"providers": {"openai-custom": ["claude-custom"]}},
        "retry": {"max_attempts": 3, "max_wait": 5},
    }


@pytest.fixture
def gw(fakes, tmp_path) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path, failover_config(fakes))
    yield gateway
    gateway.stop()


def pool_of(gw: GatewayProcess) -> dict[str, dict]:
    data = httpx2.get(f"{gw.url}/pool", headers=AUTH, timeout=30).json()
    return {p: {a["label"]: a for a in accts} for p, accts in data["providers"].items()}


def chat(gw: GatewayProcess, stream: bool = False) -> httpx2.Response:
    return httpx2.post(f"{gw.url}/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": stream}, timeout=30)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after": "30"}),
        Fault(status=500),
        Fault(status=503),
        Fault(kind="reset_before_headers"),
    ],
    ids=["429", "500", "503", "reset"],
)
def test_failed_account_hands_over_to_the_next(gw, fakes, fault):
    fakes.openai.faults.append(fault)
    r = chat(gw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello! You said: hi there"
    assert len(fakes.openai.requests) == 2
    accounts = pool_of(gw)["openai-custom"]
    failed = [a for a in accounts.values() if a["errors"]]
    assert len(failed) == 1 and failed[0]["state"] == "cooling"
    if fault.status == 429:
        assert 25 < failed[0]["cooldown_seconds"]["gpt-x"] <= 30  # Retry-After honoured, for that model
        assert "slow down" in failed[0]["last_error"]
    # The cooled account is skipped: the next request goes straight to the other one.
    fakes.openai.requests.clear()
    assert chat(gw).status_code == 200
    assert len(fakes.openai.requests) == 1


def test_stream_refused_before_its_body_fails_over_as_a_valid_stream(gw, fakes):
    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "20"}))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    stream = client.chat.completions.create(**CHAT, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello! You said: hi there"
    assert len(fakes.openai.requests) == 2


def test_all_accounts_failing_falls_back_to_the_next_provider(gw, fakes):
    fakes.openai.faults.extend([Fault(status=500), Fault(status=502)])
    r = chat(gw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello! You said: hi there"
    assert len(fakes.openai.requests) == 2
    assert [q.json["model"] for q in fakes.claude.requests] == ["gpt-x"]


def test_every_account_cooling_is_429_with_retry_after(fakes, tmp_path):
    config = failover_config(fakes)
    config["fallback"] = {}
    gw = start_gateway(tmp_path, config)
    try:
        fakes.openai.faults.extend(
            [Fault(status=429, headers={"retry-after": "40"}), Fault(status=429, headers={"retry-after": "90"})]
        )
        first = chat(gw)
        assert first.status_code == 429  # both accounts tried, the last upstream answer kept
        fakes.openai.requests.clear()
        r = chat(gw)
        assert r.status_code == 429
        assert 35 <= int(r.headers["retry-after"]) <= 40
        body = r.json()["error"]
        assert body["code"] == "model_cooldown" and "cooling down" in body["message"]
        assert fakes.openai.requests == []  # answered without bothering the upstream
    finally:
        gw.stop()


def test_request_faults_are_not_retried_and_not_held_against_the_account(gw, fakes):
    fakes.openai.faults.append(Fault(status=400, body={"error": {"message": "bad schema", "type": "x"}}))
    r = chat(gw)
    assert r.status_code == 400 and "bad schema" in r.json()["error"]["message"]
    assert len(fakes.openai.requests) == 1
    assert all(a["errors"] == 0 for a in pool_of(gw)["openai-custom"].values())


def test_upstream_cut_mid_stream_ends_the_client_stream(gw, fakes):
    """Bytes already went out: no failover; the client's stream ends with an in-band error event
    and a clean end of the body, and the account cools."""
    fakes.openai.faults.append(Fault(kind="reset_mid_stream", after_events=3))
    with httpx2.stream(
        "POST", f"{gw.url}/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True}, timeout=10
    ) as r:
        assert r.status_code == 200
        received = r.read()  # a broken body would raise here
    events = [e for e in received.split(b"\n\n") if e]
    assert received.startswith(b"data: ")
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2].removeprefix(b"data: "))["error"]["type"] == "server_error"
    assert len(fakes.openai.requests) == 1
    failed = [a for a in pool_of(gw)["openai-custom"].values() if a["errors"]]
    assert len(failed) == 1 and failed[0]["state"] == "cooling"


def test_fifty_concurrent_clients_with_half_the_accounts_failing(gw, fakes):
    """Every request is answered (success or the right error), none lost, none hung."""
    fakes.openai.faults.extend([Fault(status=500) for _ in range(10)])

    def one(i: int) -> int:
        body = {**CHAT, "messages": [{"role": "user", "content": f"client {i}"}], "stream": i % 2 == 0}
        with httpx2.Client(timeout=30) as c:
            r = c.post(f"{gw.url}/v1/chat/completions", headers=AUTH, json=body)
            if r.status_code == 200 and not body["stream"]:
                assert r.json()["choices"][0]["message"]["content"] == f"Hello! You said: client {i}"
            return r.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert len(statuses) == 50
    assert set(statuses) <= {200, 429, 500, 502}
    assert statuses.count(200) >= 40


def test_cooldowns_survive_a_restart(fakes, tmp_path):
    config = failover_config(fakes)
    gw = start_gateway(tmp_path, config)
    try:
        fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "600"}))
        assert chat(gw).status_code == 200
        cooled = [label for label, a in pool_of(gw)["openai-custom"].items() if a["state"] == "cooling"]
        assert len(cooled) == 1
    finally:
        gw.stop()
    assert json.loads((tmp_path / "state" / "pool.json").read_text())["openai-custom"][cooled[0]]["cooldown_until"]
    gw = start_gateway(tmp_path, config)
    try:
        accounts = pool_of(gw)["openai-custom"]
        assert accounts[cooled[0]]["state"] == "cooling"
        assert accounts[cooled[0]]["cooldown_seconds"]["gpt-x"] > 500
    finally:
        gw.stop()


def test_pool_needs_the_client_key_and_shows_no_secret(gw):
    assert httpx2.get(f"{gw.url}/pool", timeout=30).status_code == 401
    text = httpx2.get(f"{gw.url}/pool", headers=AUTH, timeout=30).text
    assert OPENAI_KEY not in text and CLAUDE_KEY not in text and CLIENT_KEY not in text


def test_a_key_echoed_by_the_upstream_reaches_neither_client_nor_log(gw, fakes):
    echo = {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}", "type": "invalid_request_error"}}
    fakes.openai.faults.append(Fault(status=400, body=echo))
    r = chat(gw)
    assert r.status_code == 400
    assert OPENAI_KEY not in r.text and "[REDACTED]" in r.text
    assert OPENAI_KEY not in gw.log()


def test_health_check_recovers_a_cooling_account(fakes, tmp_path):
    config = failover_config(fakes)
    config["providers"]["openai-custom"]["health_check"] = {"interval": 1, "model": "probe-model"}
    config["cooldown"] = {"transient": 600}
    gw = start_gateway(tmp_path, config)
    try:
        fakes.openai.faults.append(Fault(status=500))
        assert chat(gw).status_code == 200
        cooling = [label for label, a in pool_of(gw)["openai-custom"].items() if a["state"] == "cooling"]
        assert len(cooling) == 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pool_of(gw)["openai-custom"][cooling[0]]["state"] != "ready":
            time.sleep(0.3)
        assert pool_of(gw)["openai-custom"][cooling[0]]["state"] == "ready"
        assert any(r.json and r.json.get("model") == "probe-model" for r in fakes.openai.requests)
    finally:
        gw.stop()
