"""The ChatGPT Codex backend (`openai-codex-oauth`): the Responses API behind a Codex CLI login.

The backend takes a Responses request with its own rules (upstreams-wave2.md 1.5): `store: false`,
always `stream: true`, `instructions` present, a fixed set of top-level fields (anything else --
`max_output_tokens`, `temperature`, ... -- is refused with "Unsupported parameter"). Every client
request is therefore rendered from the IR (never passed through) and reduced to those fields;
unary clients get the stream decoded whole. The gateway names itself in `originator` and the
User-Agent, in the shape the backend expects, instead of posing as the Codex CLI.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth.codex_oauth import DEFAULT_TOKEN_URL, CodexCredential, credentials_path
from auth.credentials import AuthContext, Credential, CredentialError
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
from translators import ir
from translators.errors import extract_message
from translators.openai_responses import ResponsesDecoder

GATEWAY_VERSION = "0.1.0"
ORIGINATOR = "aiclient_mitm"
# The client version /models is asked for (the backend filters its list by it).
CLIENT_VERSION = "0.146.0"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
# The top-level fields the official client sends; everything else is refused or meaningless here.
ALLOWED_FIELDS = frozenset(
    {
        "model",
        "instructions",
        "input",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "store",
        "stream",
        "include",
        "prompt_cache_key",
        "text",
    }
)
# The models the backend served in late 2026 (used until {base_url}/models answers).
FALLBACK_MODELS = (
    "gpt-5.6-sol",
    "gpt-5.6-terra",
    "gpt-5.6-luna",
    "gpt-5.5",
    "gpt-5.4",
    "gpt-5.4-mini",
    "gpt-5.3-codex-spark",
)
# In-stream failure codes (response.failed / error events) and what they mean for the account.
STREAM_CODES = {
    "usage_limit_reached": 429,
    "insufficient_quota": 429,
    "rate_limit_exceeded": 429,
    "usage_not_included": 403,
    "context_length_exceeded": 400,
    "invalid_encrypted_content": 400,
    "server_is_overloaded": 503,
    "slow_down": 503,
}
_CODE_PREFIX = re.compile(r"^([a-z_]+): ")
_RESETS_IN = re.compile(r"\(resets in (\d+(?:\.\d+)?) s\)")
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)
_USAGE_HEADER = re.compile(r"^x-codex-(primary|secondary)-(used-percent|window-minutes|reset-at|reset-after-seconds)$")


def user_agent() -> str:
    """`<originator>/<version> (<os> <release>; <arch>) <runtime>` -- the Codex CLI's shape, our name."""
    system = platform.system() or "unknown"
    release = platform.release() or "0"
    arch = platform.machine() or "unknown"
    return f"{ORIGINATOR}/{GATEWAY_VERSION} ({system} {release}; {arch}) aiclient-mitm (gateway; {GATEWAY_VERSION})"


def prompt_cache_key(body: Mapping[str, Any]) -> str:
    """A stable id per conversation: the hash of its instructions and first input item, so every turn
    of one conversation shares the backend's prompt cache (and the same session_id)."""
    items = body.get("input")
    first = items[0] if isinstance(items, list) and items else items
    seed = json.dumps([body.get("instructions"), first], sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def codex_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The rendered Responses body reduced to what the Codex backend accepts, with its rules applied."""
    out = {k: v for k, v in body.items() if k in ALLOWED_FIELDS}
    instructions = out.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        out["instructions"] = DEFAULT_INSTRUCTIONS
    items = out.get("input")
    if isinstance(items, str):
        out["input"] = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    elif isinstance(items, list):
        # With store: false, ids point at nothing the backend kept: send the items without them.
        out["input"] = [{k: v for k, v in i.items() if k != "id"} if isinstance(i, dict) else i for i in items]
    out["store"] = False
    out["stream"] = True
    include = [i for i in out.get("include") or [] if isinstance(i, str)]
    if "reasoning.encrypted_content" not in include:
        include.append("reasoning.encrypted_content")
    out["include"] = include
    reasoning = out.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none") and "summary" not in reasoning:
        # Without a summary request the backend returns no reasoning text at all.
        out["reasoning"] = {**reasoning, "summary": "auto"}
    if out.get("tools"):
        out.setdefault("tool_choice", "auto")
        out.setdefault("parallel_tool_calls", True)
    out.setdefault("prompt_cache_key", prompt_cache_key(out))
    return out


@dataclass(slots=True)
class UsageWindow:
    """One usage window the backend reported for an account (x-codex-primary-*, -secondary-*)."""

    used_percent: float | None = None
    window_minutes: int | None = None
    resets_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"used_percent": self.used_percent, "window_minutes": self.window_minutes, "resets_at": self.resets_at}


def usage_windows(headers: Mapping[str, str], now: float | None = None) -> dict[str, dict[str, Any]]:
    """{"primary": {...}, "secondary": {...}} from the x-codex-* headers of any answer ({} when absent)."""
    windows: dict[str, UsageWindow] = {}
    for name, value in headers.items():
        m = _USAGE_HEADER.match(name.lower())
        if m is None:
            continue
        window = windows.setdefault(m.group(1), UsageWindow())
        try:
            number = float(value)
        except ValueError:
            continue
        field = m.group(2)
        if field == "used-percent":
            window.used_percent = number
        elif field == "window-minutes":
            window.window_minutes = int(number)
        elif field == "reset-at":
            window.resets_at = number
        elif window.resets_at is None:
            window.resets_at = (time.time() if now is None else now) + number
    return {k: w.as_dict() for k, w in windows.items()}


class CodexDecoder(ResponsesDecoder):
    """The Responses decoder, keeping the code of an in-stream failure in the error's message
    (`usage_limit_reached: ...`), so the account can be cooled or disabled as for the HTTP form."""

    def _event(self, payload: str, out: list[ir.Event]) -> None:
        before = len(out)
        super()._event(payload, out)
        if len(out) > before and type(out[-1]) is ir.StreamError:
            out[-1] = _coded_error(payload, out[-1])  # only on a failure: one small event parsed again


def _coded_error(payload: str, error: ir.StreamError) -> ir.StreamError:
    try:
        obj = json.loads(payload)
    except ValueError:
        return error
    if not isinstance(obj, dict):
        return error
    err: Any = obj.get("error") if obj.get("type") == "error" else (obj.get("response") or {}).get("error")
    if obj.get("type") == "error" and not isinstance(err, dict):
        err = obj
    if not isinstance(err, dict):
        return error
    code = err.get("code") or err.get("type")
    if not isinstance(code, str) or not code:
        return error
    message = f"{code}: {error.message}"
    resets = err.get("resets_in_seconds")
    if isinstance(resets, int | float) and not isinstance(resets, bool):
        message += f" (resets in {resets:g} s)"
    return ir.StreamError(message, STREAM_CODES.get(code, error.status))


def _codex_decoder() -> CodexDecoder:
    return CodexDecoder()


class Codex:
    id = "openai-codex-oauth"
    dialect = "openai_responses"
    default_base_url = "https://chatgpt.com/backend-api/codex"
    default_models = FALLBACK_MODELS
    # Not known whether the backend fetches image URLs itself: the gateway inlines them.
    accepts_image_urls = False
    # Never passed through, even to Responses clients: the backend's body rules must be applied to
    # what the codec renders, and its answers are always streams.
    wraps_responses = True

    def credential(
        self, provider: Provider, account: Account, *, label: str = "", state_dir: Path | None = None
    ) -> Credential:
        if account.credentials_base64 is not None:
            raise CredentialError(
                "credentials_base64 is not supported for Codex: its refresh token rotates and must be saved; "
                "use credentials: PATH to a Codex auth.json"
            )
        if account.api_key is not None:
            raise CredentialError(
                "Codex accounts use credentials: PATH (the Codex CLI's auth.json); an OpenAI API key belongs "
                "in openaiResponses-custom"
            )
        return CodexCredential(
            credentials_path(account.credentials),
            token_url=str(provider.token_url or DEFAULT_TOKEN_URL),
            refresh_ahead=provider.refresh_ahead,
            connect_timeout=provider.connect_timeout,
        )

    def base_url(self, provider: Provider) -> str:
        return str(provider.base_url or self.default_base_url).rstrip("/")

    def render(self, provider: Provider, request: ir.Request, model: str) -> dict[str, Any]:
        return render_with_codec(self.dialect, request, model)

    def headers(self, auth: AuthContext, *, stream: bool = True) -> dict[str, str]:
        return {
            **json_headers(stream),
            "authorization": f"Bearer {auth.token}",
            "chatgpt-account-id": auth.extra.get("account_id", ""),
            "originator": ORIGINATOR,
            "user-agent": user_agent(),
        }

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
        out = codex_body(body)
        headers = self.headers(auth)
        headers["session_id"] = out["prompt_cache_key"]
        return UpstreamRequest(
            f"{self.base_url(provider)}/responses",
            headers,
            json_body(out),
            stream_only=True,
            decoder=_codex_decoder,
        )

    # -- what answers mean -----------------------------------------------------------------------

    def classify_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        err = _error_object(body)
        code = str(err.get("type") or err.get("code") or "")
        message = _message(err, body)
        retry_after = parse_retry_after(headers.get("retry-after"))
        usage_limit = status == 429 and "usage limit" in message.lower()
        if code in ("usage_limit_reached", "insufficient_quota") or usage_limit:
            return self._usage_limit(err, message, retry_after)
        if code == "usage_not_included":
            return UpstreamFailure("suspended", f"this ChatGPT plan does not include Codex: {message}")
        if code == "context_length_exceeded" or status == 413:
            return UpstreamFailure("context_too_long", message)
        if code in ("server_is_overloaded", "slow_down"):
            return UpstreamFailure("transient", message, retry_after)
        if status == 429:
            return UpstreamFailure("rate_limited", message, retry_after or _try_again(message))
        return classify_http_error(status, message, headers)

    def classify_stream_error(self, error: ir.StreamError) -> UpstreamFailure:
        """An error inside a 200 stream (response.failed / error event), read like the HTTP form."""
        m = _CODE_PREFIX.match(error.message)
        code = m.group(1) if m else ""
        if code in ("usage_limit_reached", "insufficient_quota"):
            resets = _RESETS_IN.search(error.message)
            retry = float(resets.group(1)) if resets else None
            until = time.time() + retry if retry is not None else None
            return UpstreamFailure("quota_exhausted", error.message, retry, until, all_models=True)
        if code == "usage_not_included":
            return UpstreamFailure("suspended", f"this ChatGPT plan does not include Codex: {error.message}")
        if code == "rate_limit_exceeded" or error.status == 429:
            return UpstreamFailure("rate_limited", error.message, _try_again(error.message))
        if code == "context_length_exceeded":
            return UpstreamFailure("context_too_long", error.message)
        if error.status == 400:
            return UpstreamFailure("bad_request", error.message)
        return UpstreamFailure("transient", error.message)

    def usage_windows(self, headers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        return usage_windows(headers)

    @staticmethod
    def _usage_limit(err: Mapping[str, Any], message: str, retry_after: float | None) -> UpstreamFailure:
        now = time.time()
        until = err.get("resets_at")
        resets_in = err.get("resets_in_seconds")
        if not isinstance(until, int | float) or isinstance(until, bool):
            until = now + resets_in if isinstance(resets_in, int | float) and not isinstance(resets_in, bool) else None
        plan = err.get("plan_type")
        text = f"ChatGPT usage limit reached{f' ({plan} plan)' if isinstance(plan, str) else ''}: {message}"
        wait = max(0.0, float(until) - now) if until is not None else retry_after
        return UpstreamFailure(
            "quota_exhausted", text, wait, float(until) if until is not None else None, all_models=True
        )

    # -- models ----------------------------------------------------------------------------------

    def models_request(self, provider: Provider, auth: AuthContext) -> tuple[str, dict[str, str]]:
        """GET {base_url}/models: the URL and headers (the Pools addon sends it once at start)."""
        return f"{self.base_url(provider)}/models?client_version={CLIENT_VERSION}", self.headers(auth, stream=False)

    @staticmethod
    def parse_models(body: Any) -> list[str]:
        """Slugs of `{"models": [{"slug", "visibility", ...}]}`, hidden ones left out."""
        models = body.get("models") if isinstance(body, dict) else None
        out = []
        for m in models if isinstance(models, list) else []:
            if isinstance(m, dict) and isinstance(m.get("slug"), str) and m.get("visibility") not in ("hide", "hidden"):
                out.append(m["slug"])
        return out


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    err = obj.get("error")
    return err if isinstance(err, dict) else obj


def _message(err: Mapping[str, Any], body: bytes) -> str:
    """The backend's validation errors are FastAPI-shaped (`{"detail": ...}`); others OpenAI-shaped."""
    detail = err.get("detail")
    if isinstance(detail, str) and detail:
        return detail
    message = err.get("message")
    return message if isinstance(message, str) and message else extract_message(body)


def _try_again(message: str) -> float | None:
    m = _TRY_AGAIN.search(message)
    if m is None:
        return None
    value = float(m.group(1))
    return value / 1000.0 if m.group(2).lower() == "ms" else value
