"""Router with mitmproxy's test helpers: endpoints, provider order, refusals."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.context import ROUTE, Gateway
from addons.router import Router, classify, dialect_for_path
from addons.unanswered import Unanswered
from core.config import parse_config


@pytest.mark.parametrize(
    ("method", "path", "alt", "expected"),
    [
        ("POST", "/v1/chat/completions", None, ("openai_chat", "generate", None, None)),
        ("POST", "/v1/responses", None, ("openai_responses", "generate", None, None)),
        ("POST", "/v1/messages", None, ("claude", "generate", None, None)),
        ("POST", "/v1/messages/count_tokens", None, ("claude", "count_tokens", None, None)),
        (
            "POST",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            None,
            ("gemini", "generate", False, "gemini-2.5-pro"),
        ),
        ("POST", "/v1beta/models/g:streamGenerateContent", "sse", ("gemini", "generate", True, "g")),
        ("POST", "/v1/models/g:countTokens", None, ("gemini", "count_tokens", False, "g")),
        ("GET", "/v1/models", None, ("openai_chat", "models", None, None)),
        ("GET", "/v1beta/models", None, ("gemini", "models", None, None)),
        ("GET", "/v1beta/models/g", None, ("gemini", "model", None, "g")),
        ("GET", "/health", None, ("openai_chat", "health", None, None)),
    ],
)
def test_classify(method, path, alt, expected):
    e = classify(method, path, alt)
    assert (e.dialect, e.operation, e.stream, e.path_model) == expected


def test_gemini_stream_mode_follows_alt():
    assert classify("POST", "/v1beta/models/g:streamGenerateContent", "sse").gemini_mode == "sse"
    assert classify("POST", "/v1beta/models/g:streamGenerateContent", None).gemini_mode == "json"


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/v1/messages?beta=true", "claude"),
        ("/claude-custom/v1/messages", "claude"),
        ("/v1beta/anything", "gemini"),
        ("/v1/responses", "openai_responses"),
        ("/whatever", "openai_chat"),
    ],
)
def test_dialect_for_path(path, dialect):
    assert dialect_for_path(path) == dialect


CONFIG = {
    "default_provider": "openai-custom",
    "providers": {"openai-custom": {}, "claude-custom": {}, "openaiResponses-custom": {"enabled": False}},
    "models": {"fast": "claude-custom:claude-haiku-4-5"},
    "limits": {"max_body": "1KiB"},
}


def route_of(path: str, body: dict | bytes, headers: dict[str, str] | None = None):
    router = Router(Gateway(parse_config(CONFIG)))
    flow = tflow.tflow()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    flow.request = http.Request.make("POST", f"http://127.0.0.1:1{path}", raw, headers or {})
    with taddons.context(router):
        router.requestheaders(flow)
        router.request(flow)
    return flow


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("path", "headers", "model", "provider", "upstream_model"),
    [
        ("/claude-custom/v1/chat/completions", {"model-provider": "openai-custom"}, "m", "claude-custom", "m"),
        ("/v1/chat/completions", {"model-provider": "claude-custom"}, "m", "claude-custom", "m"),
        ("/v1/chat/completions", {}, "fast", "claude-custom", "claude-haiku-4-5"),
        ("/v1/chat/completions", {"model-provider": "openai-custom"}, "fast", "openai-custom", "fast"),
        ("/v1/chat/completions", {}, "claude-custom:x", "claude-custom", "x"),
        ("/v1/chat/completions", {}, "llama3:8b", "openai-custom", "llama3:8b"),
        ("/v1/chat/completions", {}, "gpt-oss:20b", "openai-custom", "gpt-oss:20b"),
        ("/v1/chat/completions", {}, "qwen2.5-coder:7b-instruct", "openai-custom", "qwen2.5-coder:7b-instruct"),
        ("/v1/chat/completions", {}, "anything", "openai-custom", "anything"),
    ],
)
def test_provider_order(path, headers, model, provider, upstream_model):
    flow = route_of(path, chat(model), headers)
    assert flow.response is None
    route = flow.metadata[ROUTE]
    assert (route.provider, route.upstream_model, route.model) == (provider, upstream_model, model)


def test_disabled_provider_is_not_configured():
    flow = route_of("/openaiResponses-custom/v1/chat/completions", chat("m"))
    assert flow.response.status_code == 400
    assert "provider not configured 'openaiResponses-custom'" in flow.response.text
    assert "openai-custom, claude-custom" in flow.response.text


def test_announced_oversized_body_is_refused_before_reading():
    flow = tflow.tflow()
    flow.request = http.Request.make("POST", "http://127.0.0.1:1/v1/messages")
    flow.request.headers["content-length"] = "5000"
    router = Router(Gateway(parse_config(CONFIG)))
    with taddons.context(router):
        router.requestheaders(flow)
    assert flow.response.status_code == 413
    assert json.loads(flow.response.content)["error"]["type"] == "request_too_large"


def test_wrong_method_is_405():
    flow = tflow.tflow()
    flow.request = http.Request.make("GET", "http://127.0.0.1:1/v1/chat/completions")
    router = Router(Gateway(parse_config(CONFIG)))
    with taddons.context(router):
        router.request(flow)
    assert flow.response.status_code == 405


def test_unanswered_flow_fails_closed_in_dialect():
    """A routed flow nobody answered must not reach the reverse-proxy placeholder."""
    flow = tflow.tflow()
    flow.request = http.Request.make("GET", "http://127.0.0.1:1/v1/messages/whatever")
    addon = Unanswered()
    with taddons.context(addon):
        addon.request(flow)
    assert flow.response.status_code == 404
    assert json.loads(flow.response.content)["type"] == "error"


@pytest.mark.parametrize(
    ("model", "unknown"),
    [("nope-provider:gpt-4o", "nope-provider"), ("openai-costum:gpt-4o", "openai-costum"), ("my-oauth:m", "my-oauth")],
)
def test_unknown_provider_prefix_is_refused_naming_the_configured_ones(model, unknown):
    flow = route_of("/v1/chat/completions", chat(model))
    assert flow.response.status_code == 400
    message = json.loads(flow.response.content)["error"]["message"]
    assert f"unknown provider {unknown!r}" in message
    assert "configured providers: openai-custom, claude-custom" in message


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_root_is_a_local_probe(method):
    flow = tflow.tflow()
    flow.request = http.Request.make(method, "http://127.0.0.1:1/")
    router = Router(Gateway(parse_config(CONFIG)))
    with taddons.context(router):
        router.request(flow)
    assert flow.response is None
    assert flow.metadata[ROUTE].operation == "root"


def test_claude_query_is_kept_on_the_route():
    flow = route_of(
        "/v1/messages?beta=true", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert flow.metadata[ROUTE].query == {"beta": "true"}


def test_absolute_form_root_is_no_probe():
    """`GET http://other.host/` is a proxy request, not the gateway's reachability probe."""
    flow = tflow.tflow()
    flow.request = http.Request.make("GET", "http://example.invalid/")
    flow.request.authority = "example.invalid"
    router = Router(Gateway(parse_config(CONFIG)))
    with taddons.context(router):
        router.request(flow)
    assert flow.response is not None and flow.response.status_code == 404
