"""The Qwen adapter (URL, headers, body, options, error reading) and the fake portal's strictness."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from auth.credentials import AuthContext, CredentialError
from auth.qwen_oauth import QwenOAuthCredential, user_agent
from core.config import Account, Provider
from providers import ADAPTERS
from providers.qwen import PLACEHOLDER_TOOL, PlaceholderFilter, Qwen, next_quota_reset, resource_base_url
from tests.fakes import qwen as fake_qwen
from tests.fakes.qwen import FakeQwen
from translators import get_codec, ir

ADAPTER = Qwen()
AUTH = AuthContext("tok-123", {"resource_url": "portal.qwen.ai"})
BODY = {"model": "coder-model", "messages": [{"role": "user", "content": "hi"}]}


def build(provider: Provider | None = None, body: dict | None = None, stream: bool = False, auth=AUTH):
    req = get_codec("openai_chat").parse_request(body or BODY)
    return ADAPTER.build(
        provider or Provider(), auth, body or BODY, request=req, model="coder-model", stream=stream, client_headers={}
    )


def test_registered():
    assert isinstance(ADAPTERS["openai-qwen-oauth"], Qwen)
    assert ADAPTER.dialect == "openai_chat"
    assert ADAPTER.default_models == ("qwen3-coder-plus", "qwen3-coder-flash", "coder-model", "vision-model")
    assert ADAPTER.accepts_image_urls is False


# -- URL -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "base"),
    [
        ("portal.qwen.ai", "https://portal.qwen.ai/v1"),
        ("portal.qwen.ai/", "https://portal.qwen.ai/v1"),
        ("https://dashscope.aliyuncs.com/compatible-mode/v1", "https://dashscope.aliyuncs.com/compatible-mode/v1"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/v1"),
        ("https://portal.qwen.ai/v1/", "https://portal.qwen.ai/v1"),
    ],
)
def test_resource_url_becomes_a_base_url(resource, base):
    assert resource_base_url(resource) == base


def test_base_url_precedence_config_then_resource_then_default():
    assert build().url == "https://portal.qwen.ai/v1/chat/completions"
    configured = Provider(base_url="http://127.0.0.1:9999/v1/")
    assert build(configured).url == "http://127.0.0.1:9999/v1/chat/completions"
    other = AuthContext("t", {"resource_url": "eu.portal.example"})
    assert build(auth=other).url == "https://eu.portal.example/v1/chat/completions"
    assert build(auth=AuthContext("t")).url == "https://portal.qwen.ai/v1/chat/completions"


# -- request -------------------------------------------------------------------------------------


def test_headers_are_qwen_codes():
    up = build()
    h = up.headers
    assert h["authorization"] == "Bearer tok-123"
    assert h["user-agent"] == h["x-dashscope-useragent"] == user_agent()
    assert h["user-agent"].startswith("QwenCode/") and "; " in h["user-agent"]
    assert h["x-dashscope-authtype"] == "qwen-oauth" and h["x-dashscope-cachecontrol"] == "enable"
    assert h["accept"] == "application/json"
    assert build(stream=True, body={**BODY, "stream": True}).headers["accept"] == "text/event-stream"


def test_body_is_the_clients_plus_usage_on_streams_and_nothing_injected():
    unary = json.loads(build().body)
    assert unary == BODY
    streamed = json.loads(build(body={**BODY, "stream": True}, stream=True).body)
    assert streamed == {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    kept = json.loads(build(body={**BODY, "stream": True, "stream_options": {"x": 1}}, stream=True).body)
    assert kept["stream_options"] == {"x": 1, "include_usage": True}
    assert build().stream_only is False and build().decoder is None


def test_identity_prompt_goes_first_in_the_system_message():
    provider = Provider(options={"identity_prompt": "You are Qwen Code."})
    plain = json.loads(build(provider).body)["messages"]
    assert plain[0] == {"role": "system", "content": "You are Qwen Code."}
    with_system = {**BODY, "messages": [{"role": "system", "content": "Be brief."}, *BODY["messages"]]}
    merged = json.loads(build(provider, with_system).body)["messages"]
    assert merged[0] == {"role": "system", "content": "You are Qwen Code.\n\nBe brief."} and len(merged) == 2
    parts = {**BODY, "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]}
    assert json.loads(build(provider, parts).body)["messages"][0]["content"][0] == {
        "type": "text",
        "text": "You are Qwen Code.",
    }


def test_placeholder_tool_is_opt_in_and_makes_the_upstream_stream():
    provider = Provider(options={"placeholder_tool": True})
    up = build(provider)
    body = json.loads(up.body)
    assert [t["function"]["name"] for t in body["tools"]] == [PLACEHOLDER_TOOL]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert up.stream_only is True and up.decoder is not None
    with_tools = {**BODY, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}
    assert [t["function"]["name"] for t in json.loads(build(provider, with_tools).body)["tools"]] == ["get_weather"]


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def delta(d: dict, finish: str | None = None) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


def call(index: int, name: str | None, args: str, call_id: str | None = None) -> dict:
    fn = {"arguments": args} if name is None else {"name": name, "arguments": args}
    tc = {"index": index, "function": fn}
    if call_id:
        tc |= {"id": call_id, "type": "function"}
    return delta({"tool_calls": [tc]})


def test_placeholder_filter_drops_its_calls_and_renumbers_the_rest():
    decoder = PlaceholderFilter(get_codec("openai_chat").decoder())
    stream = sse(
        delta({"role": "assistant", "content": ""}),
        call(0, PLACEHOLDER_TOOL, "{}", "call_x"),
        call(1, "get_weather", '{"city":', "call_a"),
        call(1, None, '"Paris"}'),
        delta({}, "tool_calls"),
    )
    events = decoder.feed(stream) + decoder.close()
    starts = [e for e in events if isinstance(e, ir.ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather")]
    assert {e.index for e in events if isinstance(e, ir.ToolCallArgsDelta | ir.ToolCallEnd)} == {0}
    assert [e.reason for e in events if isinstance(e, ir.Finish)] == [ir.FinishReason.TOOL_CALLS]

    only_placeholder = PlaceholderFilter(get_codec("openai_chat").decoder())
    events = only_placeholder.feed(sse(call(0, PLACEHOLDER_TOOL, "{}", "call_x"), delta({}, "tool_calls")))
    events += only_placeholder.close()
    assert not [e for e in events if isinstance(e, ir.ToolCallStart)]
    assert [e.reason for e in events if isinstance(e, ir.Finish)] == [ir.FinishReason.STOP]


# -- options and accounts ------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "creds.json"
    data = {"access_token": "a", "refresh_token": "r", "token_type": "Bearer", "expiry_date": 4_000_000_000_000}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"identity_promt": "x"}, "options.identity_promt: unknown option"),
        ({"placeholder_tool": "yes"}, "options.placeholder_tool: must be true or false"),
        ({"identity_prompt": ""}, "options.identity_prompt: must be a non-empty string"),
        ({"user_agent": 5}, "options.user_agent: must be a non-empty string"),
    ],
)
def test_bad_options_make_accounts_unusable_with_the_key(token_file, options, reason):
    with pytest.raises(CredentialError, match=f"providers.openai-qwen-oauth.{reason}"):
        ADAPTER.credential(Provider(options=options), Account(credentials=token_file))


def test_user_agent_option_replaces_both_headers():
    up = build(Provider(options={"user_agent": "QwenCode/9.9.9 (linux; x64)"}))
    assert up.headers["user-agent"] == up.headers["x-dashscope-useragent"] == "QwenCode/9.9.9 (linux; x64)"


def test_account_fields(token_file, tmp_path, monkeypatch):
    provider = Provider(token_url="http://127.0.0.1:1/api/v1/oauth2/token", refresh_ahead=60)
    cred = ADAPTER.credential(provider, Account(credentials=token_file))
    assert isinstance(cred, QwenOAuthCredential) and cred.refreshable
    assert cred.token_url == "http://127.0.0.1:1/api/v1/oauth2/token" and cred.refresh_ahead == 60
    with pytest.raises(CredentialError, match="credentials_base64 is not supported"):
        ADAPTER.credential(provider, Account(credentials_base64="e30="))
    with pytest.raises(CredentialError, match="not api_key"):
        ADAPTER.credential(provider, Account(api_key="sk-x"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".qwen").mkdir()
    (tmp_path / ".qwen" / "oauth_creds.json").write_text(token_file.read_text())
    default = ADAPTER.credential(Provider(), Account())
    assert default.path == tmp_path / ".qwen" / "oauth_creds.json"
    assert default.token_url == "https://chat.qwen.ai/api/v1/oauth2/token"


# -- errors --------------------------------------------------------------------------------------


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        ("2026-03-01T10:00:00+00:00", "2026-03-01T16:00:00+00:00"),
        ("2026-03-01T16:00:00+00:00", "2026-03-02T16:00:00+00:00"),
        ("2026-03-01T23:30:00+00:00", "2026-03-02T16:00:00+00:00"),
    ],
)
def test_quota_resets_at_midnight_beijing(now, reset):
    assert next_quota_reset(at(now)) == at(reset)
    assert datetime.fromtimestamp(at(reset), UTC).hour == 16


def test_classify_quota_throttling_auth():
    quota = ADAPTER.classify_error(429, json.dumps(fake_qwen.QUOTA_ERROR).encode(), {})
    assert quota.kind == "quota_exhausted" and "Free allocated quota exceeded." in quota.message
    assert quota.until is not None and datetime.fromtimestamp(quota.until, UTC).hour == 16
    throttled = ADAPTER.classify_error(429, json.dumps(fake_qwen.THROTTLE_ERROR).encode(), {"retry-after": "7"})
    assert (throttled.kind, throttled.retry_after) == ("rate_limited", 7.0)
    plain_429 = ADAPTER.classify_error(429, b'{"error":{"message":"slow"}}', {})
    assert plain_429.kind == "rate_limited"
    expired = ADAPTER.classify_error(401, b'{"error":{"message":"invalid access token or token expired"}}', {})
    assert expired.kind == "auth" and "discontinued" in expired.message
    forbidden_token = ADAPTER.classify_error(403, b'{"error":{"message":"Invalid access token"}}', {})
    assert forbidden_token.kind == "auth"
    assert ADAPTER.classify_error(403, b'{"error":{"message":"Access denied"}}', {}).kind == "forbidden"
    assert ADAPTER.classify_error(500, b"oops", {}).kind == "transient"
    dashscope_native = b'{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}'
    assert ADAPTER.classify_error(400, dashscope_native, {}).kind == "rate_limited"


# -- the fake is as strict as it should be ---------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeQwen]:
    with FakeQwen() as server:
        yield server


def test_fake_portal_checks_token_and_dashscope_headers(fake):
    access, _, _ = fake.issue()
    up = build(Provider(base_url=f"{fake.url}/v1"), auth=AuthContext(access))
    ok = httpx2.post(up.url, headers=up.headers, content=up.body, timeout=10)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello! You said: hi"
    missing = {k: v for k, v in up.headers.items() if k != "x-dashscope-authtype"}
    assert httpx2.post(up.url, headers=missing, content=up.body, timeout=10).status_code == 400
    bad = {**up.headers, "authorization": "Bearer nope"}
    r = httpx2.post(up.url, headers=bad, content=up.body, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["message"] == fake_qwen.INVALID_TOKEN
    expired, _, _ = fake.issue(lifetime=-1)
    assert (
        httpx2.post(up.url, headers={**up.headers, "authorization": f"Bearer {expired}"}, content=up.body).status_code
        == 401
    )
    unknown_model = json.dumps({**BODY, "model": "gpt-4o"})
    assert httpx2.post(up.url, headers=up.headers, content=unknown_model, timeout=10).status_code == 400


def test_fake_oauth_checks_pkce_and_client(fake):
    token_url = f"{fake.url}/api/v1/oauth2/token"
    base = {"client_id": fake_qwen.CLIENT_ID, "scope": "openid profile email model.completion"}
    device = httpx2.post(
        f"{fake.url}/api/v1/oauth2/device/code",
        data={**base, "code_challenge": fake_qwen.s256("right"), "code_challenge_method": "S256"},
        timeout=10,
    ).json()
    fake.devices[device["device_code"]].steps = ["success", "success"]
    grant = {
        "grant_type": fake_qwen.DEVICE_GRANT,
        "client_id": fake_qwen.CLIENT_ID,
        "device_code": device["device_code"],
    }
    wrong = httpx2.post(token_url, data={**grant, "code_verifier": "wrong"}, timeout=10)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    right = httpx2.post(token_url, data={**grant, "code_verifier": "right"}, timeout=10)
    assert right.status_code == 200 and right.json()["resource_url"] == fake.url
    other_client = httpx2.post(token_url, data={**grant, "client_id": "x", "code_verifier": "right"}, timeout=10)
    assert other_client.status_code == 401
    as_json = httpx2.post(token_url, json={**grant, "code_verifier": "right"}, timeout=10)
    assert as_json.status_code == 400
