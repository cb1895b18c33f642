"""The Kiro adapter: rendering per account, headers, size limit, options, error classification."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest

from auth.credentials import AuthContext, CredentialError
from core.config import Account, Provider
from providers import ADAPTERS
from providers.kiro import Kiro, KiroBody, _next_month_utc
from tests.fakes.kiro_frames import IMPROPERLY_FORMED, event_frame, validate_kiro_request
from tests.fakes.kiro_server import (
    INPUT_TOO_LONG,
    INVALID_BEARER,
    LONG_TOOL_NAME,
    PROFILE_ARN,
    QUOTA_EXHAUSTED,
    SUSPENDED,
    THROTTLED,
    claude_code_body,
)
from translators import get_codec, ir
from translators.base import TranslationError
from translators.kiro import MAX_BODY_BYTES, kiro_tool_name

SOCIAL = AuthContext(
    "social-token-1", {"region": "us-east-1", "auth_method": "social", "profile_arn": PROFILE_ARN, "machine_id": "ab12"}
)
IDC = AuthContext("idc-token-1", {"region": "eu-central-1", "auth_method": "idc", "machine_id": "cd34"})
KIRO = Kiro()


def claude_ir(body: dict) -> ir.Request:
    return get_codec("claude").parse_request(body)


def simple(text: str = "hi") -> ir.Request:
    return claude_ir({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": text}]})


def build(
    req: ir.Request,
    auth: AuthContext = SOCIAL,
    provider: Provider | None = None,
    model: str | None = None,
    adapter: Kiro = KIRO,
):
    provider = provider or Provider()
    body = adapter.render(provider, req, model or req.model)
    up = adapter.build(provider, auth, body, request=req, model=model or req.model, stream=False, client_headers={})
    return body, up


def test_registered_under_its_provider_id():
    assert ADAPTERS["claude-kiro-oauth"] is not None and ADAPTERS["claude-kiro-oauth"].dialect == "kiro"
    assert KIRO.accepts_image_urls is False


def test_social_request_carries_the_profile_arn_and_ide_headers():
    body, up = build(simple())
    sent = json.loads(up.body)
    assert sent["profileArn"] == PROFILE_ARN
    assert {k: v for k, v in sent.items() if k != "profileArn"} == dict(body)
    assert validate_kiro_request(sent) is None
    assert up.url == "https://q.us-east-1.amazonaws.com/generateAssistantResponse"
    h = up.headers
    assert h["authorization"] == "Bearer social-token-1"
    assert h["content-type"] == "application/json" and h["accept-encoding"] == "identity"
    assert h["amz-sdk-request"] == "attempt=1; max=3" and h["x-amzn-kiro-agent-mode"] == "vibe"
    assert h["x-amzn-codewhisperer-optout"] == "true"
    assert h["x-amz-user-agent"] == "aws-sdk-js/1.0.34 KiroIDE-0.11.63-ab12"
    assert h["user-agent"].startswith("aws-sdk-js/1.0.34 ua/2.1 os/") and h["user-agent"].endswith(
        "KiroIDE-0.11.63-ab12"
    )
    assert up.stream_only is True
    # A new invocation id per send, and the body is not re-rendered for a resend.
    again = KIRO.build(
        Provider(), SOCIAL, body, request=simple(), model="claude-sonnet-4-5", stream=True, client_headers={}
    )
    assert again.headers["amz-sdk-invocation-id"] != h["amz-sdk-invocation-id"]
    assert again.body == up.body


def test_idc_request_has_no_profile_arn_and_uses_its_region():
    _, up = build(simple(), IDC)
    assert "profileArn" not in json.loads(up.body)
    assert up.url == "https://q.eu-central-1.amazonaws.com/generateAssistantResponse"
    # An ARN that somehow reached a non-social context is still not sent.
    odd = AuthContext("t", {**IDC.extra, "profile_arn": PROFILE_ARN})
    assert "profileArn" not in json.loads(build(simple(), odd)[1].body)


def test_configured_base_url_wins():
    _, up = build(simple(), provider=Provider(base_url="http://127.0.0.1:9/kiro/"))
    assert up.url == "http://127.0.0.1:9/kiro/generateAssistantResponse"


def test_each_request_gets_its_own_conversation_id():
    a, _ = build(simple())
    b, _ = build(simple())
    assert a["conversationState"]["conversationId"] != b["conversationState"]["conversationId"]


def test_model_map_extends_the_defaults_and_unknown_models_are_404():
    provider = Provider(model_map={"matrix-model": "claude-haiku-4.5"})
    body, _ = build(simple(), provider=provider, model="matrix-model")
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "claude-haiku-4.5"
    body, _ = build(simple(), model="claude-opus-4-5-20251101")
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "claude-opus-4.5"
    with pytest.raises(TranslationError) as e:
        KIRO.render(Provider(), simple(), "gpt-4o")
    assert e.value.status == 404 and "gpt-4o" in str(e.value)


def test_claude_code_request_passes_the_upstream_rules(caplog):
    req = claude_ir(claude_code_body("error_result"))
    adapter = Kiro()
    with caplog.at_level(logging.INFO, logger="providers.kiro"):
        body, up = build(req, adapter=adapter)
        build(req, adapter=adapter)  # the same dropped tools again: not logged again
    sent = json.loads(up.body)
    assert validate_kiro_request(sent) is None
    current = sent["conversationState"]["currentMessage"]["userInputMessage"]
    tools = {
        t["toolSpecification"]["name"]: t["toolSpecification"] for t in current["userInputMessageContext"]["tools"]
    }
    short = kiro_tool_name(LONG_TOOL_NAME)
    assert len(short) <= 64 and short in tools and LONG_TOOL_NAME not in tools
    assert "web_search" not in tools and len(tools) == 25
    assert len(tools["Bash"]["description"].encode()) <= 10240
    assert current["userInputMessageContext"]["toolResults"] == [
        {"toolUseId": "toolu_02C", "status": "error", "content": [{"text": "command not found"}]}
    ]
    first = sent["conversationState"]["history"][0]["userInputMessage"]["content"]
    assert first.startswith("You are Claude Code")  # the system text, nothing hidden before it
    history_results = sent["conversationState"]["history"][2]["userInputMessage"]["userInputMessageContext"]
    assert [r["status"] for r in history_results["toolResults"]] == ["error", "success"]
    assert up.tool_name_map == {short: LONG_TOOL_NAME} == body.tool_name_map
    # One log line for the dropped built-in (not one per request), without secrets.
    lines = [r.getMessage() for r in caplog.records if "left out tools" in r.getMessage()]
    assert lines == ["aiclient-mitm: claude-kiro-oauth: left out tools Kiro cannot run: web_search"]
    assert "social-token-1" not in caplog.text


def test_the_decoder_maps_shortened_tool_names_back():
    req = claude_ir(claude_code_body("ask_tool"))
    _, up = build(req)
    assert up.decoder is not None
    short = kiro_tool_name(LONG_TOOL_NAME)
    frames = event_frame("toolUseEvent", {"toolUseId": "t1", "name": short, "input": '{"city":"Paris"}', "stop": True})
    events = up.decoder().feed(frames)
    starts = [e for e in events if isinstance(e, ir.ToolCallStart)]
    assert [s.name for s in starts] == [LONG_TOOL_NAME]
    assert up.decoder() is not up.decoder()  # a fresh decoder per answer


def test_thinking_request_sends_the_tags_and_splits_the_answer():
    req = claude_ir(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    body, up = build(req)
    content = body["conversationState"]["currentMessage"]["userInputMessage"]["content"]
    assert content.startswith("<thinking_mode>enabled</thinking_mode><max_thinking_length>2048</max_thinking_length>")
    dec = up.decoder()
    events = (
        dec.feed(event_frame("assistantResponseEvent", {"content": "<thinking>\nhmm</thinking>\n\nok"})) + dec.close()
    )
    assert "".join(e.text for e in events if isinstance(e, ir.ThinkingDelta)) == "hmm"
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "ok"


def test_a_body_over_kiros_limit_is_refused_as_context_overflow():
    big = claude_ir(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}],
        }
    )
    with pytest.raises(TranslationError) as e:
        KIRO.render(Provider(), big, "claude-sonnet-4-5")
    assert e.value.status == 400 and str(e.value).startswith("prompt is too long: ")


def test_profile_arn_splice_keeps_valid_json():
    body, _ = build(simple('quote " and \\ and ü'))
    arn = 'arn:aws:codewhisperer:us-east-1:1:profile/"odd"'
    up = KIRO.build(
        Provider(),
        AuthContext("t", {"auth_method": "social", "profile_arn": arn}),
        body,
        request=simple(),
        model="claude-sonnet-4-5",
        stream=False,
        client_headers={},
    )
    assert json.loads(up.body)["profileArn"] == arn


def test_build_renders_itself_when_handed_a_plain_body():
    req = simple()
    up = KIRO.build(Provider(), IDC, {}, request=req, model=req.model, stream=False, client_headers={})
    assert validate_kiro_request(json.loads(up.body)) is None


# ---------------------------------------------------------------------------------------------
# Options


def test_options_are_validated_when_accounts_load(tmp_path):
    with pytest.raises(CredentialError, match=r"options\.web_search: unknown option"):
        KIRO.credential(Provider(options={"web_search": True}), Account(credentials=tmp_path / "x.json"))
    with pytest.raises(CredentialError, match=r"options\.placeholder_tool: expected bool"):
        KIRO.credential(Provider(options={"placeholder_tool": "yes"}), Account(credentials=tmp_path / "x.json"))
    with pytest.raises(CredentialError, match=r"options\.context_window: expected int"):
        KIRO.credential(Provider(options={"context_window": True}), Account(credentials=tmp_path / "x.json"))


def test_options_take_effect():
    provider = Provider(
        options={
            "identity_prompt": "You are a helpful assistant.",
            "placeholder_tool": True,
            "inference_config": False,
            "kiro_version": "0.12.1",
            "context_window": 1000,
        }
    )
    body, up = build(simple(), provider=provider)
    msg = body["conversationState"]["currentMessage"]["userInputMessage"]
    assert msg["content"].startswith("You are a helpful assistant.")
    assert [t["toolSpecification"]["name"] for t in msg["userInputMessageContext"]["tools"]] == ["no_tool_available"]
    assert "inferenceConfig" not in body
    assert up.headers["x-amz-user-agent"].endswith("KiroIDE-0.12.1-ab12")
    dec = up.decoder()
    events = dec.feed(event_frame("contextUsageEvent", {"contextUsagePercentage": 50.0})) + dec.close()
    usage = next(e.usage for e in events if isinstance(e, ir.UsageUpdate))
    assert usage.input_tokens == 500 and usage.estimated
    # Defaults: no identity prompt, no placeholder tool, the client's max_tokens as inferenceConfig.
    body, _ = build(simple())
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["content"] == "hi"
    assert "userInputMessageContext" not in body["conversationState"]["currentMessage"]["userInputMessage"]
    assert body["inferenceConfig"] == {"maxTokens": 100}


# ---------------------------------------------------------------------------------------------
# Errors


def _body(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def test_error_classification():
    c = KIRO.classify_error
    quota = c(402, _body(QUOTA_EXHAUSTED), {})
    assert quota.kind == "quota_exhausted" and "MONTHLY_REQUEST_COUNT" in quota.message
    assert quota.until == _next_month_utc(time.time())
    assert c(403, _body(SUSPENDED), {}).kind == "suspended"
    assert c(403, _body(INVALID_BEARER), {}).kind == "auth"
    assert c(401, b'{"message":"Unauthorized"}', {}).kind == "auth"
    assert c(403, b'{"message":"You must accept the terms to continue."}', {}).kind == "forbidden"
    limited = c(429, _body(THROTTLED), {"retry-after": "7"})
    assert limited.kind == "rate_limited" and limited.retry_after == 7
    bad = c(400, _body(IMPROPERLY_FORMED), {})
    assert bad.kind == "bad_request" and bad.message == "Improperly formed request."
    long = c(400, _body(INPUT_TOO_LONG), {})
    assert long.kind == "context_too_long" and long.message.startswith("prompt is too long: Input is too long.")
    assert c(500, b"oops", {}).kind == "transient" and c(503, b"", {"retry-after": "3"}).retry_after == 3
    assert c(404, b'{"message":"nope"}', {}).kind == "bad_request"


def test_quota_resets_on_the_first_of_next_month_utc():
    dec15 = datetime(2026, 12, 15, 10, tzinfo=UTC).timestamp()
    assert _next_month_utc(dec15) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert (
        _next_month_utc(datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp())
        == datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    )


def test_kiro_body_is_a_plain_dict_to_readers():
    body, _ = build(simple())
    assert isinstance(body, KiroBody) and isinstance(body, dict)
    assert json.loads(json.dumps(body)) == json.loads(body.encoded)
