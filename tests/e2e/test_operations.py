"""Operating the gateway, end to end through a real `mitmdump -s run.py`: GET /metrics (parsed with
prometheus_client's own parser), the admin API (rights, reset, disable/enable, reload, masked
config) and the dashboard's data endpoint."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY, Fakes, api_key_providers
from tests.drivers import MODEL
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

# A plain key is an admin, named by the short hash of the key (never the key itself).
KEY_ID = "key-" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:12]
VIEWER_KEY = "test-viewer-key-4c1e"  # a named key without admin rights
ADMIN = {"authorization": f"Bearer {CLIENT_KEY}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gateway_config(fakes: Fakes, **extra: object) -> dict:
    return {
        "api_keys": [CLIENT_KEY, {"key": VIEWER_KEY, "name": "viewer"}],
        "default_provider": "openai-custom",
        "providers": api_key_providers(fakes),
        # A long Retry-After is never waited out inside a request.
        "retry": {"max_wait": 1},
        **extra,
    }


@pytest.fixture(scope="module")
def gw(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("ops"), gateway_config(fakes))
    yield gw
    gw.stop()


def scrape(gw: GatewayProcess) -> tuple[str, Samples]:
    r = httpx2.get(f"{gw.url}/metrics", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def chat(gw: GatewayProcess, content: str, **kw: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def post(gw: GatewayProcess, path: str, body: object = None, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.post(f"{gw.url}{path}", json=body, headers=headers if headers is not None else ADMIN, timeout=10)


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_known_traffic(gw: GatewayProcess, fakes: Fakes):
    _, before = scrape(gw)
    answers = [chat(gw, f"count me {i}") for i in range(2)]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    with claude.messages.stream(
        model="openai-custom:" + MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        streamed = stream.get_final_message()
    refused = httpx2.post(f"{gw.url}/v1/chat/completions", json={}, headers={"authorization": "Bearer wrong"})
    assert refused.status_code == 401
    text, after = scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    passthrough = {"key": KEY_ID, "provider": "openai-custom", "model": MODEL, "dialect": "openai_chat->openai_chat"}
    assert delta("aiclient_requests_total", status="200", outcome="ok", **passthrough) == 2
    translated = {**passthrough, "dialect": "claude->openai_chat"}
    assert delta("aiclient_requests_total", status="200", outcome="ok", **translated) == 1
    assert delta("aiclient_requests_total", status="401", outcome="refused") == 1
    expected_in = sum(a.usage.prompt_tokens for a in answers) + streamed.usage.input_tokens
    expected_out = sum(a.usage.completion_tokens for a in answers) + streamed.usage.output_tokens
    assert delta("aiclient_tokens_total", kind="input", key=KEY_ID) == expected_in
    assert delta("aiclient_tokens_total", kind="output", key=KEY_ID) == expected_out
    assert delta("aiclient_upstream_latency_seconds_count", provider="openai-custom") == 3
    assert delta("aiclient_time_to_first_token_seconds_count", provider="openai-custom") == 1
    process = next(dict(ls)["process"] for (n, ls) in after if n == "aiclient_open_streams")
    assert process.endswith(f":{gw.proc.pid}")
    assert total(after, "aiclient_open_streams") == 0
    for account in ("oa", "cl", "rs"):
        assert total(after, "aiclient_account_available", account=account, state="available") == 1
        assert total(after, "aiclient_account_available", account=account, state="cooling") == 0
    for secret in (CLIENT_KEY, OPENAI_KEY, CLAUDE_KEY, RESPONSES_KEY):
        assert secret not in text


def test_metrics_need_an_admin_key(gw: GatewayProcess):
    r = httpx2.get(f"{gw.url}/metrics", timeout=10)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert httpx2.get(f"{gw.url}/metrics", headers={"x-api-key": "nope"}, timeout=10).status_code == 401


def test_metrics_can_be_public_and_count_open_streams(fakes: Fakes, tmp_path: Path):
    slow = FakeOpenAIChat(api_key=OPENAI_KEY, write_delay=0.15).start()  # a stream that takes a while
    providers = {
        "openai-custom": {"base_url": f"{slow.url}/v1", "accounts": [{"label": "slow", "api_key": OPENAI_KEY}]}
    }
    public = start_gateway(tmp_path, {**gateway_config(fakes, metrics={"public": True}), "providers": providers})
    try:
        r = httpx2.get(f"{public.url}/metrics", timeout=10)
        assert r.status_code == 200 and "aiclient_account_available" in r.text
        # Only /metrics opens up: everything else still needs a key.
        assert httpx2.get(f"{public.url}/admin/config", timeout=10).status_code == 401
        assert httpx2.get(f"{public.url}/dashboard/data", timeout=10).status_code == 401

        def open_streams() -> float:
            text = httpx2.get(f"{public.url}/metrics", timeout=10).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            return sum(s.value for s in families["aiclient_open_streams"].samples)

        client = openai.OpenAI(base_url=f"{public.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a slow stream please"}], stream=True
        )
        next(iter(stream))
        assert open_streams() == 1
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        deadline = time.monotonic() + 5
        while open_streams() != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        public.stop()
        slow.stop()


# -- admin API -------------------------------------------------------------------------------------


def pool_row(gw: GatewayProcess, provider: str, label: str) -> dict:
    rows = httpx2.get(f"{gw.url}/pool", headers=ADMIN, timeout=10).json()["providers"][provider]
    return next(r for r in rows if r["label"] == label)


def test_admin_endpoints_refuse_without_a_key_in_the_callers_dialect(gw: GatewayProcess, fakes: Fakes):
    before = fakes.request_count()
    r = post(gw, "/admin/accounts/openai-custom/oa/reset", headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = post(gw, "/admin/reload", headers={"anthropic-version": "2023-06-01", "x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["type"] == "error"  # Claude's error shape
    assert httpx2.get(f"{gw.url}/admin/config", timeout=10).status_code == 401
    assert fakes.request_count() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/accounts/openai-custom/oa/reset"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/config"),
        ("GET", "/metrics"),
        ("GET", "/dashboard/data"),
    ],
)
def test_a_key_without_admin_rights_gets_403_in_its_dialect(gw: GatewayProcess, method: str, path: str):
    for headers, shape in (
        ({"authorization": f"Bearer {VIEWER_KEY}"}, lambda b: b["error"]["code"] == "forbidden"),
        ({"x-api-key": VIEWER_KEY, "anthropic-version": "2023-06-01"}, lambda b: b["type"] == "error"),
        ({"x-goog-api-key": VIEWER_KEY, "x-goog-api-client": "genai"}, lambda b: b["error"]["status"]),
    ):
        r = httpx2.request(method, f"{gw.url}{path}", headers=headers, timeout=10)
        assert r.status_code == 403, r.text
        assert shape(r.json()) and "key viewer is not one" in r.text
    assert f"admin: {method} {path} refused for viewer" in gw.log() or path in ("/metrics", "/dashboard/data")
    # The same key still does what it may: LLM requests.
    assert httpx2.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer {VIEWER_KEY}"}).status_code == 200


def test_reset_makes_a_cooling_account_serve_again(gw: GatewayProcess, fakes: Fakes):
    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "600"}))
    with pytest.raises(openai.RateLimitError):
        chat(gw, "first")
    assert pool_row(gw, "openai-custom", "oa")["state"] == "cooling"
    sent = len(fakes.openai.requests)
    with pytest.raises(openai.RateLimitError) as cooling:
        chat(gw, "while cooling")
    assert "cooling down" in str(cooling.value)
    assert len(fakes.openai.requests) == sent  # the pool did not even try the upstream

    r = post(gw, "/admin/accounts/openai-custom/oa/reset")
    assert r.status_code == 200, r.text
    assert r.json()["account"]["state"] == "ready" and r.json()["by"] == KEY_ID
    assert chat(gw, "after reset").choices[0].message.content == "Hello! You said: after reset"
    assert len(fakes.openai.requests) == sent + 1
    assert f"admin {KEY_ID}: reset openai-custom/oa" in gw.log()


def test_disable_and_enable_with_a_reason(gw: GatewayProcess, fakes: Fakes):
    r = post(gw, "/admin/accounts/openai-custom/oa/disable", {"reason": "rotating the key"})
    assert r.status_code == 200 and r.json()["account"]["state"] == "disabled"
    with pytest.raises(openai.APIStatusError) as refused:
        chat(gw, "while disabled")
    assert refused.value.status_code == 503 and f"disabled by {KEY_ID}: rotating the key" in str(refused.value)
    r = post(gw, "/admin/accounts/openai-custom/oa/enable", {"reason": "new key in place"})
    assert r.status_code == 200 and r.json()["account"]["state"] == "ready"
    assert chat(gw, "enabled again").choices[0].message.content == "Hello! You said: enabled again"
    log = gw.log()
    assert f"admin {KEY_ID}: disable openai-custom/oa (rotating the key)" in log
    assert f"admin {KEY_ID}: enable openai-custom/oa (new key in place)" in log


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/admin/accounts/nope-custom/oa/reset", None, 404, "unknown provider 'nope-custom'"),
        ("/admin/accounts/openai-custom/ghost/reset", None, 404, "has no account 'ghost' (accounts: oa)"),
        ("/admin/accounts/openai-custom/oa/disable", [1], 400, '{"reason": "<text>"}'),
        ("/admin/accounts/openai-custom/oa/frobnicate", None, 404, "unknown endpoint"),
    ],
)
def test_admin_account_mistakes(gw: GatewayProcess, path: str, body: object, status: int, needle: str):
    r = post(gw, path, body)
    assert r.status_code == status and needle in r.json()["error"]["message"]


def test_admin_config_masks_every_secret(gw: GatewayProcess):
    r = httpx2.get(f"{gw.url}/admin/config", headers=ADMIN, timeout=10)
    assert r.status_code == 200
    config = r.json()
    assert config["providers"]["openai-custom"]["accounts"][0]["api_key"] == "********"
    assert config["default_provider"] == "openai-custom"
    for secret in (CLIENT_KEY, OPENAI_KEY, CLAUDE_KEY, RESPONSES_KEY):
        assert secret not in r.text


def test_reload_applies_a_good_file_and_refuses_a_broken_one(gw: GatewayProcess, fakes: Fakes):
    original = gw.config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(original)
    try:
        config["models"] = {"ops-alias": f"openai-custom:{MODEL}-reloaded"}
        gw.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        r = post(gw, "/admin/reload")
        assert r.status_code == 200, r.text
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
        client.chat.completions.create(model="ops-alias", messages=[{"role": "user", "content": "alias"}])
        assert fakes.openai.last_request.json["model"] == f"{MODEL}-reloaded"

        broken = {**config, "default_provider": "claude-kiro-oauth"}
        gw.config_path.write_text(yaml.safe_dump(broken), encoding="utf-8")
        r = post(gw, "/admin/reload")
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "refused, the running configuration stays" in message and "default_provider" in message
        client.chat.completions.create(model="ops-alias", messages=[{"role": "user", "content": "still"}])
        assert fakes.openai.last_request.json["model"] == f"{MODEL}-reloaded"
        assert "reload of" in gw.log() and "refused" in gw.log()

        # A broken keys_file is refused the same way, and every key keeps working.
        keys_file = gw.config_path.with_name("keys.yaml")
        keys_file.write_text("- {key: sk-new-ops-key, name: ops}\n- {key: sk-new-ops-key, name: dup}\n")
        gw.config_path.write_text(yaml.safe_dump({**config, "keys_file": keys_file.name}), encoding="utf-8")
        r = post(gw, "/admin/reload")
        assert r.status_code == 400 and "keys_file.1: the same key as keys_file.0" in r.json()["error"]["message"]
        client.chat.completions.create(model="ops-alias", messages=[{"role": "user", "content": "keys kept"}])
        keys_file.write_text("- {key: sk-new-ops-key, name: ops, admin: true}\n")
        assert post(gw, "/admin/reload").status_code == 200
        r = httpx2.get(f"{gw.url}/admin/config", headers={"authorization": "Bearer sk-new-ops-key"}, timeout=10)
        assert r.status_code == 200 and r.json()["keys_file"] == "keys.yaml"
    finally:
        gw.config_path.write_text(original, encoding="utf-8")
        assert post(gw, "/admin/reload").status_code == 200


def test_reload_keeps_the_live_pool_state(gw: GatewayProcess, fakes: Fakes):
    post(gw, "/admin/accounts/claude-custom/cl/disable", {"reason": "kept across reload"})
    try:
        assert post(gw, "/admin/reload").status_code == 200
        row = pool_row(gw, "claude-custom", "cl")
        assert row["state"] == "disabled" and "kept across reload" in row["reason"]
    finally:
        post(gw, "/admin/accounts/claude-custom/cl/enable")


# -- dashboard ---------------------------------------------------------------------------------------


def test_dashboard_page_is_open_and_its_data_needs_a_key(gw: GatewayProcess):
    page = httpx2.get(f"{gw.url}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # Self-contained: nothing loaded from anywhere else.
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in page.text
    assert httpx2.get(f"{gw.url}/dashboard/data", timeout=10).status_code == 401
    chat(gw, "for the dashboard")
    r = httpx2.get(f"{gw.url}/dashboard/data", headers=ADMIN, timeout=10)
    assert r.status_code == 200
    data = r.json()
    accounts = {(p["id"], a["label"]): a for p in data["providers"] for a in p["accounts"]}
    assert accounts[("openai-custom", "oa")]["state"] in ("ready", "cooling")
    assert len(data["series"]) == 360 and data["last_hour"]["requests"] >= 1
    assert data["series"][-1]["t"] <= time.time() < data["series"][-1]["t"] + 20
    assert any(row["name"] == KEY_ID and row["input_tokens"] > 0 for row in data["tokens_by_key"])
    assert any(row["name"] == MODEL for row in data["tokens_by_model"])
    assert CLIENT_KEY not in json.dumps(data)
