"""LocalApi: answers what needs no upstream -- health, model lists, token counts, CORS preflight."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mitmproxy import http

from addons import replies
from addons.context import ROUTE, Gateway, Route
from providers import ADAPTERS
from translators import tokens

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
# Listed models carry no real creation date; a fixed one keeps the lists stable.
_CREATED = 1_700_000_000


class LocalApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None:
            return
        handler = getattr(self, f"_op_{route.operation}", None)
        if handler is None:
            return
        try:
            flow.response = handler(route)
        except Exception:
            flow.response = replies.internal_error(route.dialect, f"answering {route.operation}")

    def _op_preflight(self, route: Route) -> http.Response:
        return http.Response.make(204, b"", replies.CORS_HEADERS)

    def _op_root(self, route: Route) -> http.Response:
        return http.Response.make(200, b"", replies.CORS_HEADERS)

    def _op_health(self, route: Route) -> http.Response:
        config = self.gateway.config
        # status stays "ok" while shared state is degraded: the process serves from its own memory.
        state = self.gateway.state.describe()
        return replies.json_response(
            200,
            {
                "status": "ok",
                "version": VERSION,
                "providers": config.configured_providers(),
                "state": state["state"],
                "state_backend": state["backend"],
            },
        )

    def _op_telemetry(self, route: Route) -> http.Response:
        return replies.json_response(200, {})

    def _op_count_tokens(self, route: Route) -> http.Response:
        assert route.request is not None
        count = tokens.estimate_request_tokens(route.request)
        if route.dialect == "gemini":
            return replies.json_response(200, {"totalTokens": count})
        return replies.json_response(200, {"input_tokens": count})

    def _models(self, route: Route) -> list[tuple[str, str]]:
        """(model id, provider) pairs: each provider's list from config (else what its upstream listed at
        start, else its defaults), then aliases; only those the caller's key may use."""
        config = self.gateway.config
        key = route.client_key
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for pid in config.configured_providers():
            if (route.provider and pid != route.provider) or (key is not None and not key.allows_provider(pid)):
                continue
            adapter = ADAPTERS.get(pid)
            names = (
                config.providers[pid].models
                or self.gateway.discovered_models.get(pid)
                or (list(adapter.default_models) if adapter else [])
            )
            for name in names:
                if name not in seen and (key is None or key.allows_model(name)):
                    seen.add(name)
                    out.append((name, pid))
        for alias, target in config.models.items():
            if alias in seen or (route.provider and target.provider != route.provider):
                continue
            if key is None or (key.allows_model(alias) and key.allows_provider(target.provider)):
                seen.add(alias)
                out.append((alias, target.provider))
        return out

    def _op_models(self, route: Route) -> http.Response:
        models = self._models(route)
        if route.dialect == "gemini":
            return replies.json_response(200, {"models": [_gemini_model(m) for m, _ in models]})
        if route.claude_shape:
            data = [_claude_model(m) for m, _ in models]
            return replies.json_response(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                },
            )
        return replies.json_response(200, {"object": "list", "data": [_openai_model(m, p) for m, p in models]})

    def _op_model(self, route: Route) -> http.Response:
        name = (route.path_model or "").removeprefix("models/")
        for model, provider in self._models(route):
            if model == name:
                if route.dialect == "gemini":
                    return replies.json_response(200, _gemini_model(model))
                return replies.json_response(200, _openai_model(model, provider))
        return replies.error_response(route.dialect, 404, f"model {name!r} is not listed by this gateway")


def _openai_model(model: str, provider: str) -> dict:
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": provider}


def _claude_model(model: str) -> dict:
    created = datetime.fromtimestamp(_CREATED, UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": model, "display_name": model, "created_at": created}


def _gemini_model(model: str) -> dict:
    return {
        "name": f"models/{model}",
        "version": "001",
        "displayName": model,
        "description": f"{model} through aiclient-mitm",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }
