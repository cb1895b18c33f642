"""The contract of an upstream provider adapter."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from auth.credentials import AuthContext, Credential
from core.config import Account, Provider
from translators import get_codec, ir
from translators.base import StreamDecoder
from translators.thinking import limit_reasoning


def json_body(body: dict[str, Any]) -> bytes:
    """An upstream request body: compact JSON, non-ASCII kept as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def json_headers(stream: bool) -> dict[str, str]:
    """The headers every JSON upstream request starts from."""
    return {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        # The gateway reads the bytes; compressed bodies would have to be inflated first.
        "accept-encoding": "identity",
    }


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    # The upstream always answers with a stream (Kiro): unary clients get it decoded whole.
    stream_only: bool = False
    # A decoder other than the dialect codec's (Kiro's event stream, with its tool-name map).
    decoder: Callable[[], StreamDecoder] | None = None
    # Tool names the adapter shortened for the upstream: upstream name -> client name.
    tool_name_map: dict[str, str] | None = None
    # Applied to a unary answer after parsing (Claude structured output: forced tool -> JSON text).
    response_filter: Callable[[ir.Response], ir.Response] | None = None


class ProviderAdapter(Protocol):
    """Optional, looked up with getattr by the addons that use them (providers/google.py has all three):
    `dialect_for(model) -> str` when the upstream dialect depends on the model (see upstream_dialect);
    `count_tokens_request(provider, auth, request, model) -> UpstreamRequest | None` for a real count;
    `models_request(provider, auth) -> (url, headers)` + `parse_models(body) -> list[str]` for a
    model list call (sent once at start by the Pools addon)."""

    id: str
    # Codec name of the upstream's wire format.
    dialect: str
    default_base_url: str
    default_models: tuple[str, ...]
    # Whether the upstream fetches http(s) image URLs itself (else the gateway inlines them).
    accepts_image_urls: bool
    # Answers come in an envelope (Code Assist's {"response": ...}): a client of the same dialect
    # must still get them through the codec, never relayed as they are.
    wraps_responses: bool
    # Optional (read with getattr): query parameters of a client of the same dialect sent on to the
    # upstream (claude-custom: Claude Code's `?beta=true`, Anthropic's beta Messages surface), and
    # whether a passthrough body's reasoning effort is clamped like a rendered one.
    # forwarded_query: frozenset[str]
    # clamps_reasoning_effort: bool

    def credential(self, provider: Provider, account: Account, *, label: str, state_dir: Path | None) -> Credential:
        """The account's credential; raises auth.credentials.CredentialError saying why it is unusable.
        `label` names the account in messages; `state_dir` keeps what the account discovered
        (e.g. its Code Assist project) across restarts."""
        ...

    def render(self, provider: Provider, request: ir.Request, model: str) -> dict[str, Any]:
        """IR -> the upstream's request body (raises TranslationError for what it cannot take)."""
        ...

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
        """The upstream HTTP request. `body` is already rendered in the upstream's dialect (or the
        client's own body when the dialects match); adapters that render differently (Kiro) use
        `request`, the IR."""
        ...

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        """What an upstream error status + body means (rate limit with its delay, quota, auth...)."""
        ...


@dataclass(slots=True)
class UpstreamFailure:
    """What an upstream error means for the account that got it (the pool turns it into state).

    kind: rate_limited | quota_exhausted | auth | forbidden | suspended | bad_request |
    context_too_long | not_found | transient.
    """

    kind: str
    message: str
    # Seconds to wait before this account is tried again, when the upstream said so.
    retry_after: float | None = None
    # Epoch seconds when an exhausted quota resets, when known.
    until: float | None = None
    # The limit is the account's (a subscription's usage limit), not one model's.
    all_models: bool = False


def forward_query(url: str, client_query: Mapping[str, str], names: frozenset[str]) -> str:
    """The upstream URL with the client's parameters among `names` added (never credentials:
    callers name only harmless switches)."""
    kept = [(k, v) for k, v in client_query.items() if k in names]
    if not kept:
        return url
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(kept)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (the HTTP-date form is rare for APIs and read as unknown)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify_http_error(status: int, message: str, headers: Mapping[str, str]) -> UpstreamFailure:
    """The generic reading of an upstream error status; providers refine it from their bodies."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        return UpstreamFailure("rate_limited", message, retry_after)
    if status == 402:
        return UpstreamFailure("quota_exhausted", message, retry_after)
    if status == 401:
        return UpstreamFailure("auth", message)
    if status == 403:
        return UpstreamFailure("forbidden", message)
    if status == 404:
        return UpstreamFailure("not_found", message)
    if status in (400, 413, 422):
        return UpstreamFailure("bad_request", message)
    return UpstreamFailure("transient", message, retry_after)


def upstream_dialect(adapter: ProviderAdapter, model: str) -> str:
    """The upstream's wire dialect for this model: one fixed dialect for most adapters; an adapter
    whose upstream serves several (Vertex: Gemini and Claude models) says per model in dialect_for()."""
    dialect_for = getattr(adapter, "dialect_for", None)
    return dialect_for(model) if dialect_for is not None else adapter.dialect


def render_with_codec(
    dialect: str, request: ir.Request, model: str, provider: Provider | None = None
) -> dict[str, Any]:
    """render() of every adapter whose upstream speaks a client dialect. Adapters that pass their
    `provider` settings get the reasoning effort clamped to what the upstream takes (its dialect's
    ceiling or `max_reasoning_effort`); those that do not (Codex: its backend takes xhigh) get none."""
    if provider is not None:
        request = limit_reasoning(request, dialect, provider.max_reasoning_effort)
    return get_codec(dialect).render_request(request, model)
