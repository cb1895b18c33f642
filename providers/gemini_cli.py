"""Gemini CLI's backend, Google Code Assist (`cloudcode-pa`), reached with the CLI's Google login.

Requests are Gemini GenerateContentRequests inside the Code Assist envelope
`{model, project, request}` (upstreams.md 1.6); answers come back as `{"response": ...}` per body
and per SSE event, which the Gemini codec's decoder unwraps. Errors are Google RPC errors whose
details tell a short rate limit from a spent quota (upstreams.md 1.8).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auth.code_assist import ProjectDiscovery, ProjectStore, api_base, provider_options, request_headers
from auth.credentials import AuthContext
from auth.google_oauth import (
    DEFAULT_CREDENTIALS_PATH,
    DEFAULT_TOKEN_URL,
    GoogleOAuthCredential,
    decode_token_base64,
    read_token_file,
)
from core.config import Account, Provider
from providers.base import UpstreamFailure, UpstreamRequest, json_body, parse_retry_after, render_with_codec
from translators import ir
from translators.errors import extract_message
from translators.gemini import wrap_code_assist

# A rate limit asking to wait longer than this is treated as a spent quota (gemini-cli's rule).
MAX_SHORT_RETRY = 300.0

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RETRY_IN = re.compile(r"retry in ((?:\d+(?:\.\d*)?(?:h|ms|m|s))+)", re.IGNORECASE)
_CONTEXT_TOO_LONG = re.compile(r"input token count|exceeds the maximum number of tokens|too many tokens", re.I)
_TYPE = "type.googleapis.com/google.rpc."


def parse_duration(text: Any) -> float | None:
    """Seconds of a proto duration ("3.5s", "0.847655010s") or a Go one ("4h30m28.06s", "373.8ms")."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _google_error(body: bytes) -> dict[str, Any]:
    """The `error` object of `{"error": {...}}` or of the stream endpoints' `[{"error": {...}}]`."""
    try:
        obj = json.loads(body)
    except ValueError:
        return {}
    if isinstance(obj, list):
        obj = obj[0] if obj else {}
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else {}


class _Details:
    """The parts of google.rpc error details that decide what an error means for the account."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.reason = ""
        self.metadata: dict[str, Any] = {}
        self.retry_delay: float | None = None
        self.quota_ids: list[str] = []
        self.links: list[str] = []
        for d in error.get("details") or []:
            if not isinstance(d, dict):
                continue
            kind = str(d.get("@type", "")).removeprefix(_TYPE)
            if kind == "ErrorInfo" and not self.reason:
                self.reason = str(d.get("reason") or "")
                self.metadata = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
            elif kind == "RetryInfo":
                self.retry_delay = parse_duration(d.get("retryDelay"))
            elif kind == "QuotaFailure":
                violations = [v for v in d.get("violations") or [] if isinstance(v, dict)]
                self.quota_ids += [str(v.get("quotaId") or "") for v in violations]
            elif kind == "Help":
                self.links += [str(v["url"]) for v in d.get("links") or [] if isinstance(v, dict) and v.get("url")]
        for key in ("validation_link", "validationUrl", "validation_url"):
            if isinstance(self.metadata.get(key), str):
                self.links.insert(0, self.metadata[key])
        if isinstance(self.metadata.get("quota_limit"), str):
            self.quota_ids.append(self.metadata["quota_limit"])

    def quota(self, *needles: str) -> bool:
        return any(n in q for q in self.quota_ids for n in needles)


class GeminiCli:
    id = "gemini-cli-oauth"
    dialect = "gemini"
    default_base_url = "https://cloudcode-pa.googleapis.com"
    # gemini-cli's config/models.ts (2026-08) plus 2.5 Flash-Lite; aliases like "pro" are client-side.
    default_models = (
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-3-flash",
        "gemini-3.1-pro-preview",
        "gemini-3.1-pro-preview-customtools",
        "gemini-3.1-flash-lite",
        "gemini-3.5-flash",
    )
    accepts_image_urls = False
    # Answers come wrapped in {"response": ...}: a Gemini client must not get them relayed as they are.
    wraps_responses = True
    forwarded_query: frozenset[str] = frozenset()

    def credential(
        self, provider: Provider, account: Account, *, label: str | None = None, state_dir: Path | None = None
    ) -> GoogleOAuthCredential:
        """The account's login: `credentials_base64`, else the `credentials` file, else ~/.gemini/oauth_creds.json.

        `label` names the account in messages and keys its discovered project under `state_dir`
        (None: the project is only kept in memory)."""
        options = provider_options(provider)
        if label is None:
            index = next((i for i, a in enumerate(provider.accounts) if a is account), 0)
            label = account.display_label(index)
        path: Path | None
        if account.credentials_base64 is not None:
            path = None
            data = decode_token_base64(account.credentials_base64.get_secret_value())
        else:
            path = (account.credentials or DEFAULT_CREDENTIALS_PATH).expanduser()
            data = read_token_file(path)
        store = ProjectStore(state_dir)
        project = account.project_id or store.get(label)
        discovery = ProjectDiscovery(
            str(provider.base_url) if provider.base_url else None,
            label,
            store,
            poll_interval=options["onboard_poll_interval"],
            onboard_timeout=options["onboard_timeout"],
            http_timeout=min(provider.read_timeout, 30.0),
        )
        return GoogleOAuthCredential(
            label,
            data,
            path=path,
            token_url=str(provider.token_url or DEFAULT_TOKEN_URL),
            refresh_ahead=provider.refresh_ahead,
            project_id=project,
            project_source="config" if account.project_id else "discovered",
            resolve_project=discovery,
        )

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
        # A Gemini client's own body may name the model; Code Assist wants it only in the envelope.
        inner = {k: v for k, v in body.items() if k != "model"}
        envelope = wrap_code_assist(inner, model, auth.extra.get("project_id", ""))
        base = api_base(str(provider.base_url) if provider.base_url else self.default_base_url)
        url = f"{base}:streamGenerateContent?alt=sse" if stream else f"{base}:generateContent"
        content = json_body(envelope)
        return UpstreamRequest(url, request_headers(auth.token, model.removeprefix("models/"), stream=stream), content)

    def classify_error(
        self, status: int, body: bytes, headers: Mapping[str, str], account: str | None = None
    ) -> UpstreamFailure:
        """upstreams.md 1.8 (gemini-cli's googleQuotaErrors): delays, quota vs rate limit, verification."""
        message = extract_message(body)
        d = _Details(_google_error(body))
        who = f"account {account}" if account else "this account"
        if status == 401:
            return UpstreamFailure("auth", message)
        if status == 403:
            if d.reason == "VALIDATION_REQUIRED":
                todo = f"open {d.links[0]} signed in with that Google account" if d.links else "verify it in a browser"
                return UpstreamFailure(
                    "suspended",
                    f"Google requires verification of {who} before Code Assist serves it: {todo}, then retry "
                    f"(upstream: {message})",
                )
            return UpstreamFailure(
                "forbidden",
                f"Code Assist refused {who}: {message} (it needs a Gemini Code Assist licence and a project it may "
                "use; check accounts[].project_id)",
            )
        return classify_google_error(status, body, headers, account=account)


def classify_google_error(
    status: int, body: bytes, headers: Mapping[str, str], *, account: str | None = None
) -> UpstreamFailure:
    """What a Google API error means (upstreams.md 1.8, gemini-cli's googleQuotaErrors): delays from
    RetryInfo / quotaResetDelay / the message, spent quota vs short rate limit, capacity, 404, 400.
    Shared by every Google upstream; 401 and 403 are each provider's own to word."""
    error = _google_error(body)
    message = extract_message(body)
    d = _Details(error)
    reset_delay = parse_duration(d.metadata.get("quotaResetDelay"))
    retry_in = _RETRY_IN.search(message)
    delay = (
        d.retry_delay
        if d.retry_delay is not None
        else reset_delay
        if reset_delay is not None
        else parse_duration(retry_in.group(1))
        if retry_in
        else parse_retry_after(headers.get("retry-after"))
    )
    until = _timestamp(d.metadata.get("quotaResetTimeStamp"))
    if until is None and delay is not None:
        until = time.time() + delay
    who = f"account {account}" if account else "this account"
    if status in (429, 499, 503) and "limit: 0" in message:
        return UpstreamFailure("quota_exhausted", f"no quota for this model on {who}: {message}")
    if d.reason in ("MODEL_CAPACITY_EXHAUSTED", "MODEL_CAPACITY_EXCEEDED"):
        return UpstreamFailure("transient", message, delay)
    if d.reason in ("QUOTA_EXHAUSTED", "INSUFFICIENT_G1_CREDITS_BALANCE") or d.quota("PerDay", "Daily"):
        return UpstreamFailure("quota_exhausted", message, delay, until)
    if d.quota("PerMinute"):
        return UpstreamFailure("rate_limited", message, delay if delay is not None else 60.0)
    if d.reason == "RATE_LIMIT_EXCEEDED":
        if delay is not None and delay <= MAX_SHORT_RETRY:
            return UpstreamFailure("rate_limited", message, delay)
        return UpstreamFailure("quota_exhausted", message, delay, until)
    if not d.reason and "exhausted your capacity" in message:
        return UpstreamFailure("transient", message, delay)  # server capacity: switch account now
    if status == 429:
        return UpstreamFailure("rate_limited", message, delay)
    if status == 404:
        return UpstreamFailure("not_found", message)
    if status in (400, 413, 422):
        kind = "context_too_long" if _CONTEXT_TOO_LONG.search(message) else "bad_request"
        return UpstreamFailure(kind, message)
    return UpstreamFailure("transient", message, delay)


def google_error_reason(body: bytes) -> str:
    """`ErrorInfo.reason` of a Google API error body ("API_KEY_INVALID", "SERVICE_DISABLED"...), or ""."""
    return _Details(_google_error(body)).reason
