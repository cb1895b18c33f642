"""The small parts of operating the gateway: who is an admin, masking the config, the request
series the dashboard draws, refresh counting, and the pool's operator actions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from mitmproxy.test import tflow

from addons import admin
from addons.admin_api import mask_config
from addons.context import CLIENT_KEY, CLIENT_KEY_ID, CLIENT_KEY_NAME
from addons.metrics import RateSeries
from auth.credentials import counted_refresh
from auth.pool import AccountPool, PoolAccount
from auth.rate_limit import ProviderLimits
from core.config import parse_config


@dataclass
class NamedKey:
    """The shape of a named client key (the client-keys work): a name and an admin flag."""

    name: str
    admin: bool


def flow_with(path: str = "/admin/reload", headers: dict[str, str] | None = None, **metadata: object):
    flow = tflow.tflow()
    flow.request.path = path
    for k, v in (headers or {}).items():
        flow.request.headers[k] = v
    flow.metadata.update(metadata)
    return flow


def test_every_valid_key_is_an_admin_until_keys_have_policies():
    assert admin.is_admin(flow_with(**{CLIENT_KEY_ID: "abc123"}))
    assert admin.refusal(flow_with(**{CLIENT_KEY_ID: "abc123"}), "POST /admin/reload") is None
    assert not admin.is_admin(flow_with())  # an open path (dashboard page, public metrics) has no key


@pytest.mark.parametrize(
    ("headers", "shape"),
    [
        ({}, lambda b: b["error"]["code"] == "forbidden"),
        ({"anthropic-version": "2023-06-01"}, lambda b: b["type"] == "error" and b["error"]["type"]),
        ({"x-goog-api-client": "google-genai-sdk/3.6.1"}, lambda b: b["error"]["status"] == "PERMISSION_DENIED"),
    ],
    ids=["openai", "claude", "gemini"],
)
def test_a_non_admin_key_gets_403_in_its_own_dialect(headers, shape):
    flow = flow_with(
        headers=headers,
        **{CLIENT_KEY_ID: "abc123", CLIENT_KEY: NamedKey("ci", False), CLIENT_KEY_NAME: "ci"},
    )
    assert not admin.is_admin(flow)
    refused = admin.refusal(flow, "POST /admin/reload")
    assert refused is not None and refused.status_code == 403
    body = json.loads(refused.content)
    assert shape(body) and "key ci is not one" in refused.text


def test_the_caller_is_named_by_key_name_else_short_id():
    assert admin.caller_name(flow_with(**{CLIENT_KEY_ID: "abc123", CLIENT_KEY_NAME: "ops"})) == "ops"
    assert admin.caller_name(flow_with(**{CLIENT_KEY_ID: "abc123"})) == "abc123"


def test_llm_paths_keep_their_own_dialect():
    assert admin.caller_dialect(flow_with("/v1/messages", {"x-goog-api-client": "x"})) == "claude"
    assert admin.caller_dialect(flow_with("/metrics", {"anthropic-version": "1"})) == "claude"


def test_config_secrets_are_masked():
    config = {
        "api_keys": ["sk-client"],
        "providers": {
            "openai-custom": {
                "base_url": "https://relay.example/v1?key=AIzaSECRET&alt=sse",
                "token_url": "https://oauth.example/token",
                "accounts": [{"label": "a", "api_key": "sk-up", "credentials_base64": "Zm9v", "client_secret": "s"}],
            }
        },
        "prompt_log": {"redact": ["x"]},
    }
    masked = mask_config(config)
    text = json.dumps(masked)
    for secret in ("sk-client", "sk-up", "Zm9v", "AIzaSECRET", '"s"'):
        assert secret not in text
    provider = masked["providers"]["openai-custom"]
    assert provider["token_url"] == "https://oauth.example/token" and "alt=sse" in provider["base_url"]
    assert provider["accounts"][0]["label"] == "a" and masked["prompt_log"] == {"redact": ["x"]}


def test_rate_series_keeps_the_last_hour_in_10_second_buckets():
    series = RateSeries()
    t0 = 1_000_000.0
    series.add(t0, error=False)
    series.add(t0 + 1, error=True)
    series.add(t0 + 15, error=False)
    points = series.points(t0 + 15)
    assert len(points) == 360 and points[-1]["t"] == 1_000_010 and points[-2]["t"] == 1_000_000
    assert (points[-2]["requests"], points[-2]["errors"], points[-1]["requests"]) == (2, 1, 1)
    assert points[-2]["rps"] == 0.2
    # An hour later the old buckets are gone, even though their slots are reused.
    series.add(t0 + 3600, error=False)
    later = series.points(t0 + 3600)
    assert sum(p["requests"] for p in later) == 2 and later[-1]["requests"] == 1


def test_refreshes_and_their_failures_are_counted():
    class Cred:
        def __init__(self) -> None:
            self.fail = False

        @counted_refresh
        async def _refresh(self) -> str:
            if self.fail:
                raise RuntimeError("refused")
            return "token"

    cred = Cred()
    assert asyncio.run(cred._refresh()) == "token"
    cred.fail = True
    with pytest.raises(RuntimeError):
        asyncio.run(cred._refresh())
    assert (cred.refresh_stats.attempts, cred.refresh_stats.failures) == (2, 1)


def test_reset_clears_cooldowns_and_errors_enable_only_the_disable():
    now = [1000.0]
    acct = PoolAccount("a", credential=object())  # type: ignore[arg-type]
    pool = AccountPool("openai-custom", [acct], clock=lambda: now[0])
    pool.report_failure(acct, "m", "rate_limited", "slow down", retry_after=600)
    pool.disable(acct, "by hand")
    pool.enable(acct)
    assert pool.status()[0]["state"] == "cooling"  # enable leaves the cooldown
    pool.reset(acct)
    row = pool.status()[0]
    assert row["state"] == "ready" and row["last_error"] is None and row["recent_errors"] == 0
    assert row["errors"] == 1  # totals stay
    assert pool.acquire("m") is acct
    assert pool.find("a") is acct and pool.find("b") is None


def test_request_windows_are_visible():
    clock = [0.0]
    limits = ProviderLimits(clock=lambda: clock[0])
    provider = parse_config({"providers": {"openai-qwen-oauth": {"requests_per_minute": 2, "accounts": []}}})
    qwen = provider.providers["openai-qwen-oauth"]
    assert limits.windows("openai-qwen-oauth", "a") == []
    limits.acquire("openai-qwen-oauth", qwen, "a")
    assert limits.windows("openai-qwen-oauth", "a") == [{"length": 60.0, "used": 1, "limit": 2}]
    clock[0] = 61
    assert limits.windows("openai-qwen-oauth", "a")[0]["used"] == 0


def test_pool_gauges_are_read_at_scrape_time():
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from addons.context import Gateway
    from addons.metrics import Metrics

    ready, cooling = PoolAccount("a", object()), PoolAccount("b", object())  # type: ignore[arg-type]
    gone = PoolAccount("c", None, "no credentials file")
    pool = AccountPool("codex-oauth", [ready, cooling, gone])
    pool.report_failure(cooling, "m", "rate_limited", "slow down", retry_after=60)
    pool.note_usage(ready, {"primary": {"used_percent": 42.0, "window_minutes": 300, "resets_at": None}})
    gateway = Gateway()
    gateway.pools = {"codex-oauth": pool}
    metrics = Metrics(gateway)

    def scrape() -> dict[tuple[str, str, str], float]:
        """(metric, account, state or window) -> value, for this provider and process."""
        out = {}
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("provider") == "codex-oauth" and labels["process"] == metrics.process:
                    key = (sample.name, labels["account"], labels.get("state") or labels.get("window", ""))
                    out[key] = sample.value
        return out

    samples = scrape()
    state = "aiclient_account_available"
    assert samples[(state, "a", "available")] == 1 and samples[(state, "a", "cooling")] == 0
    assert samples[(state, "b", "cooling")] == 1 and samples[(state, "b", "available")] == 0
    assert samples[(state, "c", "disabled")] == 1
    assert samples[("aiclient_account_usage_percent", "a", "primary")] == 42.0
    # Pool changes show at the next scrape, with no per-request bookkeeping.
    pool.reset(cooling)
    assert scrape()[(state, "b", "available")] == 1
