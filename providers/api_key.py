"""Upstreams reached with a plain API key: OpenAI-compatible, Claude and OpenAI Responses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auth.credentials import AuthContext, Credential, StaticKey
from core.config import Account, Provider
from providers.base import (
    UpstreamFailure,
    UpstreamRequest,
    classify_http_error,
    json_body,
    json_headers,
    render_with_codec,
)
from translators import get_codec, ir
from translators.claude import STRUCTURED_TOOL, StructuredOutputDecoder, structured_output, structured_response
from translators.errors import extract_message


def _base(provider: Provider, default: str) -> str:
    return str(provider.base_url or default).rstrip("/")


class _ApiKeyAdapter:
    """The shared shape: one URL under the base, the key in a header, the body as rendered."""

    id = ""
    dialect = ""
    default_base_url = ""
    default_models: tuple[str, ...] = ()
    accepts_image_urls = True
    wraps_responses = False
    forwarded_query: frozenset[str] = frozenset()
    clamps_reasoning_effort = True
    path = ""

    def credential(
        self, provider: Provider, account: Account, *, label: str = "", state_dir: Path | None = None
    ) -> Credential:
        return StaticKey(account.api_key.get_secret_value() if account.api_key else "")

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        return classify_http_error(status, extract_message(body), headers)

    def render(self, provider: Provider, request: ir.Request, model: str) -> dict[str, Any]:
        return render_with_codec(self.dialect, request, model, provider)

    def build(
        self,
        provider: Provider,
        auth: AuthContext,
        body: dict[str, Any],
        *,
        request: ir.Request,
        model: str,
        stream: bool,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        headers = json_headers(stream)
        headers.update(self.auth_headers(provider, auth.token, client_headers))
        return UpstreamRequest(self.url(_base(provider, self.default_base_url)), headers, json_body(body))

    def url(self, base: str) -> str:
        return base + self.path

    def auth_headers(self, provider: Provider, key: str, client_headers: Mapping[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}


class OpenAICustom(_ApiKeyAdapter):
    id = "openai-custom"
    dialect = "openai_chat"
    default_base_url = "https://api.openai.com/v1"
    default_models = ("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "o4-mini")
    path = "/chat/completions"


class OpenAIResponsesCustom(_ApiKeyAdapter):
    id = "openaiResponses-custom"
    dialect = "openai_responses"
    default_base_url = "https://api.openai.com/v1"
    default_models = ("gpt-4.1", "gpt-4.1-mini", "o4-mini", "gpt-5", "gpt-5-mini")
    path = "/responses"


class Demo(OpenAICustom):
    """The built-in demo upstream (addons/demo.py): canned OpenAI Chat answers from a loopback
    server the gateway runs itself; `default_base_url` is set when that server is bound."""

    id = "demo"
    default_base_url = "http://127.0.0.1:9/v1"
    default_models = ("demo",)

    def credential(
        self, provider: Provider, account: Account, *, label: str = "", state_dir: Path | None = None
    ) -> Credential:
        return StaticKey("demo")


class ClaudeCustom(_ApiKeyAdapter):
    id = "claude-custom"
    dialect = "claude"
    default_base_url = "https://api.anthropic.com"
    default_models = ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5")
    anthropic_version = "2023-06-01"
    forwarded_query = frozenset({"beta"})

    def build(
        self,
        provider: Provider,
        auth: AuthContext,
        body: dict[str, Any],
        *,
        request: ir.Request,
        model: str,
        stream: bool,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        up = super().build(
            provider, auth, body, request=request, model=model, stream=stream, client_headers=client_headers
        )
        choice = body.get("tool_choice")
        structured = structured_output(request.response_format) if request is not None else None
        if structured is not None and isinstance(choice, dict) and choice.get("name") == STRUCTURED_TOOL:
            wrapped = structured[1]
            up.decoder = lambda: StructuredOutputDecoder(get_codec("claude").decoder(), wrapped)
            up.response_filter = lambda resp: structured_response(resp, wrapped)
        return up

    def url(self, base: str) -> str:
        # Accept a base URL with or without /v1 (a peer breaks on exactly this).
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def auth_headers(self, provider: Provider, key: str, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {"authorization": f"Bearer {key}"} if provider.auth_header == "bearer" else {"x-api-key": key}
        headers["anthropic-version"] = client_headers.get("anthropic-version") or self.anthropic_version
        beta = client_headers.get("anthropic-beta")
        if beta:
            headers["anthropic-beta"] = beta
        return headers
