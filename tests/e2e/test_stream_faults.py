"""Streams that fail midway, through the real gateway with the official SDKs.

Every client dialect x (same-dialect upstream, translated upstream) x fault injected at the fake:
- before the first byte (reset before headers) the request fails over to the next account, or is
  answered with an HTTP error in the caller's dialect when there is none;
- after it (cut, stall past read_timeout, the upstream's own error event) the client's stream ends
  with its dialect's error event and a clean end: the SDK raises an API error, never a connection
  error, and nothing hangs.
Gemini has no same-dialect API-key upstream among the fakes, so its two cells are both translated.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY
from tests.drivers import DRIVERS, MODEL
from tests.e2e.test_prompt_log import wait_record
from tests.fakes import brain
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

READ_TIMEOUT = 1.5
KEEPALIVE = 0.25

CELLS = [
    ("openai_chat", "openai-custom"),
    ("openai_chat", "claude-custom"),
    ("openai_responses", "openaiResponses-custom"),
    ("openai_responses", "claude-custom"),
    ("claude", "claude-custom"),
    ("claude", "openai-custom"),
    ("gemini", "claude-custom"),
    ("gemini", "openai-custom"),
]
CELL_IDS = [f"{c}<-{p}" for c, p in CELLS]

MID_STREAM = {
    "cut": Fault(kind="reset_mid_stream", after_events=8),
    "stall": Fault(kind="stall_mid_stream", after_events=8, seconds=READ_TIMEOUT + 2.5),
    "error_frame": Fault(kind="error_mid_stream", after_events=8),
}


def _providers(fakes, accounts: int) -> dict:
    def accts(key: str) -> list[dict]:
        return [{"label": f"a{i}", "api_key": key} for i in range(accounts)]

    common = {"read_timeout": READ_TIMEOUT, "connect_timeout": 2}
    return {
        "openai-custom": {"base_url": f"{fakes.openai.url}/v1", "accounts": accts(OPENAI_KEY), **common},
        "claude-custom": {"base_url": fakes.claude.url, "accounts": accts(CLAUDE_KEY), **common},
        "openaiResponses-custom": {
            "base_url": f"{fakes.responses.url}/v1",
            "accounts": accts(RESPONSES_KEY),
            **common,
        },
    }


def _config(fakes, accounts: int, attempts: int) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": _providers(fakes, accounts),
        "stream_keepalive": KEEPALIVE,
        # No cooldown: every test starts with usable accounts whatever the one before did.
        "cooldown": {"transient": 0},
        "retry": {"max_attempts": attempts, "max_wait": 1},
        "prompt_log": {"mode": "file", "dir": "logs"},
    }


@pytest.fixture(scope="module")
def single(fakes, tmp_path_factory) -> Iterator[GatewayProcess]:
    """One account per provider and one attempt: a failure before the first byte has nowhere to go."""
    gw = start_gateway(tmp_path_factory.mktemp("faults-single"), _config(fakes, accounts=1, attempts=1))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def double(fakes, tmp_path_factory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("faults-double"), _config(fakes, accounts=2, attempts=3))
    yield gw
    gw.stop()


def _fake_of(fakes, provider: str):
    return {"openai-custom": fakes.openai, "claude-custom": fakes.claude, "openaiResponses-custom": fakes.responses}[
        provider
    ]


def _api_error_types(dialect: str) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(what counts as an API error, the connection errors that must not be it) per SDK."""
    if dialect == "claude":
        return (anthropic.APIError,), (anthropic.APIConnectionError,)
    if dialect == "gemini":
        return (genai_errors.APIError,), (httpx2.HTTPError,)
    return (openai.APIError,), (openai.APIConnectionError,)


def _expect_api_error(dialect: str, call: Callable[[], object], bound: float) -> BaseException:
    api, connection = _api_error_types(dialect)
    started = time.monotonic()
    with pytest.raises(api) as info:
        call()
    assert not isinstance(info.value, connection), repr(info.value)
    assert time.monotonic() - started < bound, "the stream was not ended in time"
    return info.value


@pytest.mark.parametrize("fault", list(MID_STREAM), ids=list(MID_STREAM))
@pytest.mark.parametrize(("dialect", "provider"), CELLS, ids=CELL_IDS)
def test_mid_stream_failure_is_an_in_band_api_error(single, fakes, dialect, provider, fault):
    marker = uuid.uuid4().hex[:10]
    _fake_of(fakes, provider).faults.append(MID_STREAM[fault])
    driver = DRIVERS[dialect](single.url, provider)
    err = _expect_api_error(dialect, lambda: driver.text(f"long please {marker}", stream=True), bound=10)
    expected = {"cut": "stream broke", "stall": "read_timeout", "error_frame": ""}[fault]
    assert expected in str(err) and str(err)
    record = wait_record(Path(single.config_path.parent, "logs"), marker)
    # The prompt log keeps what reached the client before the failure.
    assert record["status"] == ("stream_error" if fault == "error_frame" else "upstream_cut")
    assert record["finish_reason"] is None
    text = record["messages"][-1]["content"] or ""
    assert text and brain.LONG_TEXT.startswith(text) and len(text) < len(brain.LONG_TEXT)
    if fault == "stall":
        assert "read_timeout" in record["error"]


@pytest.mark.parametrize(("dialect", "provider"), CELLS, ids=CELL_IDS)
def test_reset_before_headers_with_one_account_is_a_dialect_error(single, fakes, dialect, provider):
    _fake_of(fakes, provider).faults.append(Fault(kind="reset_before_headers"))
    driver = DRIVERS[dialect](single.url, provider)
    err = _expect_api_error(dialect, lambda: driver.text("hi there", stream=True), bound=10)
    assert getattr(err, "status_code", getattr(err, "code", None)) == 502


@pytest.mark.parametrize(("dialect", "provider"), CELLS, ids=CELL_IDS)
def test_reset_before_headers_fails_over_to_the_second_account(double, fakes, dialect, provider):
    fake = _fake_of(fakes, provider)
    fake.faults.append(Fault(kind="reset_before_headers"))
    driver = DRIVERS[dialect](double.url, provider)
    assert driver.text("hi there", stream=True) == "Hello! You said: hi there"
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("dialect", "provider"), CELLS, ids=CELL_IDS)
def test_keepalive_during_a_pause_is_harmless_to_the_sdk(single, fakes, dialect, provider):
    """A thinking pause shorter than read_timeout: keep-alives go out and the SDK reads the answer."""
    _fake_of(fakes, provider).faults.append(Fault(kind="stall_mid_stream", after_events=3, seconds=1.0))
    driver = DRIVERS[dialect](single.url, provider)
    assert driver.text("long please", stream=True) == brain.LONG_TEXT


KEEPALIVE_BYTES = {
    "openai_chat": b": keep-alive\n\n",
    "claude": b'event: ping\ndata: {"type":"ping"}\n\n',
    "gemini": b"data: ",  # checked below: blank lines between events
}


@pytest.mark.parametrize("dialect", ["openai_chat", "claude"])
def test_keepalive_bytes_reach_the_client_during_a_pause(single, fakes, dialect):
    fakes.claude.faults.append(Fault(kind="stall_mid_stream", after_events=3, seconds=1.0))
    path = "/claude-custom/v1/chat/completions" if dialect == "openai_chat" else "/claude-custom/v1/messages"
    body = {"model": MODEL, "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": "hi there"}]}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01"}
    with httpx2.stream("POST", single.url + path, json=body, headers=headers, timeout=10) as r:
        assert r.status_code == 200
        received = r.read()
    # Claude's upstream sends one ping itself; the gateway's come on top during the 1 s pause.
    assert received.count(KEEPALIVE_BYTES[dialect]) >= 2


def test_stall_cools_and_counts_against_the_account(single, fakes):
    fakes.openai.faults.append(Fault(kind="stall_mid_stream", after_events=2, seconds=READ_TIMEOUT + 2))
    before = _errors(single, "openai-custom")
    driver = DRIVERS["openai_chat"](single.url, "openai-custom")
    _expect_api_error("openai_chat", lambda: driver.text("long please", stream=True), bound=READ_TIMEOUT + 2)
    assert _errors(single, "openai-custom") == before + 1


def _errors(gw: GatewayProcess, provider: str) -> int:
    data = httpx2.get(f"{gw.url}/pool", headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=10).json()
    return sum(a["errors"] for a in data["providers"][provider])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_is_stable_over_faulted_streams(single, fakes):
    """200 streams cut, errored or reset: the gateway's RSS does not keep growing."""
    kinds = [Fault(kind="reset_mid_stream", after_events=2), Fault(kind="error_mid_stream", after_events=2)]
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi there"}]}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    url = f"{single.url}/openai-custom/v1/chat/completions"

    def run(n: int) -> None:
        with httpx2.Client(timeout=10) as client:
            for i in range(n):
                fakes.openai.faults.append(kinds[i % 2] if i % 5 else Fault(kind="reset_before_headers"))
                r = client.post(url, json=body, headers=headers)
                assert r.status_code in (200, 502)
                if r.status_code == 200:
                    assert b'"error"' in r.content

    run(50)  # warm up: caches, pools, allocator arenas
    before = _rss_kib(single.proc.pid)
    run(200)
    after = _rss_kib(single.proc.pid)
    assert after - before < 8 * 1024, f"RSS grew {after - before} KiB over 200 faulted streams"
    fakes.openai.faults.clear()
    # and the gateway still serves normally
    assert (
        json.loads(httpx2.post(url, json={**body, "stream": False}, headers=headers, timeout=10).content)["choices"][0][
            "message"
        ]["content"]
        == "Hello! You said: hi there"
    )
