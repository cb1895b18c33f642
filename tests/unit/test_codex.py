"""The Codex credential (auth.json shapes, expiry, refresh, rotation, refusals) against the fake
token endpoint, and the provider's pure parts: body rules, error meanings, usage windows."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auth.codex_oauth import CodexCredential, read_auth_file
from auth.credentials import AuthContext, CredentialError
from auth.pool import AccountPool, PoolAccount
from providers.codex import Codex, CodexDecoder, codex_body, prompt_cache_key, usage_windows
from tests.fakes.codex import AUTH_CLAIM, FakeCodex, make_jwt
from translators import ir


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCodex]:
    with FakeCodex(split_writes=False) as server:
        yield server


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def credential(fake: FakeCodex, path: Path, **kw) -> CodexCredential:
    return CodexCredential(path, token_url=f"{fake.url}/oauth/token", **kw)


# -- the file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["codex-cli", "flat"])
def test_both_shapes_give_token_account_and_expiry(fake, tmp_path, flat):
    data = fake.auth_file("acct-7", plan="team", flat=flat)
    cred = credential(fake, write(tmp_path / "auth.json", data))
    ctx = asyncio.run(cred.auth())
    access = data["access_token"] if flat else data["tokens"]["access_token"]
    assert ctx.token == access and ctx.extra["account_id"] == "acct-7" and ctx.extra["plan_type"] == "team"
    assert cred.expires_at == pytest.approx(time.time() + fake.token_lifetime, abs=5)


def test_account_id_comes_from_the_jwt_claim_when_the_file_has_none(fake, tmp_path):
    data = fake.auth_file("acct-claim")
    del data["tokens"]["account_id"]
    tokens = read_auth_file(write(tmp_path / "auth.json", data))
    assert tokens.account_id == "acct-claim"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-x"}, "API-key mode"),
        ({"OPENAI_API_KEY": "sk-x"}, "API-key mode"),
        ({"auth_mode": "agentIdentity", "agent_identity": {}}, "agent identity"),
        ({"auth_mode": "personal_access_token"}, "personal access token"),
        ({"auth_mode": "chatgpt", "tokens": {"access_token": "a"}}, "refresh_token is missing"),
        ([], "expected a JSON object"),
    ],
)
def test_other_logins_are_refused_politely(tmp_path, data, says):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CredentialError, match=says):
        read_auth_file(path)


def test_a_missing_file_says_where_to_look(tmp_path):
    with pytest.raises(CredentialError, match="keyring"):
        read_auth_file(tmp_path / "auth.json")


# -- refresh ------------------------------------------------------------------------------------------


def test_near_expiry_refreshes_once_and_rotates_the_file(fake, tmp_path):
    data = fake.auth_file("acct-1")
    data["tokens"]["extra"] = "kept"
    path = write(tmp_path / "auth.json", data)
    cred = credential(fake, path, clock=lambda: time.time() + fake.token_lifetime - 60)  # inside refresh_ahead

    async def many() -> list[AuthContext]:
        return await asyncio.gather(*(cred.auth() for _ in range(10)))

    contexts = asyncio.run(many())
    assert cred.refreshes == 1 and len({c.token for c in contexts}) == 1
    saved = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved["tokens"]["extra"] == "kept" and saved["tokens"]["access_token"] == contexts[0].token
    assert saved["tokens"]["refresh_token"] != data["tokens"]["refresh_token"]
    assert fake.refresh_token_valid(saved["tokens"]["refresh_token"])


def test_flat_file_keeps_its_shape_on_refresh(fake, tmp_path):
    data = fake.auth_file("acct-1", lifetime=-5, flat=True)
    path = write(tmp_path / "codex-me.json", data)
    asyncio.run(credential(fake, path).auth())
    saved = json.loads(path.read_text())
    assert set(saved) == set(data) | {"last_refresh", "expired"}
    assert "tokens" not in saved and saved["type"] == "codex"


def test_401_adopts_a_token_another_process_wrote(fake, tmp_path):
    data = fake.auth_file("acct-1")
    path = write(tmp_path / "auth.json", data)
    cred = credential(fake, path)
    newer = fake.auth_file("acct-1")  # the Codex CLI refreshed meanwhile
    write(path, newer)
    ctx = asyncio.run(cred.force_refresh())
    assert ctx.token == newer["tokens"]["access_token"] and cred.refreshes == 0


def test_401_refreshes_when_the_file_has_nothing_newer(fake, tmp_path):
    path = write(tmp_path / "auth.json", fake.auth_file("acct-1"))
    cred = credential(fake, path)
    before = asyncio.run(cred.auth()).token
    after = asyncio.run(cred.force_refresh()).token
    assert after != before and cred.refreshes == 1


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("refresh_token_expired", "expired"),
        ("refresh_token_invalidated", "revoked"),
        ("refresh_token_reused", "already used"),
    ],
)
def test_dead_refresh_token_disables_and_keeps_the_file(fake, tmp_path, code, says):
    path = write(tmp_path / "auth.json", fake.auth_file("acct-1", lifetime=-5))
    before = path.read_bytes()
    fake.refresh_failure = code if code != "refresh_token_reused" else None
    if code == "refresh_token_reused":
        asyncio.run(credential(fake, tmp_path / "auth.json").auth())  # rotates; then put the old file back
        path.write_bytes(before)
    try:
        cred = credential(fake, path)
        with pytest.raises(CredentialError, match=says):
            asyncio.run(cred.auth())
        with pytest.raises(CredentialError, match="log in again: python -m auth login codex"):
            asyncio.run(cred.auth())
    finally:
        fake.refresh_failure = None
    assert path.read_bytes() == before
    with pytest.raises(CredentialError, match="disabled"):  # a restart remembers
        credential(fake, path)


def test_transient_refresh_failure_keeps_a_valid_token(fake, tmp_path):
    data = fake.auth_file("acct-1", lifetime=300)  # valid, but inside refresh_ahead
    path = write(tmp_path / "auth.json", data)
    cred = CodexCredential(path, token_url=f"{fake.url}/nowhere")
    assert asyncio.run(cred.auth()).token == data["tokens"]["access_token"]
    assert cred.disabled is None


# -- the provider's pure parts -------------------------------------------------------------------------


def test_body_rules():
    rendered = {
        "model": "gpt-5.5",
        "input": [{"id": "msg_1", "type": "message", "role": "user", "content": "hi"}],
        "max_output_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"a": "b"},
        "user": "u",
        "reasoning": {"effort": "high"},
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
    }
    body = codex_body(rendered)
    assert body["store"] is False and body["stream"] is True
    assert body["instructions"] and body["include"] == ["reasoning.encrypted_content"]
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["input"] == [{"type": "message", "role": "user", "content": "hi"}]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert not {"max_output_tokens", "temperature", "top_p", "metadata", "user"} & set(body)
    assert body["prompt_cache_key"] == prompt_cache_key(body)
    assert codex_body({"model": "m", "input": "hi", "instructions": "be terse"})["instructions"] == "be terse"


@pytest.mark.parametrize(
    ("status", "body", "kind", "wait"),
    [
        (
            429,
            {"error": {"type": "usage_limit_reached", "message": "limit", "plan_type": "plus",
                       "resets_at": "in 600 s", "resets_in_seconds": 600}},
            "quota_exhausted",
            600,
        ),
        (429, {"error": {"type": "usage_not_included", "message": "no codex"}}, "suspended", None),
        (429, {"error": {"code": "rate_limit_exceeded", "message": "Please try again in 1.5s."}}, "rate_limited", 1.5),
        (503, {"error": {"code": "server_is_overloaded", "message": "busy"}}, "transient", None),
        (400, {"detail": "Unsupported parameter: temperature"}, "bad_request", None),
        (400, {"error": {"code": "context_length_exceeded", "message": "too long"}}, "context_too_long", None),
        (401, {"error": {"code": "token_expired", "message": "expired"}}, "auth", None),
    ],
)  # fmt: skip
def test_error_meanings(status, body, kind, wait):
    if body.get("error", {}).get("resets_at"):
        body = {"error": {**body["error"], "resets_at": int(time.time()) + 600}}
    failure = Codex().classify_error(status, json.dumps(body).encode(), {})
    assert failure.kind == kind
    if wait is not None:
        assert failure.retry_after == pytest.approx(wait, abs=15)
    if kind == "quota_exhausted":
        assert failure.all_models and failure.until == body["error"]["resets_at"]
    if kind == "bad_request":
        assert failure.message == "Unsupported parameter: temperature"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"code": "insufficient_quota", "message": "quota"}, "quota_exhausted"),
        ({"code": "usage_limit_reached", "message": "limit", "resets_in_seconds": 30}, "quota_exhausted"),
        ({"code": "usage_not_included", "message": "no"}, "suspended"),
        ({"code": "rate_limit_exceeded", "message": "Please try again in 250ms."}, "rate_limited"),
        ({"code": "invalid_encrypted_content", "message": "bad blob"}, "bad_request"),
        ({"code": "server_error", "message": "oops"}, "transient"),
    ],
)
def test_in_stream_failures_read_like_the_http_form(error, kind):
    events = [
        {"type": "response.created", "response": {"id": "r1", "status": "in_progress"}},
        {"type": "response.failed", "response": {"id": "r1", "status": "failed", "error": error}},
    ]
    data = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    decoded = CodexDecoder().feed(data)
    errors = [e for e in decoded if type(e) is ir.StreamError]
    assert len(errors) == 1 and errors[0].message.startswith(error["code"])
    failure = Codex().classify_stream_error(errors[0])
    assert failure.kind == kind
    if error["code"] == "rate_limit_exceeded":
        assert failure.retry_after == pytest.approx(0.25)
    if error.get("resets_in_seconds"):
        assert failure.retry_after == 30 and failure.all_models


def test_usage_windows_from_headers():
    headers = {
        "x-codex-primary-used-percent": "42.5",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": "1767225600",
        "X-Codex-Secondary-Used-Percent": "3",
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-after-seconds": "60",
        "x-request-id": "r",
    }
    windows = usage_windows(headers, now=1000.0)
    assert windows == {
        "primary": {"used_percent": 42.5, "window_minutes": 300, "resets_at": 1767225600.0},
        "secondary": {"used_percent": 3.0, "window_minutes": 10080, "resets_at": 1060.0},
    }
    assert usage_windows({"content-type": "text/event-stream"}) == {}


def test_models_list_leaves_hidden_ones_out():
    body = {"models": [{"slug": "gpt-5.5", "visibility": "list"}, {"slug": "codex-auto-review", "visibility": "hide"}]}
    assert Codex.parse_models(body) == ["gpt-5.5"]
    assert Codex.parse_models({"unexpected": True}) == []


def test_expiry_without_exp_falls_back_to_last_refresh(tmp_path):
    claims = {AUTH_CLAIM: {"chatgpt_account_id": "a"}}
    data = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {"access_token": make_jwt(claims), "refresh_token": "rt", "id_token": make_jwt(claims)},
        "last_refresh": "2026-12-01T00:00:00.000000Z",
    }
    tokens = read_auth_file(write(tmp_path / "auth.json", data))
    assert tokens.expires_at == datetime(2026, 12, 9, tzinfo=UTC).timestamp()


def test_pool_keeps_usage_windows_across_a_snapshot():
    pool = AccountPool("openai-codex-oauth", [PoolAccount("a", None)])
    pool.note_usage(pool.accounts[0], usage_windows({"x-codex-primary-used-percent": "10"}))
    snap = pool.snapshot()
    pool.note_usage(pool.accounts[0], usage_windows({"x-codex-primary-used-percent": "20"}))
    assert snap != pool.snapshot()  # a change is seen, so the snapshot file is rewritten
    restored = AccountPool("openai-codex-oauth", [PoolAccount("a", None)])
    restored.restore(pool.snapshot())
    assert restored.status()[0]["usage_windows"]["primary"]["used_percent"] == 20.0


def test_a_short_lived_token_is_not_refreshed_on_every_request(fake, tmp_path):
    """600 s tokens with refresh_ahead 900: refreshed in their second half, not at every use."""
    lifetime, fake.token_lifetime = fake.token_lifetime, 600
    try:
        path = write(tmp_path / "auth.json", fake.auth_file("acct-1"))
        cred = credential(fake, path)
        for _ in range(3):
            asyncio.run(cred.auth())
        assert cred.refreshes == 0
        late = credential(fake, path, clock=lambda: time.time() + 320)
        asyncio.run(late.auth())
        assert late.refreshes == 1
    finally:
        fake.token_lifetime = lifetime
