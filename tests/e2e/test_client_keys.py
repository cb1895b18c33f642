"""Client keys with a policy, end to end: a real `mitmdump -s run.py`, the official SDKs, the fakes.

Every refusal comes in the caller's own dialect, with the right status (401/403/429) and
Retry-After, and nothing reaches an upstream.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import yaml
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.conftest import CLIENT_KEY, Fakes, api_key_providers
from tests.fakes.server import Fault
from tests.gateway import REPO, GatewayProcess, start_gateway

DIALECTS = ("openai_chat", "openai_responses", "claude", "gemini")

GPT_ONLY = {"key": "k-gpt-only-7c1e", "name": "gpt-only", "models": ["gpt-*"], "providers": ["openai-custom"]}
EXPIRED = {"key": "k-expired-5d2a", "name": "old", "expires_at": "2020-01-01T00:00:00Z"}
DAILY = {"key": "k-daily-91ab", "name": "daily", "requests_per_day": 1}
PER_MINUTE = {"key": "k-minute-3f0c", "name": "minute", "requests_per_minute": 2}
TOKENS = {"key": "k-tokens-44d1", "name": "tokens", "tokens_per_day": 1}
OA_ONLY = {"key": "k-oa-only-0b7e", "name": "oa-only", "providers": ["openai-custom"]}
CUT = {"key": "k-cut-stream-8e2b", "name": "cut", "tokens_per_day": 1}


def policy_config(fakes: Fakes) -> dict[str, Any]:
    providers = api_key_providers(fakes)
    providers["openai-custom"]["models"] = ["gpt-4o", "gpt-4.1", "o3"]
    providers["claude-custom"]["models"] = ["claude-sonnet-4-5"]
    return {
        "api_keys": [CLIENT_KEY, GPT_ONLY, EXPIRED, DAILY, PER_MINUTE, TOKENS, OA_ONLY, CUT],
        "default_provider": "openai-custom",
        "providers": providers,
        "models": {"gpt-fast": "openai-custom:gpt-4.1", "sonnet": "claude-custom:claude-sonnet-4-5"},
        "fallback": {"providers": {"openai-custom": ["claude-custom"]}},
        "cooldown": {"transient": 0},
    }


@pytest.fixture(scope="module")
def gw(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("client-keys"), policy_config(fakes))
    yield gateway
    gateway.stop()


# -- the four SDKs ------------------------------------------------------------------------------


def ask(dialect: str, url: str, key: str, model: str, *, stream: bool = False, prefix: str = "") -> str:
    """One text request through the dialect's official SDK; returns the answer's text."""
    base = url + prefix
    if dialect == "openai_chat":
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        if stream:
            chunks = client.chat.completions.create(model=model, messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return client.chat.completions.create(model=model, messages=messages).choices[0].message.content or ""
    if dialect == "openai_responses":
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        if stream:
            events = client.responses.create(model=model, input="hi", stream=True)
            return "".join(e.delta for e in events if e.type == "response.output_text.delta")
        return client.responses.create(model=model, input="hi").output_text
    if dialect == "claude":
        claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        if stream:
            with claude.messages.stream(model=model, max_tokens=64, messages=messages) as s:
                return "".join(s.text_stream)
        return claude.messages.create(model=model, max_tokens=64, messages=messages).content[0].text
    gemini = genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=base, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    if stream:
        return "".join(c.text or "" for c in gemini.models.generate_content_stream(model=model, contents="hi"))
    return gemini.models.generate_content(model=model, contents="hi").text or ""


def refused(dialect: str, url: str, key: str, model: str, **kw: Any) -> tuple[int, dict, Any]:
    """The SDK's error for a refused request: (status, headers, body)."""
    try:
        ask(dialect, url, key, model, **kw)
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        return e.status_code, dict(e.response.headers), e.response.json()
    except genai_errors.APIError as e:
        assert e.response is not None
        return e.code, dict(e.response.headers), json.loads(e.response.text)
    raise AssertionError(f"{dialect}: the request was not refused")


def error_of(dialect: str, body: Any) -> tuple[str, str]:
    """(type or status, message) of an error body in the dialect's own shape."""
    if dialect == "claude":
        assert body["type"] == "error"
        return body["error"]["type"], body["error"]["message"]
    if dialect == "gemini":
        return body["error"]["status"], body["error"]["message"]
    return body["error"]["type"], body["error"]["message"]


EXPECTED_TYPE = {
    401: {"claude": "authentication_error", "gemini": "UNAUTHENTICATED", "openai": "authentication_error"},
    403: {"claude": "permission_error", "gemini": "PERMISSION_DENIED", "openai": "permission_error"},
    429: {"claude": "rate_limit_error", "gemini": "RESOURCE_EXHAUSTED", "openai": "rate_limit_error"},
}


def assert_refusal(dialect: str, got: tuple[int, dict, Any], status: int, message: str) -> dict:
    code, headers, body = got
    kind, text = error_of(dialect, body)
    assert code == status, (dialect, body)
    assert kind == EXPECTED_TYPE[status][dialect if dialect in ("claude", "gemini") else "openai"], body
    assert message in text, text
    return headers


def seconds_to_midnight() -> float:
    now = time.time()
    return 86_400 - now % 86_400


# -- allowlists -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_model_outside_the_allowlist_is_403_and_never_sent(gw, fakes, dialect):
    got = refused(dialect, gw.url, GPT_ONLY["key"], "claude-sonnet-4-5")
    assert_refusal(dialect, got, 403, "client key 'gpt-only' may not use model 'claude-sonnet-4-5' (allowed: gpt-*)")
    assert fakes.request_count() == 0
    # The same key is served for a model it may use.
    assert ask(dialect, gw.url, GPT_ONLY["key"], "gpt-4o") == "Hello! You said: hi"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_provider_outside_the_allowlist_is_403_also_by_prefix_or_alias(gw, fakes, dialect):
    got = refused(dialect, gw.url, GPT_ONLY["key"], "gpt-4o", prefix="/claude-custom")
    assert_refusal(dialect, got, 403, "may not use provider 'claude-custom' (allowed: openai-custom)")
    got = refused(dialect, gw.url, OA_ONLY["key"], "sonnet")  # an alias to claude-custom
    assert_refusal(dialect, got, 403, "client key 'oa-only' may not use provider 'claude-custom'")
    assert fakes.request_count() == 0


def test_a_fallback_outside_the_allowlist_is_skipped(gw, fakes):
    # openai-custom fails; the configured fallback is claude-custom, which oa-only may not use.
    fakes.openai.faults.extend(Fault(status=500) for _ in range(3))
    got = refused("openai_chat", gw.url, OA_ONLY["key"], "gpt-4o")
    assert got[0] == 500
    assert fakes.claude.requests == [] and len(fakes.openai.requests) == 3
    # Control: an unrestricted key does fall back to claude-custom.
    fakes.openai.faults.clear()
    fakes.openai.faults.append(Fault(status=500))
    assert ask("openai_chat", gw.url, CLIENT_KEY, "gpt-4o") == "Hello! You said: hi"
    assert [r.json["model"] for r in fakes.claude.requests] == ["gpt-4o"]


# -- expiry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_expired_key_is_401_saying_so(gw, fakes, dialect):
    got = refused(dialect, gw.url, EXPIRED["key"], "gpt-4o")
    assert_refusal(dialect, got, 401, "client key 'old' expired at 2020-01-01T00:00:00Z")
    assert EXPIRED["key"] not in json.dumps(got[2])
    assert fakes.request_count() == 0


# -- limits -------------------------------------------------------------------------------------


def test_requests_per_day_is_429_with_seconds_to_utc_midnight(gw, fakes):
    assert ask("openai_chat", gw.url, DAILY["key"], "gpt-4o") == "Hello! You said: hi"
    fakes.openai.requests.clear()
    for dialect in DIALECTS:
        got = refused(dialect, gw.url, DAILY["key"], "gpt-4o")
        headers = assert_refusal(dialect, got, 429, "client key 'daily' reached requests_per_day=1")
        assert abs(int(headers["retry-after"]) - math.ceil(seconds_to_midnight())) <= 2, headers
    assert fakes.request_count() == 0


def test_requests_per_minute_is_429_with_seconds_to_the_next_minute(gw, fakes):
    if 60 - time.time() % 60 < 8:  # keep the three requests inside one UTC minute
        time.sleep(60 - time.time() % 60 + 0.2)
    for _ in range(2):
        ask("claude", gw.url, PER_MINUTE["key"], "gpt-4o")
    got = refused("claude", gw.url, PER_MINUTE["key"], "gpt-4o")
    headers = assert_refusal("claude", got, 429, "reached requests_per_minute=2")
    assert abs(int(headers["retry-after"]) - math.ceil(60 - time.time() % 60)) <= 1
    assert len(fakes.openai.requests) == 2


def _usage(url: str, key: str) -> dict:
    r = httpx2.get(f"{url}/usage", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_streamed_tokens_count_and_a_spent_budget_is_429(gw, fakes):
    assert ask("claude", gw.url, TOKENS["key"], "gpt-4o", stream=True) == "Hello! You said: hi"
    deadline = time.monotonic() + 5
    while not _usage(gw.url, TOKENS["key"])["total"]["output_tokens"] and time.monotonic() < deadline:
        time.sleep(0.05)
    usage = _usage(gw.url, TOKENS["key"])
    assert usage["total"]["input_tokens"] > 0 and usage["total"]["output_tokens"] > 0
    fakes.openai.requests.clear()
    for dialect in DIALECTS:
        got = refused(dialect, gw.url, TOKENS["key"], "gpt-4o", stream=True)
        headers = assert_refusal(dialect, got, 429, "client key 'tokens' has used its tokens_per_day=1")
        assert abs(int(headers["retry-after"]) - math.ceil(seconds_to_midnight())) <= 2
    assert fakes.request_count() == 0


def test_a_cut_stream_counts_what_was_sent(gw, fakes):
    fakes.openai.faults.append(Fault(kind="reset_mid_stream", after_events=3))
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {CUT['key']}"}
    with httpx2.stream("POST", f"{gw.url}/v1/chat/completions", headers=headers, json=body, timeout=10) as r:
        assert r.status_code == 200
        received = r.read()  # the cut ends the stream in-band, with a clean end of the body
    assert b'"error"' in received and received.endswith(b"data: [DONE]\n\n")
    deadline = time.monotonic() + 5
    while not _usage(gw.url, CUT["key"])["total"]["input_tokens"] and time.monotonic() < deadline:
        time.sleep(0.05)
    fakes.openai.requests.clear()
    got = refused("openai_chat", gw.url, CUT["key"], "gpt-4o")
    assert_refusal("openai_chat", got, 429, "client key 'cut' has used its tokens_per_day=1")
    assert fakes.request_count() == 0


# -- visibility ---------------------------------------------------------------------------------


def test_usage_shows_a_key_only_its_own_rows_and_admins_everything(gw, fakes):
    ask("openai_chat", gw.url, GPT_ONLY["key"], "gpt-4.1")
    ask("openai_chat", gw.url, CLIENT_KEY, "gpt-4.1")
    mine = _usage(gw.url, GPT_ONLY["key"])
    assert mine["client_key_name"] == "gpt-only" and mine["admin"] is False
    assert mine["rows"] and {r["client_key_name"] for r in mine["rows"]} == {"gpt-only"}
    assert mine["total"]["requests"] == sum(r["requests"] for r in mine["rows"])
    everything = _usage(gw.url, CLIENT_KEY)
    assert everything["admin"] is True
    assert {"gpt-only", everything["client_key_name"]} <= {r["client_key_name"] for r in everything["rows"]}
    assert everything["client_key_name"].startswith("key-") and CLIENT_KEY not in json.dumps(everything)


def test_pool_shows_a_key_only_the_providers_it_may_use(gw):
    def providers(key: str) -> set[str]:
        r = httpx2.get(f"{gw.url}/pool", headers={"authorization": f"Bearer {key}"}, timeout=10)
        return set(r.json()["providers"])

    assert providers(GPT_ONLY["key"]) == {"openai-custom"}
    assert providers(CLIENT_KEY) == {"openai-custom", "claude-custom", "openaiResponses-custom"}


def test_model_lists_hold_only_what_the_key_may_use(gw):
    listed = [m.id for m in openai.OpenAI(base_url=f"{gw.url}/v1", api_key=GPT_ONLY["key"]).models.list()]
    assert listed == ["gpt-4o", "gpt-4.1", "gpt-fast"]
    r = httpx2.get(f"{gw.url}/v1beta/models", headers={"x-goog-api-key": GPT_ONLY["key"]}, timeout=10)
    assert [m["name"] for m in r.json()["models"]] == ["models/gpt-4o", "models/gpt-4.1", "models/gpt-fast"]
    everything = [m.id for m in openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY).models.list()]
    assert {"o3", "claude-sonnet-4-5", "sonnet"} <= set(everything)


# -- keys_file: live reload, the keys command, counters across a restart --------------------------


def keys_cmd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auth", "keys", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_of(url: str, key: str, model: str = "gpt-4o") -> int:
    r = httpx2.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    return r.status_code


def wait_for_status(url: str, key: str, expected: int, model: str = "gpt-4o", timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    got = status_of(url, key, model)
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        got = status_of(url, key, model)
    assert got == expected


def write_keys(path: Path, entries: list) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(entries), encoding="utf-8")
    tmp.replace(path)


def test_keys_file_is_reloaded_live_and_a_broken_edit_keeps_the_old_keys(fakes, tmp_path):
    keys_file = tmp_path / "keys.yaml"
    ann = {"key": "k-ann-6a1f", "name": "ann"}
    write_keys(keys_file, [ann])
    config = {**policy_config(fakes), "api_keys": [CLIENT_KEY], "keys_file": "keys.yaml"}
    gw = start_gateway(tmp_path, {**config, "prompt_log": {"mode": "file", "dir": "logs"}})
    try:
        assert status_of(gw.url, ann["key"]) == 200
        # add
        ben = {"key": "k-ben-2c9d", "name": "ben", "models": ["gpt-4o"]}
        write_keys(keys_file, [ann, ben])
        wait_for_status(gw.url, ben["key"], 200)
        assert status_of(gw.url, ben["key"], "o3") == 403
        # A key added at run time is scrubbed from prompt logs like the others.
        r = httpx2.post(
            f"{gw.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {ann['key']}"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": f"ben's key is {ben['key']}"}]},
            timeout=30,
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        logged = ""
        while "ben's key" not in logged and time.monotonic() < deadline:
            time.sleep(0.1)
            logged = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.jsonl"))
        assert "ben's key is [SECRET]" in logged and ben["key"] not in logged
        # change
        write_keys(keys_file, [{**ann, "models": ["o3"]}, ben])
        wait_for_status(gw.url, ann["key"], 403)
        assert status_of(gw.url, ann["key"], "o3") == 200
        # revoke
        write_keys(keys_file, [{**ann, "models": ["o3"]}])
        wait_for_status(gw.url, ben["key"], 401)
        # a broken edit is refused, logged, and the keys in force stay
        keys_file.write_text("- {key: k-ann-6a1f, name: ann}\n- {key: k-zed-0000, name: ann}\n", encoding="utf-8")
        deadline = time.monotonic() + 8
        while "refused" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "keys_file.1.name: 'ann' is already used by keys_file.0" in gw.log()
        assert "the previous keys stay in force" in gw.log()
        assert status_of(gw.url, ann["key"], "o3") == 200 and status_of(gw.url, ann["key"]) == 403
        assert status_of(gw.url, "k-zed-0000") == 401
        assert "k-ann-6a1f" not in gw.log() and "k-zed-0000" not in gw.log()
    finally:
        gw.stop()


def test_the_keys_command_end_to_end_and_counters_survive_a_restart(fakes, tmp_path):
    config = {**policy_config(fakes), "api_keys": [CLIENT_KEY], "keys_file": "keys.yaml"}
    gw = start_gateway(tmp_path, config)
    try:
        added = keys_cmd(gw.config_path, "add", "--name", "carol", "--models", "gpt-*", "--requests-per-day", "2")
        assert added.returncode == 0, added.stderr
        key = added.stdout.strip()
        assert key.startswith("sk-aicm-") and len(key) >= 40
        assert (tmp_path / "keys.yaml").stat().st_mode & 0o777 == 0o600
        wait_for_status(gw.url, key, 200)
        assert status_of(gw.url, key, "claude-sonnet-4-5") == 403
        listing = keys_cmd(gw.config_path, "list")
        assert listing.returncode == 0 and key not in listing.stdout and CLIENT_KEY not in listing.stdout
        carol = next(line for line in listing.stdout.splitlines() if line.startswith("carol"))
        assert "requests_per_day=2" in carol and "gpt-*" in carol
        rotated = keys_cmd(gw.config_path, "rotate", "carol")
        new_key = rotated.stdout.strip()
        assert rotated.returncode == 0 and new_key != key
        # Polled with a model carol may not use: until the reload the answer is 403, which counts nothing.
        wait_for_status(gw.url, key, 401, model="claude-sonnet-4-5")
        assert status_of(gw.url, new_key) == 200  # carol's second request today
        assert status_of(gw.url, new_key) == 429
    finally:
        gw.stop()
    # The counters were saved at shutdown: after a restart carol's day is still spent.
    gw = start_gateway(tmp_path, config)
    try:
        assert status_of(gw.url, new_key) == 429
        listing = keys_cmd(gw.config_path, "list")
        assert "2 requests" in next(line for line in listing.stdout.splitlines() if line.startswith("carol"))
        assert keys_cmd(gw.config_path, "revoke", "carol").returncode == 0
        wait_for_status(gw.url, new_key, 401)
        assert keys_cmd(gw.config_path, "revoke", "carol").returncode == 1
    finally:
        gw.stop()


def test_a_bad_entry_stops_the_start_with_its_path(fakes, tmp_path):
    with pytest.raises(RuntimeError) as e:
        start_gateway(tmp_path, {**policy_config(fakes), "api_keys": [{"key": "k-x-1234", "models": ["gpt-*"]}]})
    assert "api_keys.0.name: required" in str(e.value)
