"""Kiro end to end: the official SDKs -> the real gateway (mitmdump) -> the fake Kiro, which writes
binary event-stream frames in hostile pieces and validates every body like the real service.

Accounts are token files in tmp_path (one social login, one IdC login with its client registration
beside it), refreshed against the fake's /refreshToken and /token endpoints.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import pytest
from mitmproxy import contentviews

from addons.kiro_view import CONTENT_TYPE, AwsEventStreamContentview, KiroView
from auth.credentials import AuthContext
from auth.kiro_oauth import format_time
from core.config import Provider
from providers.kiro import Kiro
from tests.conftest import CLIENT_KEY
from tests.drivers import DRIVERS, PNG, ClaudeDriver
from tests.e2e.test_matrix import thinking_of
from tests.fakes.kiro_server import (
    IMPROPERLY_FORMED,
    INPUT_TOO_LONG,
    LONG_TOOL_NAME,
    PROFILE_ARN,
    QUOTA_EXHAUSTED,
    SUSPENDED,
    THROTTLED,
    FakeKiro,
    InBandError,
    claude_code_body,
    token_file,
)
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway
from translators import get_codec

PROVIDER = "claude-kiro-oauth"
CLIENTS = ["openai_chat", "openai_responses", "claude", "gemini"]
CLIENT_ID, CLIENT_SECRET = "idc-client-1", "idc-client-secret-9f8e"
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def iso_in(seconds: float) -> str:
    return format_time(time.time() + seconds)


def make_accounts(root: Path, fake: FakeKiro, expires_in: float, tag: str) -> tuple[Path, Path]:
    """A social token file and an IdC login folder (token, registration, a decoy registration)."""
    fake.add_social(f"{tag}-social-access", f"{tag}-social-refresh")
    fake.add_idc(f"{tag}-idc-access", f"{tag}-idc-refresh", CLIENT_ID, CLIENT_SECRET)
    social = root / "social" / "kiro-auth-token.json"
    idc = root / "idc" / "kiro-auth-token.json"
    for path in (social, idc):
        path.parent.mkdir(parents=True)
    social_data = token_file("social", f"{tag}-social-access", f"{tag}-social-refresh", expires_at=iso_in(expires_in))
    social.write_text(json.dumps(social_data))
    idc_data = token_file(
        "idc", f"{tag}-idc-access", f"{tag}-idc-refresh", expires_at=iso_in(expires_in), client_id_hash="9c1d"
    )
    idc.write_text(json.dumps(idc_data))
    (idc.parent / "9c1d.json").write_text(json.dumps({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}))
    (idc.parent / "0000-decoy.json").write_text(json.dumps({"clientId": "decoy", "clientSecret": "decoy"}))
    for path in (social, idc):
        path.chmod(0o644)
    return social, idc


def gateway_config(fake: FakeKiro, social: Path, idc: Path) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "providers": {
            PROVIDER: {
                "base_url": fake.url,
                "refresh_url": f"{fake.url}/refreshToken",
                "refresh_idc_url": f"{fake.url}/token",
                "model_map": {"matrix-model": "claude-sonnet-4.5"},
                "read_timeout": 20,
                "accounts": [
                    {"label": "social", "credentials": str(social)},
                    {"label": "idc", "credentials": str(idc)},
                ],
            }
        },
        # These tests follow each account's token through the round-robin with the same prompts;
        # session affinity would keep them all on one account (tests/e2e/test_shared_state.py covers it).
        "affinity": {"enabled": False},
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKiro]:
    with FakeKiro() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeKiro) -> None:
    fake.clear()
    fake.inband.clear()
    fake.rejections.clear()
    fake.thinking_style = "tags"


@pytest.fixture(scope="module")
def accounts(fake: FakeKiro, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_accounts(tmp_path_factory.mktemp("kiro-accounts"), fake, 3600, "main")


@pytest.fixture(scope="module")
def gateway(fake, accounts, tmp_path_factory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("kiro-gw"), gateway_config(fake, *accounts))
    yield gw
    gw.stop()


@pytest.fixture
def fresh_gateway(fake, tmp_path) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    """A gateway of its own, for tests that disable accounts or start from expired tokens."""
    social, idc = make_accounts(tmp_path / "accounts", fake, 3600, tmp_path.name)
    gw = start_gateway(tmp_path / "gw", gateway_config(fake, social, idc))
    yield gw, social, idc
    gw.stop()


def bearers(fake: FakeKiro) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.generate_requests()]


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{url}/{PROVIDER}", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def no_rejections(fake: FakeKiro) -> None:
    assert fake.rejections == [], f"the fake refused bodies as improperly formed: {fake.rejections}"


# ---------------------------------------------------------------------------------------------
# Every client dialect


@STREAM
@pytest.mark.parametrize("client", CLIENTS)
def test_text(gateway, fake, client, stream):
    driver = DRIVERS[client](gateway.url, PROVIDER)
    assert driver.text("unicode please", stream) == "héllo wörld — 你好 🌍"
    assert driver.text("hi there", stream) == "Hello! You said: hi there"
    no_rejections(fake)
    sent = [r.json for r in fake.generate_requests()]
    assert all(
        s["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "claude-sonnet-4.5" for s in sent
    )


@STREAM
@pytest.mark.parametrize("client", CLIENTS)
def test_tool_round_trip(gateway, fake, client, stream):
    calls, answer = DRIVERS[client](gateway.url, PROVIDER).tool_round_trip(stream)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"
    no_rejections(fake)


@STREAM
@pytest.mark.parametrize("client", CLIENTS)
def test_image(gateway, fake, client, stream):
    assert DRIVERS[client](gateway.url, PROVIDER).image(stream) == f"I see 1 image(s): image/png {len(PNG)} bytes"
    (req,) = fake.generate_requests()
    (image,) = req.json["conversationState"]["currentMessage"]["userInputMessage"]["images"]
    assert image["format"] == "png"


@STREAM
@pytest.mark.parametrize("style", ["tags", "reasoning"])
@pytest.mark.parametrize("client", CLIENTS)
def test_thinking(gateway, fake, client, style, stream):
    fake.thinking_style = style
    assert thinking_of(client, gateway.url, PROVIDER, stream) == (
        "Let me think about this.",
        "Hello! You said: hi there",
    )
    (req,) = fake.generate_requests()
    assert req.json["conversationState"]["currentMessage"]["userInputMessage"]["content"].startswith("<thinking_mode>")


# ---------------------------------------------------------------------------------------------
# Claude Code


@STREAM
def test_claude_code_request_with_failed_tool_results(gateway, fake, stream):
    client = claude(gateway.url)
    body = claude_code_body("error_result")
    if stream:
        with client.messages.stream(**body) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**body)
    assert ClaudeDriver.text_of(msg) == "Tool results: command not found (error)"
    no_rejections(fake)
    (req,) = fake.generate_requests()
    tools = req.json["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"]
    names = [t["toolSpecification"]["name"] for t in tools]
    assert "web_search" not in names and len(names) == 25 and all(len(n) <= 64 for n in names)


@STREAM
def test_claude_code_long_tool_name_comes_back_intact(gateway, fake, stream):
    client = claude(gateway.url)
    body = claude_code_body("ask_tool")
    if stream:
        with client.messages.stream(**body) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**body)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [(LONG_TOOL_NAME, {"city": "Paris"})]  # and only once
    no_rejections(fake)


def test_upstream_context_overflow_becomes_claudes_prompt_too_long_in_stream(gateway, fake):
    """In-band "Input is too long" (a 200 stream) reaches Claude Code as its context-length error."""
    fake.inband.append(InBandError("ValidationException", "Input is too long.", after_frames=0))
    with (
        pytest.raises(anthropic.APIStatusError) as e,  # an `event: error` of a 200 stream
        claude(gateway.url).messages.stream(**claude_code_body("ask_tool")) as s,
    ):
        s.get_final_message()
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith("prompt is too long: ")


def test_upstream_context_overflow_status_becomes_claudes_prompt_too_long(gateway, fake):
    fake.faults.append(Fault(400, body=INPUT_TOO_LONG))
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(gateway.url).messages.create(**claude_code_body("ask_tool"))
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith("prompt is too long")


def test_oversized_conversation_is_refused_before_sending(gateway, fake):
    body = claude_code_body("ask_tool")
    body["messages"][-1]["content"] = "word " * 260_000  # ~1.3 MB once rendered
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(gateway.url).messages.create(**body)
    assert e.value.body["error"]["message"].startswith("prompt is too long: ")
    assert fake.generate_requests() == []


# ---------------------------------------------------------------------------------------------
# In-band errors


@pytest.mark.parametrize("client", CLIENTS)
def test_in_band_exception_ends_the_stream_with_the_clients_error(gateway, fake, client):
    fake.inband.append(InBandError(after_frames=3))
    body = {"model": "matrix-model", "stream": True}
    if client == "openai_chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": "long please"}]
    elif client == "openai_responses":
        path, body["input"] = "/v1/responses", "long please"
    elif client == "claude":
        path, body["max_tokens"] = "/v1/messages", 100
        body["messages"] = [{"role": "user", "content": "long please"}]
    else:
        path = "/v1beta/models/matrix-model:streamGenerateContent?alt=sse"
        body = {"contents": [{"role": "user", "parts": [{"text": "long please"}]}]}
    with httpx2.Client(timeout=15) as http:
        r = http.post(f"{gateway.url}/{PROVIDER}{path}", json=body, headers=AUTH)
    assert r.status_code == 200  # bytes were already on their way: the error is in-band
    text = r.text
    assert "ThrottlingException" in text and "Too many requests" in text
    expected_end = {
        "openai_chat": '"type":"rate_limit_error"',
        "openai_responses": "event: response.failed",
        "claude": "event: error",
        "gemini": '"status":"RESOURCE_EXHAUSTED"',
    }[client]
    assert expected_end in text
    if client == "openai_chat":
        assert text.rstrip().endswith("data: [DONE]")


def test_in_band_exception_in_a_unary_answer_is_an_http_error(fresh_gateway, fake):
    """Its own gateway: the throttled accounts cool down, which would change later tests' routing."""
    gateway = fresh_gateway[0]
    fake.inband.extend([InBandError(after_frames=3), InBandError(after_frames=3)])
    with pytest.raises(anthropic.RateLimitError):
        claude(gateway.url).messages.create(
            model="matrix-model", max_tokens=100, messages=[{"role": "user", "content": "long please"}]
        )


# ---------------------------------------------------------------------------------------------
# Tokens


@STREAM
def test_upstream_401_refreshes_once_and_resends(gateway, fake, stream):
    fake.faults.append(Fault(401, body={"message": "Unauthorized", "reason": None}))
    assert ClaudeDriver(gateway.url, PROVIDER).text("hi there", stream) == "Hello! You said: hi there"
    assert len(fake.refresh_requests()) == 1
    first, second = bearers(fake)
    assert first != second


def test_invalid_bearer_403_refreshes_every_account_once(gateway, fake, accounts):
    for path in accounts:
        fake.revoke(json.loads(path.read_text())["accessToken"])
    driver = ClaudeDriver(gateway.url, PROVIDER)
    assert driver.text("hi there", False) == "Hello! You said: hi there"
    assert driver.text("hi there", True) == "Hello! You said: hi there"
    assert len(fake.refresh_requests("/refreshToken")) == 1 and len(fake.refresh_requests("/token")) == 1
    for path in accounts:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_expired_tokens_are_refreshed_before_use(fake, tmp_path):
    social, idc = make_accounts(tmp_path / "accounts", fake, -120, "expired")
    gw = start_gateway(tmp_path / "gw", gateway_config(fake, social, idc))
    try:
        driver = ClaudeDriver(gw.url, PROVIDER)
        assert driver.text("hi there", False) == "Hello! You said: hi there"
        assert driver.text("hi there", True) == "Hello! You said: hi there"
    finally:
        gw.stop()
    assert len(fake.refresh_requests("/refreshToken")) == 1 and len(fake.refresh_requests("/token")) == 1
    (idc_refresh,) = fake.refresh_requests("/token")
    assert idc_refresh.json["clientSecret"] == CLIENT_SECRET  # from 9c1d.json, never the decoy
    assert not {"expired-social-access", "expired-idc-access"} & set(bearers(fake))
    for path in (social, idc):
        saved = json.loads(path.read_text())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert saved["accessToken"] in bearers(fake) and saved["x-ide-private"] == {"keep": "me"}
    assert "clientSecret" not in json.loads(idc.read_text())
    by_token = {r.headers["authorization"].removeprefix("Bearer "): r.json for r in fake.generate_requests()}
    assert by_token[json.loads(social.read_text())["accessToken"]]["profileArn"] == PROFILE_ARN
    assert "profileArn" not in by_token[json.loads(idc.read_text())["accessToken"]]


# ---------------------------------------------------------------------------------------------
# Upstream errors and the pool


@pytest.mark.parametrize(
    "fault",
    [
        Fault(402, body=QUOTA_EXHAUSTED),
        Fault(403, body=SUSPENDED),
        Fault(429, body=THROTTLED, headers={"retry-after": "30"}),
        Fault(503, body={"message": "Service unavailable", "reason": None}),
    ],
    ids=["quota", "suspended", "throttled", "unavailable"],
)
def test_account_failures_fail_over_to_the_other_account(fresh_gateway, fake, fault):
    gw, _, _ = fresh_gateway
    fake.faults.append(fault)
    driver = ClaudeDriver(gw.url, PROVIDER)
    assert driver.text("hi there", False) == "Hello! You said: hi there"
    failed, served = bearers(fake)
    assert failed != served
    assert fake.refresh_requests() == []  # not a token problem
    for stream in (False, True):  # the failed account is left alone afterwards
        assert driver.text("hi there", stream) == "Hello! You said: hi there"
    assert bearers(fake)[2:] == [served, served]


def test_improperly_formed_is_the_clients_error_and_does_not_penalise_the_account(fresh_gateway, fake):
    gw, _, _ = fresh_gateway
    fake.faults.append(Fault(400, body=IMPROPERLY_FORMED))
    driver = ClaudeDriver(gw.url, PROVIDER)
    with pytest.raises(anthropic.BadRequestError) as e:
        driver.text("hi there", False)
    assert "Improperly formed request." in e.value.body["error"]["message"]
    assert len(fake.generate_requests()) == 1  # no failover: another account would fail the same way
    for _ in range(3):
        assert driver.text("hi there", False) == "Hello! You said: hi there"
    assert len(set(bearers(fake))) == 2  # both accounts still serve


# ---------------------------------------------------------------------------------------------
# mitmweb content view


def _capture(fake: FakeKiro) -> bytes:
    """A real answer body as it crosses the wire (what mitmweb would have recorded)."""
    fake.add_social("view-access", "view-refresh")
    req = get_codec("claude").parse_request(
        {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "weather tool 你好"}],
         "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]}
    )  # fmt: skip
    kiro = Kiro()
    body = kiro.render(Provider(), req, req.model)
    ctx = AuthContext("view-access", {"auth_method": "social", "profile_arn": PROFILE_ARN, "region": "us-east-1"})
    up = kiro.build(
        Provider(base_url=fake.url), ctx, body, request=req, model=req.model, stream=True, client_headers={}
    )
    with httpx2.Client(timeout=10) as http:
        r = http.post(up.url, content=up.body, headers=up.headers)
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE
    return r.content


def _render(data: bytes) -> tuple[str, str]:
    """(first line, the rest) as mitmweb shows them."""
    view = AwsEventStreamContentview()
    desc, _, text = view.prettify(data, contentviews.Metadata(content_type=CONTENT_TYPE)).partition("\n")
    return desc, text


def test_content_view_renders_a_captured_kiro_answer(fake):
    data = _capture(fake)
    KiroView().load(None)  # registers the view, as when mitmweb loads run.py: mitmproxy then picks it
    assert isinstance(
        contentviews.registry.get_view(data, contentviews.Metadata(content_type=CONTENT_TYPE)),
        AwsEventStreamContentview,
    )
    desc, text = _render(data)
    assert desc.startswith("AWS event stream: ") and "exception" not in desc
    assert "event toolUseEvent" in text and "event metadataEvent" in text and "event meteringEvent" in text
    assert '"toolUseId": "tooluse_' in text and '"contextUsagePercentage"' in text
    assert "-- tool call get_weather (tooluse_" in text and '{"city": "Paris"}' in text
    view = AwsEventStreamContentview()
    assert view.render_priority(data, contentviews.Metadata(content_type=CONTENT_TYPE)) == 1.0
    assert view.render_priority(data, contentviews.Metadata(content_type="application/json")) == 0.0

    fake.inband.append(InBandError(after_frames=1))
    desc, text = _render(_capture(fake))
    assert "1 exception(s)" in desc and "exception ThrottlingException" in text and "Too many requests" in text


def test_content_view_never_raises_on_broken_bodies(fake):
    data = _capture(fake)
    desc, text = _render(data[:-7])
    assert desc.endswith(", broken") and "stream broken after" in text and "truncated inside a frame" in text
    corrupt = bytearray(data)
    corrupt[40] ^= 0xFF
    desc, text = _render(bytes(corrupt))
    assert "broken" in desc and "CRC mismatch" in text
    for junk in (b"", b"\x00" * 3, b"not an event stream at all", bytes(range(256)) * 4):
        _render(junk)


def test_content_view_addon_registers_once():
    addon = KiroView()
    addon.load(None)
    assert contentviews.registry["AWS event stream"] is addon.view
    again = KiroView()
    again.load(None)  # a second load (script reload) replaces it rather than adding another
    assert contentviews.registry["AWS event stream"] is again.view
    assert sum(name == "aws event stream" for name in contentviews.registry) == 1
