"""Client key policy: UTC window arithmetic (hypothesis), counters with an injected clock, the
keys file, and KeyPolicy failing closed."""

from __future__ import annotations

import asyncio
import calendar
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.context import CLIENT_KEY, ROUTE, Gateway, Route
from addons.key_policy import KeyPolicy
from addons.usage import UsageBook
from auth.client_keys import (
    DAY,
    MINUTE,
    MONTH,
    ClientKey,
    KeyLimits,
    LocalCounters,
    build_keyring,
    check_access,
    parse_keys_file,
    retry_after,
    window_end,
    window_start,
)
from auth.keys_cli import parse_expiry
from core.config import ConfigError, parse_config

# 1970 .. 2200, with sub-second parts.
instants = st.floats(min_value=0, max_value=7_258_118_400, allow_nan=False, allow_infinity=False)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def utc(*args: int) -> float:
    return float(calendar.timegm((*args, 0, 0, 0)[:6]))


@given(instants, st.sampled_from([MINUTE, DAY, MONTH]))
def test_a_window_holds_its_instant_and_the_next_starts_where_it_ends(now, window):
    start, end = window_start(window, now), window_end(window, now)
    assert start <= now < end
    assert window_start(window, end) == end  # windows tile time: no gap, no overlap
    assert window_start(window, end - 0.001) == start
    assert 1 <= retry_after(window, now) <= end - start
    assert retry_after(window, now) >= end - now


@given(instants)
def test_days_start_at_utc_midnight_and_months_on_the_first(now):
    day = datetime.fromtimestamp(window_start(DAY, now), UTC)
    assert (day.hour, day.minute, day.second) == (0, 0, 0)
    assert window_end(DAY, now) - window_start(DAY, now) == 86_400
    month, next_month = (datetime.fromtimestamp(f(MONTH, now), UTC) for f in (window_start, window_end))
    assert (month.day, month.hour, next_month.day, next_month.hour) == (1, 0, 1, 0)
    assert (next_month - month).days == calendar.monthrange(month.year, month.month)[1]
    assert month <= datetime.fromtimestamp(now, UTC) < next_month


@given(st.integers(min_value=1971, max_value=2199), st.integers(min_value=1, max_value=12), st.floats(0.001, 59.0))
def test_just_before_a_month_ends_retry_after_is_the_seconds_left(year, month, before):
    end = datetime(year, month, 1, tzinfo=UTC) + timedelta(days=calendar.monthrange(year, month)[1])
    now = end.timestamp() - before
    assert window_end(MONTH, now) == window_end(DAY, now) == end.timestamp()
    assert retry_after(MONTH, now) == retry_after(DAY, now) == max(1, -(-before // 1))


def test_leap_february_and_new_year():
    assert window_end(MONTH, utc(2028, 2, 10)) == utc(2028, 3, 1)
    assert window_end(MONTH, utc(2027, 2, 28, 23, 59, 59)) == utc(2027, 3, 1)
    assert window_end(MONTH, utc(2026, 12, 31, 23, 59, 59)) == utc(2027, 1, 1)
    assert retry_after(DAY, utc(2026, 12, 31, 23, 59, 59) + 0.5) == 1


def test_counters_reset_with_their_window():
    clock = Clock(utc(2026, 12, 31, 23, 59, 30))
    limits = KeyLimits(LocalCounters(clock), clock)
    key = ClientKey("bob", b"s", admin=False, requests_per_minute=2, tokens_per_month=100)
    assert asyncio.run(limits.admit(key)) is None
    assert asyncio.run(limits.admit(key)) is None
    refusal = asyncio.run(limits.admit(key))
    assert refusal is not None and (refusal.status, refusal.retry_after) == (429, 30)
    assert "requests_per_minute=2" in refusal.message
    asyncio.run(limits.add_tokens("bob", 100))
    clock.now += 29
    refusal = asyncio.run(limits.admit(key))
    assert refusal is not None and refusal.retry_after == 1 and "tokens_per_month=100" in refusal.message
    clock.now += 1  # 2027-01-01 00:00:00: a new minute, day and month
    assert asyncio.run(limits.admit(key)) is None
    assert asyncio.run(limits.today("bob")) == {"requests_today": 1, "tokens_today": 0, "tokens_this_month": 0}


def test_a_refused_request_counts_nothing():
    clock = Clock(utc(2026, 6, 1, 12))
    limits = KeyLimits(LocalCounters(clock), clock)
    key = ClientKey("ann", b"s", admin=False, requests_per_minute=5, requests_per_day=1)
    assert asyncio.run(limits.admit(key)) is None
    for _ in range(3):
        assert asyncio.run(limits.admit(key)).retry_after == 12 * 3600
    used = asyncio.run(limits.today("ann"))
    assert used["requests_today"] == 1


def test_counters_round_trip_through_json_and_drop_ended_windows():
    clock = Clock(utc(2026, 6, 1, 12))
    store = LocalCounters(clock)
    asyncio.run(store.incr("a|requests|day|x", 3, clock.now + 10))
    asyncio.run(store.incr("b|requests|minute|x", 1, clock.now + 1))
    clock.now += 5
    again = LocalCounters.from_json(json.loads(json.dumps(store.to_json())), clock)
    assert asyncio.run(again.get("a|requests|day|x")) == 3
    assert asyncio.run(again.get("b|requests|minute|x")) == 0
    assert LocalCounters.from_json({"x": "junk", "y": [1]}, clock).to_json() == {}


def test_access_rules():
    key = ClientKey("k", b"s", admin=False, models=("gpt-5*", "claude-*"), providers=frozenset({"openai-custom"}))
    now = utc(2026, 1, 1)
    assert check_access(key, "gpt-5-mini", "openai-custom", now) is None
    assert check_access(key, "GPT-5", "openai-custom", now).status == 403  # globs are case-sensitive
    refusal = check_access(key, "claude-x", "claude-custom", now)
    assert refusal.status == 403 and "allowed: openai-custom" in refusal.message
    old = ClientKey("old", b"s", expires_at=now)
    assert check_access(old, "m", None, now - 1) is None
    assert check_access(old, "m", None, now).status == 401


def test_keys_file_errors_name_the_entry():
    assert [e.name for e in parse_keys_file("- {key: k1, name: a}\n- {key: k2, name: b, models: [x]}\n")] == ["a", "b"]
    bad = {
        "{key: k1}": "keys_file: must be a YAML list",
        "- {key: k1, name: a, tokens_per_day: 0}": "keys_file.0.tokens_per_day: Input should be greater than 0",
        "- {key: k1, name: a, colour: red}": "keys_file.0.colour: unknown key",
        "- {key: k1, name: a}\n- {key: k1, name: b}": "keys_file.1: the same key as keys_file.0",
        "- [": "keys_file: not valid YAML",
        "- {key: k1, name: key-abc}": "keys_file.0.name: names starting with 'key-' are reserved",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError) as e:
            parse_keys_file(text)
        assert message in str(e.value), text
        assert "k1" not in str(e.value)


def test_names_are_unique_across_sources():
    config = parse_config({"api_keys": ["plain", {"key": "k-a", "name": "alice"}]})
    with pytest.raises(ConfigError, match=r"keys_file.0.name: 'alice' is already used by api_keys.1"):
        build_keyring([("api_keys", config.api_keys), ("keys_file", parse_keys_file("- {key: k-b, name: alice}"))])
    keyring = build_keyring([("api_keys", config.api_keys)])
    assert keyring.match(b"k-a").name == "alice" and keyring.match(b"plain").admin
    assert keyring.match(b"nope") is None


def test_expiry_arguments():
    now = datetime(2026, 3, 1, 12, 0, 0, 123, tzinfo=UTC)
    assert parse_expiry("30d", now) == datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert parse_expiry("12h", now) == datetime(2026, 3, 2, 0, tzinfo=UTC)
    assert parse_expiry("2027-01-01", now) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="30d"):
        parse_expiry("soon", now)


def test_usage_rows_of_plain_keys_keep_their_identity_across_the_rename():
    book = UsageBook.from_json({"rows": [{"client_key_id": "08e75c10db2d", "provider": "p", "requests": 2}]})
    assert book.to_json()["rows"][0]["client_key_name"] == "key-08e75c10db2d"
    assert book.to_json("someone-else")["rows"] == []


class _BrokenStore:
    async def incr(self, key: str, amount: int, window_end: float) -> int:
        raise ConnectionError("store down")

    async def get(self, key: str) -> int:
        raise ConnectionError("store down")


def test_key_policy_fails_closed(tmp_path: Path):
    gateway = Gateway(parse_config({}), tmp_path / "config.yaml")
    addon = KeyPolicy(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
        gateway.key_limits = KeyLimits(_BrokenStore())
        flow = tflow.tflow()
        flow.request = http.Request.make("POST", "http://127.0.0.1:1/v1/messages", b"{}")
        flow.metadata[ROUTE] = Route("claude", "generate", provider="claude-custom", model="m")
        flow.metadata[CLIENT_KEY] = ClientKey("bob", b"k-bob", admin=False, requests_per_day=5)
        asyncio.run(addon.request(flow))
    assert flow.response is not None and flow.response.status_code == 500
    body = json.loads(flow.response.content)
    assert body["type"] == "error" and "checking the client key" in body["error"]["message"]
