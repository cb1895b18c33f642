"""Qwen Code's portal (`openai-qwen-oauth`): OpenAI Chat Completions with a Qwen Code OAuth token.

The request looks like qwen-code's own (its DashScope headers, usage on streams) and carries
nothing the client did not send unless the provider's `options` ask for it: qwen-code's peers
inject a "You are Qwen Code." system text and a never-called tool against stray tokens, which
here are opt-in (`identity_prompt`, `placeholder_tool`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth.credentials import AuthContext, Credential, CredentialError
from auth.qwen_oauth import DEFAULT_TOKEN_URL, QwenOAuthCredential, credentials_path, user_agent
from core.config import Account, Provider
from providers.base import (
    UpstreamFailure,
    UpstreamRequest,
    classify_http_error,
    json_body,
    json_headers,
    parse_retry_after,
    render_with_codec,
)
from translators import get_codec, ir
from translators.base import StreamDecoder
from translators.errors import extract_message

PLACEHOLDER_TOOL = "do_not_call_me"
QUOTA_MARKERS = ("insufficient_quota", "free allocated quota exceeded")
THROTTLE_MARKERS = ("throttling", "rate limit", "too many requests")
AUTH_MARKERS = ("invalid access token", "token expired")
# Qwen's daily quota resets at midnight Beijing time (UTC+8), i.e. 16:00 UTC.
QUOTA_RESET_UTC_HOUR = 16
AVAILABILITY_NOTE = "Qwen OAuth's free tier was discontinued on 2026-04-15; the account may no longer have access"


def next_quota_reset(now: float) -> float:
    """Epoch seconds of the next midnight in Beijing (16:00 UTC) strictly after `now`."""
    day = 86_400
    reset = now - now % day + QUOTA_RESET_UTC_HOUR * 3600
    return reset if reset > now else reset + day


def resource_base_url(resource_url: str) -> str:
    """`portal.qwen.ai` -> `https://portal.qwen.ai/v1` (scheme and /v1 added when missing)."""
    base = resource_url.strip().rstrip("/")
    if "://" not in base:
        base = f"https://{base}"
    return base if base.endswith("/v1") else f"{base}/v1"


@dataclass(frozen=True, slots=True)
class QwenOptions:
    """The provider's `options:` switches; everything that changes what the client sent is off."""

    # System text put before the client's system prompt (peers send "You are Qwen Code.").
    identity_prompt: str | None = None
    # Send a never-called tool when the request has none (against Qwen3's stray tool tokens);
    # calls to it are removed from answers.
    placeholder_tool: bool = False
    # Replace the QwenCode/<version> (<os>; <arch>) User-Agent the gateway sends.
    user_agent: str | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> QwenOptions:
        """Raises ValueError naming the bad key (`options.placeholder_tool: must be true or false`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"options.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
        for name in ("identity_prompt", "user_agent"):
            value = options.get(name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"options.{name}: must be a non-empty string")
        placeholder = options.get("placeholder_tool", False)
        if not isinstance(placeholder, bool):
            raise ValueError("options.placeholder_tool: must be true or false")
        return cls(options.get("identity_prompt"), placeholder, options.get("user_agent"))


class PlaceholderFilter:
    """Wraps the chat decoder: drops calls of the placeholder tool, renumbers the others, and
    turns a tool_calls finish with no real call into stop."""

    def __init__(self, inner: StreamDecoder) -> None:
        self._inner = inner
        self._hidden: set[int] = set()
        self._index: dict[int, int] = {}

    def feed(self, data: bytes) -> list[ir.Event]:
        return self._filter(self._inner.feed(data))

    def close(self) -> list[ir.Event]:
        return self._filter(self._inner.close())

    def _filter(self, events: list[ir.Event]) -> list[ir.Event]:
        out: list[ir.Event] = []
        for ev in events:
            kind = type(ev)
            if kind is ir.ToolCallStart:
                if ev.name == PLACEHOLDER_TOOL:
                    self._hidden.add(ev.index)
                    continue
                self._index[ev.index] = len(self._index)
            if kind in (ir.ToolCallStart, ir.ToolCallArgsDelta, ir.ToolCallEnd):
                if ev.index in self._hidden:
                    continue
                ev = dataclasses.replace(ev, index=self._index.get(ev.index, ev.index))
            elif kind is ir.Finish and ev.reason == ir.FinishReason.TOOL_CALLS and not self._index and self._hidden:
                ev = ir.Finish(ir.FinishReason.STOP, ev.stop_sequence)
            out.append(ev)
        return out


def _placeholder_decoder() -> StreamDecoder:
    return PlaceholderFilter(get_codec("openai_chat").decoder())


class Qwen:
    id = "openai-qwen-oauth"
    dialect = "openai_chat"
    default_base_url = "https://portal.qwen.ai/v1"
    default_models = ("qwen3-coder-plus", "qwen3-coder-flash", "coder-model", "vision-model")
    # Not known whether the portal fetches remote image URLs: the gateway inlines them.
    accepts_image_urls = False
    wraps_responses = False
    forwarded_query: frozenset[str] = frozenset()
    clamps_reasoning_effort = True

    def options(self, provider: Provider) -> QwenOptions:
        return QwenOptions.parse(provider.options)

    def credential(
        self, provider: Provider, account: Account, *, label: str = "", state_dir: Path | None = None
    ) -> Credential:
        """Also where `options` are checked: it runs at config load for every account, so a bad
        option makes every account unusable with the reason, in the log and in `auth status`."""
        try:
            self.options(provider)
        except ValueError as e:
            raise CredentialError(f"providers.{self.id}.{e}") from None
        if account.credentials_base64 is not None:
            raise CredentialError(
                "credentials_base64 is not supported for Qwen: its refresh token rotates and must be saved; "
                "use credentials: PATH to a Qwen Code token file"
            )
        if account.api_key is not None:
            raise CredentialError("Qwen accounts use credentials: PATH (a Qwen Code token file), not api_key")
        return QwenOAuthCredential(
            credentials_path(account.credentials),
            token_url=str(provider.token_url or DEFAULT_TOKEN_URL),
            refresh_ahead=provider.refresh_ahead,
            connect_timeout=provider.connect_timeout,
        )

    def base_url(self, provider: Provider, auth: AuthContext) -> str:
        if provider.base_url is not None:
            return str(provider.base_url).rstrip("/")
        resource = auth.extra.get("resource_url")
        return resource_base_url(resource) if resource else self.default_base_url

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
        options = self.options(provider)
        out = dict(body)
        placeholder = options.placeholder_tool and not out.get("tools")
        # With the placeholder the upstream always streams, so the filter sees unary answers too.
        upstream_stream = stream or placeholder
        if upstream_stream:
            out["stream"] = True
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        if options.identity_prompt:
            out["messages"] = _with_identity(out.get("messages") or [], options.identity_prompt)
        if placeholder:
            out["tools"] = [_placeholder_tool()]
        ua = options.user_agent or user_agent()
        headers = {
            **json_headers(upstream_stream),
            "authorization": f"Bearer {auth.token}",
            "user-agent": ua,
            "x-dashscope-useragent": ua,
            "x-dashscope-cachecontrol": "enable",
            "x-dashscope-authtype": "qwen-oauth",
            # The OpenAI Node SDK qwen-code is built on.
            "x-stainless-lang": "js",
            "x-stainless-runtime": "node",
            "x-stainless-package-version": "5.11.0",
        }
        return UpstreamRequest(
            f"{self.base_url(provider, auth)}/chat/completions",
            headers,
            json_body(out),
            stream_only=placeholder and not stream,
            decoder=_placeholder_decoder if placeholder else None,
        )

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        message = extract_message(body)
        text = f"{message} {_error_code(body)}".lower()
        retry_after = parse_retry_after(headers.get("retry-after"))
        throttled = any(m in text for m in THROTTLE_MARKERS)
        lowered = message.lower()
        if any(m in text for m in QUOTA_MARKERS) or (not throttled and "quota" in lowered and "exceeded" in lowered):
            until = next_quota_reset(time.time())
            return UpstreamFailure("quota_exhausted", f"Qwen daily quota exhausted: {message}", retry_after, until)
        if status == 429 or throttled:
            return UpstreamFailure("rate_limited", message, retry_after)
        if status == 401 or any(m in text for m in AUTH_MARKERS):
            return UpstreamFailure("auth", f"{message} ({AVAILABILITY_NOTE})")
        return classify_http_error(status, message, headers)


def _error_code(body: bytes) -> str:
    """`error.code` / `error.type` / top-level `code` of an OpenAI- or DashScope-shaped error."""
    try:
        obj = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
    return " ".join(str(err.get(k)) for k in ("code", "type") if isinstance(err.get(k), str))


def _with_identity(messages: list[Any], identity: str) -> list[Any]:
    """The identity text first in the (single) system message, which qwen models want first."""
    first = messages[0] if messages and isinstance(messages[0], dict) else None
    if first is not None and first.get("role") == "system":
        content = first.get("content")
        if isinstance(content, str):
            merged: Any = f"{identity}\n\n{content}" if content else identity
        elif isinstance(content, list):
            merged = [{"type": "text", "text": identity}, *content]
        else:
            merged = identity
        return [{**first, "content": merged}, *messages[1:]]
    return [{"role": "system", "content": identity}, *messages]


def _placeholder_tool() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": PLACEHOLDER_TOOL,
            "description": "Placeholder that exists only so the tool list is not empty. Never call it.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
