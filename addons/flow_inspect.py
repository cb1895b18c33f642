"""Inspect: what `mitmweb -s run.py` shows about each flow.

- the flow's comment names the route: client dialect -> provider/account/model, the attempts
  and how it ended (never a secret);
- streamed answers get a body after the fact: mitmproxy keeps none for streamed flows, so the
  bytes the stream relay sent to the client are copied (up to inspect.stream_body_max) and
  set as the response body once the stream ended -- only when flows are kept (mitmweb/console);
- the upstream request (URL, headers with credentials masked, body) stays in
  flow.metadata["aiclient.upstream_request"], and credentials in the re-targeted request of a
  relayed stream are masked once it is done, so the inspector (or a saved flow file) never
  shows an upstream key;
- an "SSE" content view shows event streams event by event, JSON pretty-printed;
- when flows are kept (mitmweb, console, or `-w` saving), a finished flow's metadata is frozen
  into plain data (`aiclient.flow`: route, account, attempts, outcome, usage): the live objects
  the addons passed along (IR, pool members, credentials) cannot be saved by mitmproxy and must
  not be, so they are dropped once every addon is done with the flow.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

from mitmproxy import contentviews, ctx, http

from addons.context import CLIENT_KEY_NAME, DROPPED_TOOLS, EXCHANGE, ROUTE, Gateway, Route
from addons.outcome import outcome_of
from translators.sse import SseParser

logger = logging.getLogger(__name__)

UPSTREAM_REQUEST = "aiclient.upstream_request"
FLOW_SUMMARY = "aiclient.flow"
MASK = "********"
# Header names whose values are credentials; also any name containing one of these words.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "cookie"})
_SECRET_WORDS = ("token", "secret", "api-key", "apikey", "session")
SECRET_QUERY = frozenset({"key", "api_key", "apikey", "access_token", "token"})


def is_secret_header(name: str) -> bool:
    name = name.lower()
    return name in SECRET_HEADERS or any(word in name for word in _SECRET_WORDS)


def mask_header(name: str, value: str) -> str:
    if not is_secret_header(name):
        return value
    scheme, sep, _ = value.partition(" ")
    return f"{scheme} {MASK}" if sep and scheme.lower() in ("bearer", "basic", "token") else MASK


def mask_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    query = [(k, MASK if k.lower() in SECRET_QUERY else v) for k, v in urllib.parse.parse_qsl(parts.query, True)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


def describe(flow: http.HTTPFlow, *, finished: bool = False) -> str:
    """One line for mitmweb's comment: route, attempts, and (once finished) the outcome."""
    route: Route | None = flow.metadata.get(ROUTE)
    if route is None:
        return ""
    if route.operation != "generate":
        return f"local: {route.operation}"
    exchange = flow.metadata.get(EXCHANGE)
    provider = getattr(exchange, "provider", None) or route.provider or "?"
    model = getattr(exchange, "model", None) or route.upstream_model or route.model
    target = f"{provider}/{exchange.member.label}/{model}" if exchange is not None else f"{provider}/{model}"
    text = f"{route.dialect} → {target}"
    if model != route.model:
        text += f" (asked {route.model})"
    if route.stream:
        text += " · stream"
    attempts = list(getattr(exchange, "attempts", None) or [])
    if attempts:
        text += " · attempts: " + ", ".join(attempts)
    dropped = flow.metadata.get(DROPPED_TOOLS)
    if dropped:
        text += " · dropped tools: " + ", ".join(dropped)
    outcome = outcome_of(flow) if finished else None
    if outcome is not None:
        text += f" · {outcome.status} {outcome.latency_ms} ms"
        if outcome.ttft_ms is not None:
            text += f" (first token {outcome.ttft_ms} ms)"
    key_name = flow.metadata.get(CLIENT_KEY_NAME)
    if key_name:
        text += f" · key {key_name}"
    return text


def upstream_request_view(exchange: Any) -> dict[str, Any] | None:
    """The upstream request as sent, with credentials masked (plain data: safe to show or save)."""
    up = getattr(exchange, "request", None)
    if up is None:
        return None
    body: Any = up.body
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode("utf-8", "replace")
    return {
        "url": mask_url(up.url),
        "headers": {k: mask_header(k, v) for k, v in up.headers.items()},
        "body": body,
    }


def flow_summary(flow: http.HTTPFlow) -> dict[str, Any]:
    """What the addons learned about a flow, as plain data."""
    route: Route | None = flow.metadata.get(ROUTE)
    if route is None:
        return {}
    exchange = flow.metadata.get(EXCHANGE)
    summary: dict[str, Any] = {
        "client_dialect": route.dialect,
        "operation": route.operation,
        "provider": getattr(exchange, "provider", None) or route.provider,
        "account": exchange.member.label if exchange is not None else None,
        "model": route.model,
        "upstream_model": getattr(exchange, "model", None) or route.upstream_model,
        "stream": route.stream,
        "passthrough": getattr(exchange, "passthrough", None),
        "attempts": list(getattr(exchange, "attempts", None) or []),
    }
    outcome = outcome_of(flow) if route.operation == "generate" else None
    if outcome is not None:
        u = outcome.usage
        summary.update(
            status=outcome.status,
            http_status=outcome.http_status,
            error=outcome.error,
            latency_ms=outcome.latency_ms,
            ttft_ms=outcome.ttft_ms,
            usage={
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cached_tokens": u.cache_read_tokens,
                "reasoning_tokens": u.reasoning_tokens,
            },
        )
    return summary


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether mitmproxy can serialize the value (what a saved flow may hold)."""
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return True
    if depth > 64:
        return False
    if isinstance(value, list | tuple):
        return all(is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | bytes) and is_plain(v, depth + 1) for k, v in value.items())
    return False


class SseContentview(contentviews.Contentview):
    """Server-sent events one by one: a `# N event-name` line, then its data (JSON pretty-printed).
    The output is YAML-shaped (JSON is YAML, the headings are comments), so mitmweb highlights it."""

    @property
    def name(self) -> str:
        return "SSE"

    @property
    def syntax_highlight(self) -> contentviews.SyntaxHighlight:
        return "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        parser = SseParser()
        events = parser.feed(data) + parser.close()
        out = [f"# SSE: {len(events)} events"]
        for i, (name, payload) in enumerate(events, 1):
            out.append(f"\n# {i} {name or 'message'}")
            try:
                out.append(json.dumps(json.loads(payload), indent=4, ensure_ascii=False))
            except ValueError:
                out.append(payload)
        return "\n".join(out)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        return 2 if data and metadata.content_type == "text/event-stream" else 0


class Inspect:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.view = SseContentview()
        # Whether flows outlive their hooks (mitmweb/console keep them, -w saves them); under plain
        # mitmdump a copy of every stream and a frozen summary would be waste.
        self.keep_flows = False
        # Whether anything shows this flow at all (kept, saved, or printed by mitmdump's dumper);
        # under `mitmdump -q` comments and masking are work nobody reads.
        self.annotate = True

    def load(self, loader: Any) -> None:
        contentviews.add(self.view)  # mitmproxy 12 replaces a view of the same name on reload

    def configure(self, updated: set[str]) -> None:
        if "save_stream_file" in updated or "flow_detail" in updated:
            self._decide()

    def running(self) -> None:
        self._decide()

    def _decide(self) -> None:
        viewer = ctx.master.addons.get("view") is not None
        self.keep_flows = viewer or bool(getattr(ctx.options, "save_stream_file", None))
        self.annotate = self.keep_flows or getattr(ctx.options, "flow_detail", 1) > 0

    def request(self, flow: http.HTTPFlow) -> None:
        # A stream's translator exists once Upstream (earlier in the chain) opened it; the relay
        # starts writing only after every request hook ran, so tapping here misses no byte.
        self._tap(flow)
        if self.annotate:
            self._comment(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._tap(flow)
        if self.annotate:
            self._comment(flow)

    def _tap(self, flow: http.HTTPFlow) -> None:
        limit = int(self.gateway.config.inspect.stream_body_max)
        transcoder = getattr(flow.metadata.get(EXCHANGE), "transcoder", None)
        if self.keep_flows and limit > 0 and transcoder is not None and getattr(transcoder, "tap", 0) is None:
            transcoder.tap = bytearray()
            transcoder.tap_limit = limit

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        if not self.annotate:
            return
        try:
            exchange = flow.metadata.get(EXCHANGE)
            if exchange is not None and getattr(exchange, "relayed", False):
                # The re-targeted request carries the upstream credential; it was sent, so mask it
                # before mitmdump prints it or the inspector shows it.
                self._mask_request(flow.request)
            self._comment(flow, finished=True)
            if self.keep_flows:
                self._keep(flow, exchange)
        except Exception:
            logger.exception("aiclient-mitm: could not annotate the flow for inspection")

    @staticmethod
    def _keep(flow: http.HTTPFlow, exchange: Any) -> None:
        transcoder = getattr(exchange, "transcoder", None)
        tap = getattr(transcoder, "tap", None)
        if tap is not None and flow.response is not None:
            flow.response.raw_content = bytes(tap)
            transcoder.tap = None
        view = upstream_request_view(exchange)
        if view is not None:
            flow.metadata[UPSTREAM_REQUEST] = view
        summary = flow_summary(flow)
        for key in [k for k, v in flow.metadata.items() if not is_plain(v)]:
            del flow.metadata[key]
        if summary:
            flow.metadata[FLOW_SUMMARY] = summary

    @staticmethod
    def _mask_request(request: http.Request) -> None:
        for name in list(request.headers.keys()):
            if is_secret_header(name):
                request.headers[name] = mask_header(name, request.headers[name])
        if any(k.lower() in SECRET_QUERY for k in request.query.keys()):
            request.query = [(k, MASK if k.lower() in SECRET_QUERY else v) for k, v in request.query.items(multi=True)]

    @staticmethod
    def _comment(flow: http.HTTPFlow, *, finished: bool = False) -> None:
        text = describe(flow, finished=finished)
        if text:
            flow.comment = text
