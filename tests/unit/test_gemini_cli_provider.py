"""The gemini-cli-oauth adapter: error classification vectors, request building, credential selection."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from auth.credentials import AuthContext, CredentialError
from auth.google_oauth import DEFAULT_TOKEN_URL
from core.config import Account, Provider
from providers import ADAPTERS
from providers.gemini_cli import GeminiCli, parse_duration
from tests.fakes.code_assist import VALIDATION_URL, quota_exhausted_error, rate_limit_error, validation_required_error
from translators import ir

ADAPTER = GeminiCli()
INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _err(status: int, message: str, *details: dict, rpc: str = "RESOURCE_EXHAUSTED") -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "status": rpc, "details": list(details)}}).encode()


def _info(reason: str, **metadata: str) -> dict:
    return {"@type": INFO, "reason": reason, "domain": "cloudcode-pa.googleapis.com", "metadata": metadata}


# -- durations and classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3.5s", 3.5),
        ("0.847655010s", 0.84765501),
        ("4h30m28.06s", 16228.06),
        ("373.8ms", 0.3738),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("10s ", 10.0),
        ("", None),
        ("soon", None),
        ("5 s", None),
        ("3.5", None),
        (None, None),
    ],
)
def test_parse_duration(text, seconds):
    result = parse_duration(text)
    assert result == (pytest.approx(seconds) if seconds is not None else None)


def test_short_rate_limit_with_retry_info():
    failure = ADAPTER.classify_error(429, json.dumps(rate_limit_error("2s")).encode(), {})
    assert (failure.kind, failure.retry_after) == ("rate_limited", 2.0)
    assert "Please retry in 2s" in failure.message


def test_long_or_missing_delay_on_a_rate_limit_is_a_spent_quota():
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "400s"}
    long = _err(429, "Rate limited.", _info("RATE_LIMIT_EXCEEDED"), retry)
    failure = ADAPTER.classify_error(429, long, {})
    assert (failure.kind, failure.retry_after) == ("quota_exhausted", 400.0)
    assert failure.until == pytest.approx(time.time() + 400, abs=5)
    assert ADAPTER.classify_error(429, _err(429, "Rate limited.", _info("RATE_LIMIT_EXCEEDED")), {}).kind == (
        "quota_exhausted"
    )


def test_quota_exhausted_with_a_go_style_reset_delay():
    failure = ADAPTER.classify_error(429, json.dumps(quota_exhausted_error("4h30m28.06s")).encode(), {})
    assert failure.kind == "quota_exhausted"
    assert failure.retry_after == pytest.approx(16228.06)
    assert failure.until == pytest.approx(time.time() + 16228.06, abs=5)
    short = ADAPTER.classify_error(429, json.dumps(quota_exhausted_error("373.8ms")).encode(), {})
    assert short.retry_after == pytest.approx(0.3738)


def test_quota_reset_timestamp_gives_until():
    body = _err(429, "Quota exceeded.", _info("QUOTA_EXHAUSTED", quotaResetTimeStamp="2030-01-02T03:04:05Z"))
    assert ADAPTER.classify_error(429, body, {}).until == pytest.approx(1893553445.0)


def test_daily_and_per_minute_quota_failures():
    def violation(quota_id: str) -> dict:
        return {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota_id}]}

    daily = ADAPTER.classify_error(429, _err(429, "Quota.", violation("GenerateRequestsPerDayPerProjectPerModel")), {})
    assert daily.kind == "quota_exhausted"
    minute = ADAPTER.classify_error(429, _err(429, "Quota.", violation("GenerateRequestsPerMinutePerProject")), {})
    assert (minute.kind, minute.retry_after) == ("rate_limited", 60.0)


def test_retry_in_text_and_retry_after_header_are_fallbacks():
    body = _err(429, "Too many requests. Please retry in 12.3s.")
    assert ADAPTER.classify_error(429, body, {}).retry_after == pytest.approx(12.3)
    plain = ADAPTER.classify_error(429, b"Too Many Requests", {"retry-after": "7"})
    assert (plain.kind, plain.retry_after, plain.message) == ("rate_limited", 7.0, "Too Many Requests")


def test_array_wrapped_error_bodies_are_read():
    body = json.dumps([rate_limit_error("3.5s")]).encode()
    failure = ADAPTER.classify_error(429, body, {})
    assert (failure.kind, failure.retry_after) == ("rate_limited", 3.5)
    assert failure.message.startswith("Resource has been exhausted")


def test_validation_required_names_the_account_and_the_link():
    body = json.dumps(validation_required_error()).encode()
    failure = ADAPTER.classify_error(403, body, {}, account="work@example.com")
    assert failure.kind == "suspended"
    assert "account work@example.com" in failure.message and VALIDATION_URL in failure.message
    assert "Verify your account to continue." in failure.message
    assert "this account" in ADAPTER.classify_error(403, body, {}).message


def test_permission_denied_says_what_to_check():
    body = _err(403, "The caller does not have permission", rpc="PERMISSION_DENIED")
    failure = ADAPTER.classify_error(403, body, {})
    assert failure.kind == "forbidden"
    assert "The caller does not have permission" in failure.message and "project_id" in failure.message


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, _err(401, "Request had invalid authentication credentials.", rpc="UNAUTHENTICATED"), "auth"),
        (404, _err(404, "Requested entity was not found.", rpc="NOT_FOUND"), "not_found"),
        (400, _err(400, "Request contains an invalid argument.", rpc="INVALID_ARGUMENT"), "bad_request"),
        (
            400,
            _err(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
            "context_too_long",
        ),
        (503, _err(503, "No capacity.", _info("MODEL_CAPACITY_EXHAUSTED"), rpc="UNAVAILABLE"), "transient"),
        (429, _err(429, "You have exhausted your capacity on this model."), "transient"),
        (429, _err(429, "Quota exceeded for metric: x, limit: 0"), "quota_exhausted"),
        (429, _err(429, "Credits.", _info("INSUFFICIENT_G1_CREDITS_BALANCE")), "quota_exhausted"),
        (500, _err(500, "Internal error encountered.", rpc="INTERNAL"), "transient"),
        (502, b"<html>Bad Gateway</html>", "transient"),
    ],
)
def test_classification_table(status, body, kind):
    assert ADAPTER.classify_error(status, body, {}).kind == kind


# -- requests --------------------------------------------------------------------------------------------


def _build(body: dict, *, stream: bool, model: str = "gemini-2.5-pro", base_url: str | None = None):
    provider = Provider(base_url=base_url) if base_url else Provider()
    request = ir.Request(model, [ir.Message("user", [ir.TextPart("hi")])])
    auth = AuthContext("ya29.token", {"project_id": "proj-1"})
    return ADAPTER.build(provider, auth, body, request=request, model=model, stream=stream, client_headers={})


def test_build_wraps_the_request_for_code_assist():
    inner = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 0.1}}
    up = _build(inner, stream=False)
    assert up.url == "https://cloudcode-pa.googleapis.com/v1internal:generateContent"
    assert json.loads(up.body) == {"model": "gemini-2.5-pro", "project": "proj-1", "request": inner}
    assert up.headers["authorization"] == "Bearer ya29.token"
    assert up.headers["accept"] == "application/json" and up.headers["content-type"] == "application/json"
    assert up.headers["user-agent"].startswith("GeminiCLI/0.31.0/gemini-2.5-pro (")
    assert up.headers["x-goog-api-client"].startswith("google-genai-sdk/")


def test_build_streams_over_sse_and_strips_a_clients_model():
    body = {"model": "models/gemini-3-pro-preview", "contents": [{"parts": [{"text": "hi"}]}]}
    up = _build(body, stream=True, model="models/gemini-3-pro-preview", base_url="http://127.0.0.1:9/v1internal/")
    assert up.url == "http://127.0.0.1:9/v1internal:streamGenerateContent?alt=sse"
    sent = json.loads(up.body)
    assert sent["model"] == "gemini-3-pro-preview" and "model" not in sent["request"]
    assert up.headers["accept"] == "text/event-stream"


def test_registered_with_current_models():
    assert ADAPTERS["gemini-cli-oauth"].dialect == "gemini"
    assert {"gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview", "gemini-3-flash-preview"} <= set(
        ADAPTER.default_models
    )
    assert ADAPTER.accepts_image_urls is False


# -- credential selection -----------------------------------------------------------------------------------


def _login(expired: bool = False) -> dict:
    expiry = time.time() + (-60 if expired else 3600)
    return {"access_token": "ya29.a", "refresh_token": "1//r", "expiry_date": int(expiry * 1000)}


def test_credential_from_base64_file_or_the_gemini_cli_default(tmp_path, monkeypatch):
    encoded = base64.b64encode(json.dumps(_login()).encode()).decode()
    provider = Provider(accounts=[Account(label="b64", credentials_base64=encoded, project_id="p")])
    cred = ADAPTER.credential(provider, provider.accounts[0])
    assert cred._path is None and cred._token_url == DEFAULT_TOKEN_URL and cred.project_id == "p"

    path = tmp_path / "work.json"
    path.write_text(json.dumps(_login()))
    provider = Provider(token_url="http://127.0.0.1:9/token", refresh_ahead=60, accounts=[Account(credentials=path)])
    cred = ADAPTER.credential(provider, provider.accounts[0])
    assert (cred._path, cred._token_url, cred._refresh_ahead, cred.label) == (
        path,
        "http://127.0.0.1:9/token",
        60.0,
        "work.json",
    )

    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".gemini" / "oauth_creds.json"
    provider = Provider(accounts=[Account(label="me")])
    with pytest.raises(CredentialError, match=r"no credential file at .*\.gemini/oauth_creds.json; log in again"):
        ADAPTER.credential(provider, provider.accounts[0])
    default.parent.mkdir()
    default.write_text(json.dumps(_login()))
    assert ADAPTER.credential(provider, provider.accounts[0])._path == Path(default)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"onboard_poll_interval": 0}, "options.onboard_poll_interval: must be a number of seconds above 0"),
        ({"onboard_timeout": "soon"}, "options.onboard_timeout: must be a number"),
        ({"colour": "blue"}, "options.colour: unknown option for gemini-cli-oauth"),
    ],
)
def test_bad_options_are_named(tmp_path, options, error):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_login()))
    provider = Provider(options=options, accounts=[Account(credentials=path)])
    with pytest.raises(CredentialError, match=error):
        ADAPTER.credential(provider, provider.accounts[0])
