"""Kiro (`claude-kiro-oauth`): Claude models through the Kiro IDE's CodeWhisperer endpoint.

The request body is not a codec's: it is rendered from the IR by translators.kiro (conversation
rules in upstreams.md 2.5), the answer is always an AWS event stream (stream_only) decoded by
KiroStreamDecoder. Rendering happens in `render()`, before an account is authorised, so a
request Kiro cannot take is refused in the client's dialect; `build()` then only adds what
depends on the account (the social login's profileArn, the token, the region).
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auth.credentials import AuthContext, Credential, CredentialError
from auth.kiro_oauth import KIRO_VERSION, KiroCredential, credential_store
from core.config import Account, Provider
from providers.base import UpstreamFailure, UpstreamRequest, json_body, parse_retry_after
from translators import ir
from translators.base import TranslationError
from translators.kiro import (
    DEFAULT_MODEL_MAP,
    MAX_BODY_BYTES,
    KiroOptions,
    KiroStreamDecoder,
    parse_error,
    render_request,
    thinking_requested,
)
from translators.thinking import limit_reasoning

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://q.{region}.amazonaws.com"
DEFAULT_CONTEXT_WINDOW = 200_000
# Room left under MAX_BODY_BYTES for the profileArn that build() adds.
_ARN_ROOM = 256
_SDK = "aws-sdk-js/1.0.34"
_NODE = "22.21.1"
_UA_BASE = (
    f"{_SDK} ua/2.1 os/{sys.platform}#{platform.release()} lang/js md/nodejs#{_NODE} api/codewhispererstreaming#1.0.34"
)


@dataclass(slots=True, frozen=True)
class KiroSettings:
    """The provider's `options:` and `model_map`, validated."""

    render: KiroOptions
    kiro_version: str = KIRO_VERSION
    context_window: int = DEFAULT_CONTEXT_WINDOW


# option -> (type, what it does); README lists the same.
OPTIONS: dict[str, tuple[type, str]] = {
    "identity_prompt": (str, "text put before the system prompt (off by default)"),
    "placeholder_tool": (bool, "send a do-nothing tool when a request has none (off by default)"),
    "inference_config": (bool, "send max_tokens/temperature/top_p as inferenceConfig (on by default)"),
    "kiro_version": (str, f"Kiro IDE version in the User-Agent (default {KIRO_VERSION})"),
    "context_window": (int, f"context window for usage estimates (default {DEFAULT_CONTEXT_WINDOW})"),
}


def kiro_settings(provider: Provider) -> KiroSettings:
    """Raises ValueError naming the bad key."""
    opts = provider.options
    for key, value in opts.items():
        if key not in OPTIONS:
            raise ValueError(f"options.{key}: unknown option for claude-kiro-oauth (known: {', '.join(OPTIONS)})")
        kind = OPTIONS[key][0]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"options.{key}: expected {kind.__name__}, got {type(value).__name__}")
    window = opts.get("context_window", DEFAULT_CONTEXT_WINDOW)
    if window <= 0:
        raise ValueError("options.context_window: must be positive")
    render = KiroOptions(
        model_map={**DEFAULT_MODEL_MAP, **provider.model_map},
        identity_prompt=opts.get("identity_prompt") or None,
        placeholder_tool=opts.get("placeholder_tool", False),
        inference_config=opts.get("inference_config", True),
    )
    return KiroSettings(render, opts.get("kiro_version") or KIRO_VERSION, window)


class KiroBody(dict):
    """The rendered conversationState (a plain dict to every reader) plus what build() needs:
    its serialised bytes (measured once), the shortened tool names and the thinking switch."""

    __slots__ = ("encoded", "thinking", "tool_name_map")

    def __init__(self, body: dict[str, Any], encoded: bytes, tool_name_map: dict[str, str], thinking: bool) -> None:
        super().__init__(body)
        self.encoded = encoded
        self.tool_name_map = tool_name_map
        self.thinking = thinking


def _with_profile_arn(encoded: bytes, arn: str) -> bytes:
    """Appends `profileArn` to serialised JSON without serialising the (large) body again."""
    return encoded[:-1] + b',"profileArn":' + json.dumps(arn).encode() + b"}"


def _next_month_utc(now: float) -> float:
    """Kiro's monthly credits reset on the 1st, 00:00 UTC (what AIClient-2-API assumes too)."""
    d = datetime.fromtimestamp(now, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


class Kiro:
    id = "claude-kiro-oauth"
    dialect = "kiro"
    default_base_url = DEFAULT_BASE_URL
    default_models = (
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-haiku-4-5",
        "claude-sonnet-4",
        "auto",
    )
    accepts_image_urls = False
    wraps_responses = False
    forwarded_query: frozenset[str] = frozenset()

    def __init__(self) -> None:
        # Tool sets already reported: Claude Code sends web_search with every request, and one
        # line per request would drown the log.
        self._reported: set[tuple[str, ...]] = set()

    def _log_dropped(self, names: list[str]) -> None:
        key = tuple(sorted(names))
        level = logging.DEBUG if key in self._reported else logging.INFO
        if len(self._reported) < 256:
            self._reported.add(key)
        logger.log(level, "aiclient-mitm: claude-kiro-oauth: left out tools Kiro cannot run: %s", ", ".join(names))

    def credential(
        self, provider: Provider, account: Account, *, label: str = "", state_dir: Path | None = None
    ) -> Credential:
        try:
            settings = kiro_settings(provider)
        except ValueError as e:
            raise CredentialError(str(e)) from None
        secret = account.credentials_base64.get_secret_value() if account.credentials_base64 else None
        store = credential_store(account.credentials, secret)
        label = account.label or (account.credentials.name if account.credentials else "kiro")
        return KiroCredential(
            store,
            label=label,
            refresh_url=provider.refresh_url,
            refresh_idc_url=provider.refresh_idc_url,
            refresh_ahead=provider.refresh_ahead,
            timeout=max(provider.connect_timeout, 15.0),
            kiro_version=settings.kiro_version,
        )

    def render(self, provider: Provider, request: ir.Request, model: str) -> KiroBody:
        """IR -> Kiro body, refused in the client's dialect when Kiro cannot take it."""
        try:
            settings = kiro_settings(provider)
        except ValueError as e:
            raise TranslationError("", f"claude-kiro-oauth is misconfigured: {e}", status=500) from None
        conversation = str(uuid.uuid4())
        request = limit_reasoning(request, "kiro", provider.max_reasoning_effort)
        kiro = render_request(request, model, profile_arn=None, conversation_id=conversation, options=settings.render)
        if kiro.dropped_tools:
            self._log_dropped(kiro.dropped_tools)
        encoded = json_body(kiro.body)
        if len(encoded) + _ARN_ROOM > MAX_BODY_BYTES:
            # Kiro answers an oversized body with "Improperly formed request" (upstreams.md 2.5
            # rule 12); the words below are the ones Claude Code reads as "compact now".
            raise TranslationError(
                "",
                f"prompt is too long: {len(encoded)} bytes after translation for Kiro, over its limit of "
                f"{MAX_BODY_BYTES - _ARN_ROOM} bytes; compact or shorten the conversation",
                status=400,
            )
        return KiroBody(kiro.body, encoded, kiro.tool_name_map, thinking_requested(request))

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
        if not isinstance(body, KiroBody):
            body = self.render(provider, request, model)
        settings = kiro_settings(provider)
        region = auth.extra.get("region") or "us-east-1"
        encoded = body.encoded
        arn = auth.extra.get("profile_arn")
        if arn and auth.extra.get("auth_method") == "social":
            encoded = _with_profile_arn(encoded, arn)
        base = str(provider.base_url).rstrip("/") if provider.base_url else DEFAULT_BASE_URL.format(region=region)
        ide = f"KiroIDE-{settings.kiro_version}-{auth.extra.get('machine_id', '')}"
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "identity",  # the event stream is relayed byte for byte
            "authorization": f"Bearer {auth.token}",
            "amz-sdk-invocation-id": str(uuid.uuid4()),
            "amz-sdk-request": "attempt=1; max=3",
            "x-amzn-codewhisperer-optout": "true",
            "x-amzn-kiro-agent-mode": "vibe",
            "x-amz-user-agent": f"{_SDK} {ide}",
            "user-agent": f"{_UA_BASE} m/E {ide}",
        }
        names = body.tool_name_map
        decoder = functools.partial(KiroStreamDecoder, body.thinking, names, settings.context_window)
        return UpstreamRequest(
            f"{base}/generateAssistantResponse",
            headers,
            encoded,
            stream_only=True,
            decoder=decoder,
            tool_name_map=names or None,
        )

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        """upstreams.md 2.13: what a Kiro error means for the account that got it."""
        err = parse_error(status, body)
        message = err.message + (f" ({err.reason})" if err.reason else "")
        retry_after = parse_retry_after(headers.get("retry-after"))
        kind = err.kind
        if kind == "quota":
            return UpstreamFailure("quota_exhausted", message, retry_after, until=_next_month_utc(time.time()))
        if kind == "context_too_long":
            return UpstreamFailure("context_too_long", f"prompt is too long: {message}")
        if kind == "auth" and status == 403 and not _token_related(message):
            return UpstreamFailure("forbidden", message)
        mapped = {"throttled": "rate_limited", "suspended": "suspended", "auth": "auth"}.get(kind, kind)
        if mapped not in ("rate_limited", "suspended", "auth", "bad_request", "transient"):
            mapped = "transient" if status >= 500 else "bad_request"
        return UpstreamFailure(mapped, message, retry_after if mapped in ("rate_limited", "transient") else None)


def _token_related(message: str) -> bool:
    low = message.lower()
    return "token" in low or "bearer" in low or "expired" in low or "credential" in low
