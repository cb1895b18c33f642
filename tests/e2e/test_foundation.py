"""The foundation end to end: a real `mitmdump -s run.py`, real SDKs, fake upstreams on loopback."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import httpx2
import openai
import pytest

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY, api_key_providers
from tests.fakes.server import Fault
from tests.gateway import start_gateway

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def oa(gateway, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0, **kw)


def an(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)


# -- same-dialect passthrough with the official SDKs ------------------------------------------


def test_openai_sdk_unary_and_stream(gateway, fakes):
    client = oa(gateway)
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi there"}])
    assert reply.choices[0].message.content == "Hello! You said: hi there"
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi there"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello! You said: hi there"
    sent = fakes.openai.requests
    assert len(sent) == 2
    # The upstream got its own key, never the client's.
    assert all(r.headers["authorization"] == f"Bearer {OPENAI_KEY}" for r in sent)
    assert all(CLIENT_KEY not in json.dumps(r.headers) for r in sent)


def test_anthropic_sdk_unary_and_stream(gateway, fakes):
    client = an(gateway)
    msg = client.messages.create(
        model="claude-custom:claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    )
    assert msg.content[0].text == "Hello! You said: hello"
    with client.messages.stream(
        model="sonnet-alias", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello! You said: hello"
    sent = fakes.claude.requests
    assert [r.json["model"] for r in sent] == ["claude-sonnet-4-5", "claude-sonnet-4-5"]
    assert all(r.headers["x-api-key"] == CLAUDE_KEY for r in sent)
    assert fakes.openai.requests == []


def test_responses_sdk_via_provider_prefix(gateway, fakes):
    client = openai.OpenAI(base_url=f"{gateway.url}/openaiResponses-custom/v1", api_key=CLIENT_KEY, max_retries=0)
    resp = client.responses.create(model="gpt-4.1", input="ping")
    assert resp.output_text == "Hello! You said: ping"
    events = list(client.responses.create(model="gpt-4.1", input="ping", stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello! You said: ping"
    assert len(fakes.responses.requests) == 2
    assert fakes.responses.requests[0].headers["authorization"] == f"Bearer {RESPONSES_KEY}"


def test_stream_relays_chunk_by_chunk(gateway, fakes):
    """The first event reaches the client long before the upstream has finished the stream.

    The fake writes 60+ events 0.2 s apart (12 s in all); a buffering gateway would deliver the
    first one only at the end. The test stops reading after the first few events.
    """
    fakes.openai.write_delay = 0.2
    try:
        start = time.monotonic()
        with httpx2.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            headers=AUTH,
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a long story"}]},
            timeout=30,
        ) as r:
            assert r.status_code == 200
            events = []
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                if len(events) == 3:
                    break
        assert time.monotonic() - start < 5
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len({e["id"] for e in events}) == 1
    finally:
        fakes.openai.write_delay = 0.0


def test_passthrough_stream_drops_empty_data_frames(gateway, fakes):
    """The fake sends an empty `data:` frame mid-stream; the OpenAI SDK would crash on it."""
    with httpx2.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=AUTH,
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    ) as r:
        body = r.read().decode()
    events = [e for e in body.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events and all(e.strip() not in ("data:", "data: ") for e in events)
    assert events[-1].strip() == "data: [DONE]"


# -- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "model", "fake", "upstream_model"),
    [
        ("/claude-custom/v1/chat/completions", {}, "claude-x", "claude", "claude-x"),
        ("/v1/chat/completions", {"model-provider": "claude-custom"}, "claude-y", "claude", "claude-y"),
        ("/v1/chat/completions", {}, "sonnet-alias", "claude", "claude-sonnet-4-5"),
        ("/v1/chat/completions", {}, "claude-custom:claude-z", "claude", "claude-z"),
        ("/v1/chat/completions", {}, "gpt-default", "openai", "gpt-default"),
        ("/v1/chat/completions", {}, "qwen3:8b", "openai", "qwen3:8b"),
    ],
)
def test_provider_routing_order(gateway, fakes, path, headers, model, fake, upstream_model):
    r = httpx2.post(
        gateway.url + path,
        headers={**AUTH, **headers},
        json={"model": model, "messages": [{"role": "user", "content": "route me"}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    target = getattr(fakes, fake)
    assert [q.json["model"] for q in target.requests] == [upstream_model]


@pytest.mark.parametrize(
    ("path", "headers", "model", "needle"),
    [
        ("/v1/chat/completions", {"model-provider": "gemini-cli-oauth"}, "m", "provider not configured"),
        ("/v1/chat/completions", {"model-provider": "nonsense"}, "m", "unknown provider 'nonsense'"),
    ],
)
def test_unknown_or_unconfigured_provider_is_400_listing_configured(gateway, fakes, path, headers, model, needle):
    r = httpx2.post(
        gateway.url + path,
        headers={**AUTH, **headers},
        json={"model": model, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert needle in message and "openai-custom" in message and "claude-custom" in message
    assert fakes.request_count() == 0


# -- auth -------------------------------------------------------------------------------------


def test_wrong_key_never_reaches_upstream(gateway, fakes):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx2.post(f"{gateway.url}/v1beta/models/g:generateContent?key=wrong", json={"contents": []}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fakes.request_count() == 0


# -- local endpoints --------------------------------------------------------------------------


def test_health_models_preflight_and_404(gateway):
    health = httpx2.get(f"{gateway.url}/health", timeout=30).json()
    assert health["status"] == "ok"
    assert set(health["providers"]) == {"openai-custom", "claude-custom", "openaiResponses-custom"}
    assert CLIENT_KEY not in json.dumps(health) and OPENAI_KEY not in json.dumps(health)
    ids = [m.id for m in oa(gateway).models.list()]
    assert "sonnet-alias" in ids and "gpt-4o" in ids
    claude_models = an(gateway).models.list()
    assert "sonnet-alias" in [m.id for m in claude_models.data]
    gemini = httpx2.get(f"{gateway.url}/v1beta/models", headers={"x-goog-api-key": CLIENT_KEY}, timeout=30).json()
    assert "models/sonnet-alias" in [m["name"] for m in gemini["models"]]
    pre = httpx2.options(f"{gateway.url}/v1/chat/completions", headers={"origin": "http://x"}, timeout=30)
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    missing = httpx2.get(f"{gateway.url}/v1/nothing", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and "unknown endpoint" in missing.json()["error"]["message"]
    claude_404 = httpx2.post(f"{gateway.url}/v1/messages/nothing", headers=AUTH, timeout=30)
    assert claude_404.status_code == 404 and claude_404.json()["type"] == "error"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle", "shape"),
    [
        ("/v1/chat/completions", b"{not json", 400, "not valid JSON", "openai"),
        ("/v1/messages", b"[1, 2]", 400, "JSON object", "claude"),
        ("/v1/chat/completions", b'{"model": "m"}', 400, "messages", "openai"),
        ("/v1/messages", b'{"model": "m", "max_tokens": 5, "messages": "hi"}', 400, "messages", "claude"),
        ("/v1/chat/completions", b'{"model": 5, "messages": []}', 400, "model", "openai"),
        ("/v1beta/models/g:generateContent", b'{"contents": 3}', 400, "contents", "gemini"),
        (
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 70000 + b'"}]}',
            413,
            "max_body",
            "openai",
        ),
    ],
)
def test_bad_input_is_refused_in_dialect_and_not_forwarded(gateway, fakes, path, body, status, needle, shape):
    r = httpx2.post(gateway.url + path, headers={**AUTH, "content-type": "application/json"}, content=body, timeout=30)
    assert r.status_code == status, r.text
    data = r.json()
    message = {
        "openai": lambda d: d["error"]["message"],
        "claude": lambda d: d["error"]["message"],
        "gemini": lambda d: d["error"]["message"],
    }[shape](data)
    assert needle in message
    if shape == "claude":
        assert data["type"] == "error"
    if shape == "gemini":
        assert data["error"]["status"] == "INVALID_ARGUMENT"
    assert fakes.request_count() == 0


def test_chunked_oversized_body_is_413(gateway, fakes):
    def body():
        yield b'{"model":"m","messages":[{"role":"user","content":"'
        for _ in range(20):
            yield b"y" * 5000
        yield b'"}]}'

    r = httpx2.post(f"{gateway.url}/v1/chat/completions", headers=AUTH, content=body(), timeout=30)
    assert r.status_code == 413
    assert fakes.request_count() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_upstream_is_502_in_dialect(tmp_path, fakes):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(
        tmp_path,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "claude-custom",
            "providers": {"claude-custom": {"base_url": dead, "accounts": [{"api_key": "k"}]}},
            # Without a cooldown every request meets the dead upstream itself.
            "cooldown": {"transient": 0},
        },
    )
    try:
        for stream in (False, True):
            r = httpx2.post(
                f"{gw.url}/v1/messages",
                headers={"x-api-key": CLIENT_KEY},
                json={"model": "c", "max_tokens": 5, "stream": stream, "messages": [{"role": "user", "content": "x"}]},
                timeout=30,
            )
            assert r.status_code == 502
            assert r.json()["type"] == "error" and "unreachable" in r.json()["error"]["message"]
    finally:
        gw.stop()


def test_upstream_error_is_translated_with_its_message(tmp_path, fakes):
    """With no time to wait for the cooling account (retry.max_wait 0), the upstream's 429 is the answer."""
    config = {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": api_key_providers(fakes),
        "retry": {"max_wait": 0},
    }
    gw = start_gateway(tmp_path, config)
    try:
        fakes.openai.faults.append(
            Fault(
                status=429, body={"error": {"message": "slow down", "type": "rate_limit"}}, headers={"retry-after": "7"}
            )
        )
        with pytest.raises(openai.RateLimitError) as e:
            oa(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert "slow down" in str(e.value)
        assert e.value.response.headers["retry-after"] == "7"
    finally:
        gw.stop()


def test_account_without_key_gives_503_naming_why(tmp_path, fakes):
    # claude-custom has a usable account, so the built-in demo stays off (README "First run").
    gw = start_gateway(
        tmp_path,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": {
                "openai-custom": {
                    "base_url": f"{fakes.openai.url}/v1",
                    "accounts": [{"label": "empty", "api_key": "${AICM_NOT_SET}"}],
                },
                "claude-custom": {"base_url": fakes.claude.url, "accounts": [{"api_key": CLAUDE_KEY}]},
            },
        },
    )
    try:
        r = httpx2.post(
            f"{gw.url}/v1/chat/completions",
            headers=AUTH,
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            timeout=30,
        )
        assert r.status_code == 503
        assert "empty: api_key is empty" in r.json()["error"]["message"]
        assert "account empty is skipped" in gw.log()
    finally:
        gw.stop()
    assert fakes.request_count() == 0


# -- start-up ---------------------------------------------------------------------------------


def test_invalid_config_stops_the_start_naming_the_key(tmp_path):
    with pytest.raises(RuntimeError) as e:
        start_gateway(tmp_path, {"providers": {"openai-custom": {"base_url": "not a url"}}})
    assert "providers.openai-custom.base_url: not a URL" in str(e.value)
    assert "*:8080" not in str(e.value)


def test_secrets_never_reach_the_log(gateway, fakes):
    oa(gateway).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="typo-key", max_retries=0).models.list()
    log = gateway.log()
    for secret in (CLIENT_KEY, OPENAI_KEY, CLAUDE_KEY, RESPONSES_KEY, "typo-key"):
        assert secret not in log
