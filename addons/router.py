"""Router: recognises the endpoint, parses the body once into the IR and picks the provider.

Provider order: path prefix `/<provider-id>/...`, then the `Model-Provider` header, then the
`models:` aliases (or `provider:model` in the model field), then `default_provider`.
"""

from __future__ import annotations

import difflib
import logging
import re
import urllib.parse
from dataclasses import dataclass

from mitmproxy import http

from addons import replies
from addons.context import ROUTE, Gateway, Route
from core.body_decode import BodyDecodeError, decode_body
from core.config import PROVIDER_IDS
from translators import get_codec, validate
from translators.base import TranslationError

logger = logging.getLogger(__name__)

# The Gemini API's path, and Vertex AI's (google-genai in Vertex mode pointed at the gateway; the
# client's project and location are not used: the provider's account decides).
_GEMINI_PATH = re.compile(
    r"^/(?:v1beta|v1|v1beta1)/(?:projects/[^/]+/locations/[^/]+/)?(?:publishers/google/)?"
    r"models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$"
)
_MODEL_PATH = re.compile(r"^/(v1beta|v1)/models/([^/:]+)$")
# POST /admin/accounts/{provider}/{label}/{reset|disable|enable}; the label is URL-encoded.
_ADMIN_ACCOUNT_PATH = re.compile(r"^/admin/accounts/([^/]+)/([^/]+)/(reset|disable|enable)$")
# Operations whose POST body is not an LLM request: never parsed into the IR.
_NOT_LLM = frozenset({"telemetry", "admin_reload", "admin_account"})


@dataclass(slots=True, frozen=True)
class Endpoint:
    dialect: str
    operation: str
    method: str
    stream: bool | None = None  # None: the body's `stream` field decides
    path_model: str | None = None
    gemini_mode: str = "sse"


_STATIC: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint("openai_chat", "generate", "POST"),
    "/v1/responses": Endpoint("openai_responses", "generate", "POST"),
    "/v1/messages": Endpoint("claude", "generate", "POST"),
    "/v1/messages/count_tokens": Endpoint("claude", "count_tokens", "POST"),
    "/v1/models": Endpoint("openai_chat", "models", "GET"),
    "/v1beta/models": Endpoint("gemini", "models", "GET"),
    "/health": Endpoint("openai_chat", "health", "GET"),
    # Account pools and usage counters (client key required).
    "/pool": Endpoint("openai_chat", "pool", "GET"),
    "/usage": Endpoint("openai_chat", "usage", "GET"),
    # Operating it (addons/metrics.py, dashboard.py, admin_api.py); admin key required except the page.
    "/metrics": Endpoint("openai_chat", "metrics", "GET"),
    "/dashboard": Endpoint("openai_chat", "dashboard", "GET"),
    "/dashboard/data": Endpoint("openai_chat", "dashboard_data", "GET"),
    "/admin/config": Endpoint("openai_chat", "admin_config", "GET"),
    "/admin/reload": Endpoint("openai_chat", "admin_reload", "POST"),
    # Claude Code posts telemetry here; accepting it keeps its logs quiet.
    "/api/event_logging/batch": Endpoint("claude", "telemetry", "POST"),
}


# `provider:model` only splits on a known provider id; other colons belong to the model name
# (`gpt-oss:20b`, `qwen3:8b`: Ollama tags). A prefix shaped like a provider id (`-custom`, `-oauth`,
# `-provider`) or one typo away from a known one is a mistaken provider, answered 400, never sent
# to the default provider as a model name.
_PROVIDER_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*-(?:custom|oauth|provider)")


def looks_like_provider_id(prefix: str) -> bool:
    return bool(_PROVIDER_SHAPE.fullmatch(prefix)) or bool(
        difflib.get_close_matches(prefix, PROVIDER_IDS, n=1, cutoff=0.8)
    )


def is_root_probe(req: http.Request) -> bool:
    """`HEAD /` or `GET /` in origin form: Claude Code checks the gateway is up this way, without a
    key, at every start. An absolute-form request (`GET http://other.host/`) is a proxy request, no probe."""
    return req.method in ("GET", "HEAD") and req.path == "/" and not req.authority


def admin_account_target(path: str) -> tuple[str, str, str] | None:
    """(provider, account label, action) of an admin account path, labels URL-decoded."""
    m = _ADMIN_ACCOUNT_PATH.match(path.partition("?")[0])
    if m is None:
        return None
    provider, label, action = m.groups()
    return urllib.parse.unquote(provider), urllib.parse.unquote(label), action


def strip_provider_prefix(path: str) -> str:
    head, sep, rest = path.lstrip("/").partition("/")
    if sep and head in PROVIDER_IDS:
        return "/" + rest
    return path


def split_provider_prefix(path: str) -> tuple[str | None, str]:
    head, sep, rest = path.lstrip("/").partition("/")
    if sep and head in PROVIDER_IDS:
        return head, "/" + rest
    return None, path


def dialect_for_path(path: str) -> str:
    """The dialect a caller at this path understands, for error bodies."""
    path = strip_provider_prefix(path.partition("?")[0])
    if path.startswith("/v1/messages") or path.startswith("/api/event_logging"):
        return "claude"
    if path.startswith("/v1beta/") or _GEMINI_PATH.match(path):
        return "gemini"
    if path.startswith("/v1/responses"):
        return "openai_responses"
    return "openai_chat"


def classify(method: str, path: str, query_alt: str | None) -> Endpoint | None:
    endpoint = _STATIC.get(path)
    if endpoint is not None:
        return endpoint
    m = _GEMINI_PATH.match(path)
    if m:
        model, op = m.groups()
        if op == "countTokens":
            return Endpoint("gemini", "count_tokens", "POST", False, model)
        streaming = op == "streamGenerateContent"
        mode = "sse" if query_alt == "sse" else "json"
        return Endpoint("gemini", "generate", "POST", streaming, model, mode)
    if _ADMIN_ACCOUNT_PATH.match(path):
        return Endpoint("openai_chat", "admin_account", "POST")
    m = _MODEL_PATH.match(path)
    if m:
        version, model = m.groups()
        return Endpoint("gemini" if version == "v1beta" else "openai_chat", "model", "GET", None, model)
    return None


def _non_utf8_header(headers: http.Headers) -> str | None:
    """The name of a header whose bytes are not UTF-8 (mitmproxy keeps them surrogate-escaped); such a
    value can be neither read as text nor sent on to an upstream."""
    for name, value in headers.fields:
        try:
            name.decode("utf-8")
            value.decode("utf-8")
        except UnicodeDecodeError:
            return name.decode("ascii", "backslashreplace")
    return None


class Router:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse an announced oversized body before it is read."""
        if flow.response is not None:
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > int(self.gateway.config.limits.max_body):
            flow.response = self._too_large(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        try:
            flow.response = self._route(flow)
        except Exception:
            flow.response = replies.internal_error(dialect_for_path(flow.request.path), "routing the request")

    def _too_large(self, flow: http.HTTPFlow) -> http.Response:
        limit = int(self.gateway.config.limits.max_body)
        return replies.error_response(
            dialect_for_path(flow.request.path),
            413,
            f"request body is larger than the gateway's limit of {limit} bytes (limits.max_body)",
        )

    def _route(self, flow: http.HTTPFlow) -> http.Response | None:
        """Returns a local answer for bad requests; otherwise stores the Route and returns None."""
        req = flow.request
        raw_path = req.path.partition("?")[0]
        prefix, path = split_provider_prefix(raw_path)
        if req.method == "OPTIONS":
            flow.metadata[ROUTE] = Route(dialect_for_path(path), "preflight")
            return None
        if is_root_probe(req):
            flow.metadata[ROUTE] = Route("openai_chat", "root")
            return None
        endpoint = classify(req.method, path, req.query.get("alt"))
        dialect = endpoint.dialect if endpoint else dialect_for_path(path)
        if endpoint is None:
            return replies.error_response(dialect, 404, f"unknown endpoint: {req.method} {raw_path}")
        if req.method != endpoint.method:
            return replies.error_response(
                dialect, 405, f"{req.method} is not allowed on {raw_path}; use {endpoint.method}"
            )
        route = Route(dialect, endpoint.operation, path_model=endpoint.path_model, gemini_mode=endpoint.gemini_mode)
        if endpoint.operation in ("models", "model"):
            route.provider = prefix
            route.claude_shape = endpoint.dialect == "openai_chat" and (
                "anthropic-version" in req.headers or req.headers.get("user-agent", "").startswith("claude-cli")
            )
            flow.metadata[ROUTE] = route
            return None
        bad_header = _non_utf8_header(req.headers)
        if bad_header is not None:
            return replies.error_response(dialect, 400, f"header {bad_header!r} is not valid UTF-8")
        if endpoint.method != "POST" or endpoint.operation in _NOT_LLM:
            flow.metadata[ROUTE] = route
            return None

        limits = self.gateway.config.limits
        if len(req.raw_content or b"") > int(limits.max_body):
            return self._too_large(flow)
        try:
            raw = self._decoded_body(req, int(limits.max_body))
            body = validate.load_object(raw, limits.max_depth)
            validate.check_types(dialect, body)
        except BodyDecodeError as e:
            return replies.error_response(dialect, e.status, f"{e} (limits.max_body)" if e.status == 413 else str(e))
        except validate.InvalidBody as e:
            return replies.error_response(dialect, 400, str(e), code="invalid_request_error")
        codec = get_codec(dialect)
        parse_body = body
        if endpoint.operation == "count_tokens" and dialect == "claude":
            # count_tokens takes a Messages body without max_tokens; the codec insists on it.
            parse_body = {**body, "max_tokens": body.get("max_tokens") or 1}
        try:
            ir_request = codec.parse_request(parse_body, model=endpoint.path_model, stream=endpoint.stream)
        except TranslationError as e:
            return replies.error_response(dialect, e.status, str(e), code="invalid_request_error")
        route.body = body
        route.query = dict(req.query.items(multi=False)) if req.query else {}
        route.request = ir_request
        route.stream = ir_request.stream
        route.model = ir_request.model

        if endpoint.operation == "generate":
            problem = self._choose_provider(route, prefix, req.headers.get("model-provider"))
            if problem:
                return replies.error_response(dialect, 400, problem)
        elif endpoint.operation == "count_tokens":
            # A provider with a real count (gemini-custom, vertex-ai) is asked; else LocalApi estimates.
            self._choose_provider(route, prefix, req.headers.get("model-provider"))
        flow.metadata[ROUTE] = route
        return None

    @staticmethod
    def _decoded_body(req: http.Request, limit: int) -> bytes:
        """The body without its Content-Encoding, decoded with a running limit (never whole first).
        The request keeps the decoded bytes and loses the header, so a passthrough upstream gets
        plain JSON and no later `req.content` decodes anything again."""
        raw = req.raw_content or b""
        encoding = req.headers.get("content-encoding", "")
        if not encoding.strip():
            return raw
        decoded = decode_body(raw, encoding, limit)
        del req.headers["content-encoding"]
        req.content = decoded  # no encoding header left: stored as is, content-length updated
        return decoded

    def _choose_provider(self, route: Route, prefix: str | None, header: str | None) -> str | None:
        """Fills route.provider and route.upstream_model, or returns why it cannot."""
        config = self.gateway.config
        configured = config.configured_providers()
        model = route.model
        provider = prefix or (header.strip() if header else None)
        upstream_model = model
        alias = config.models.get(model)
        head, sep, tail = model.partition(":")
        listed = ", ".join(configured) or "none"
        if alias is not None and provider in (None, alias.provider):
            provider, upstream_model = alias.provider, alias.model
        elif sep and head in PROVIDER_IDS and tail and provider in (None, head):
            provider, upstream_model = head, tail
        elif sep and tail and provider is None and looks_like_provider_id(head):
            return f"unknown provider {head!r} in model {model!r} (configured providers: {listed})"
        if self.gateway.demo == "implicit":  # nothing real can answer: canned answers for all
            provider = "demo"
        if provider is None:
            provider = config.default_provider
        if provider is None:
            return f"no provider for model {model!r}: set default_provider or a models alias (configured: {listed})"
        if provider not in configured:
            known = "unknown provider" if provider not in PROVIDER_IDS else "provider not configured"
            return f"{known} {provider!r} (configured providers: {listed})"
        route.provider = provider
        route.upstream_model = upstream_model
        return None
