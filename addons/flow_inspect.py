"""Inspect: what `mitmweb -s run.py` shows about each flow.

- the flow's comment names the route: client dialect -> provider/account/model, the attempts
  and how it ended (never a secret);
- streamed answers get a body after the fact: mitmproxy keeps none for streamed flows, so the
  bytes the stream relay sent to the client are copied (up to inspect.stream_body_max) and
  set as the response body once the stream ended -- only when flows are kept (mitmweb/console);
- both sides of every exchange: the flow itself is what the client sent and got (its URL is the
  one the client asked, never the reverse-proxy placeholder; a relayed stream's request is put
  back to the client's own once done), and the "Upstream" content view shows, on the request
  tab, the upstream request as sent (URL, headers with credentials masked, body) and, on the
  response tab, the upstream's answer (status, headers, body as received, bounded by
  inspect.stream_body_max) -- kept as plain data in flow.metadata["aiclient.upstream_request"]
  and ["aiclient.upstream_response"], so a saved flow file has them too and never a key;
- every flow carries a short comment saying why: the route, or why it was answered locally;
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
from translators import errors
from translators.sse import SseParser

logger = logging.getLogger(__name__)

UPSTREAM_REQUEST = "aiclient.upstream_request"
UPSTREAM_RESPONSE = "aiclient.upstream_response"
CLIENT_REQUEST = "aiclient.client_request"  # the client's request, before a stream re-targets it
COMMENT_ERROR_MAX = 120
FLOW_SUMMARY = "aiclient.flow"
MASK = "********"
# Header names whose values are credentials; also any name containing one of these words.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "cookie", "set-cookie"}
)
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


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= COMMENT_ERROR_MAX else text[: COMMENT_ERROR_MAX - 1] + "…"


def _local_reason(resp: http.Response) -> str:
    """The message of an error the gateway answered itself, for the comment."""
    return _short(errors.extract_message(resp.raw_content or b"") or resp.reason or "")


def describe(flow: http.HTTPFlow, *, finished: bool = False) -> str:
    """One line for mitmweb's comment: route, attempts, and (once finished) the outcome -- or why
    the gateway answered itself (bad key, unknown endpoint, bad body, no account free)."""
    route: Route | None = flow.metadata.get(ROUTE)
    resp = flow.response
    if route is None:
        if resp is None:
            return ""
        return f"refused {resp.status_code}: {_local_reason(resp)}"
    if route.operation != "generate":
        text = f"local: {route.operation}"
        if resp is not None:
            text += f" · {resp.status_code}"
            if resp.status_code >= 400:
                text += f": {_local_reason(resp)}"
        return text
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
        if outcome.error:
            status = f"{outcome.http_status} " if outcome.http_status else ""
            text += f" · {status}{_short(outcome.error)}"
    elif not attempts and resp is not None and resp.status_code >= 400:
        text += f" · refused {resp.status_code}: {_local_reason(resp)}"
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


def _body_view(body: bytes, limit: int) -> Any:
    """A body for the Upstream view: JSON as data, else text, cut at `limit` bytes."""
    cut = body[:limit] if limit > 0 else b""
    try:
        return json.loads(cut)
    except ValueError:
        text = cut.decode("utf-8", "replace")
        return text + (f"\n[… {len(body) - len(cut)} more bytes not kept]" if len(body) > len(cut) else "")


def upstream_response_view(status: int, headers: Any, body: bytes, limit: int) -> dict[str, Any]:
    """The upstream's answer as received, credentials masked (plain data: safe to show or save)."""
    return {
        "status": status,
        "headers": {k: mask_header(k, v) for k, v in headers.items()},
        "body": _body_view(body, limit),
    }


def render_upstream(view: dict[str, Any] | None, side: str) -> str:
    """The text of the Upstream content view for one side of a flow."""
    if not view:
        return f"# no upstream {side}: the gateway answered this request itself"
    first = f"POST {view['url']}" if side == "request" else f"HTTP {view['status']}"
    lines = [f"# upstream {side}, as {'sent' if side == 'request' else 'received'}", first]
    lines += [f"{k}: {v}" for k, v in view["headers"].items()]
    body = view.get("body")
    lines.append("")
    if isinstance(body, str):
        lines.append(body)
    elif body is not None:
        lines.append(json.dumps(body, indent=2, ensure_ascii=False))
    return "\n".join(lines)


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


class UpstreamContentview(contentviews.Contentview):
    """The other side of the exchange: on the request tab the upstream request as sent, on the
    response tab the upstream's answer as received (pick "Upstream" in mitmweb's view menu)."""

    @property
    def name(self) -> str:
        return "Upstream"

    @property
    def syntax_highlight(self) -> contentviews.SyntaxHighlight:
        return "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        flow = metadata.flow
        side = "response" if isinstance(metadata.http_message, http.Response) else "request"
        stored = flow.metadata.get(UPSTREAM_REQUEST if side == "request" else UPSTREAM_RESPONSE) if flow else None
        return render_upstream(stored if isinstance(stored, dict) else None, side)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        return -1  # never chosen by itself: the flow's own view is the client's side


class Capture:
    """Runs before Upstream: keeps the client's request of a stream, which Upstream re-targets to
    the loopback relay -- only when flows are kept."""

    def __init__(self, inspect: Inspect) -> None:
        self.inspect = inspect

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self.inspect.keep_flows:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is not None and route.operation == "generate" and route.stream:
            flow.metadata[CLIENT_REQUEST] = flow.request.copy()


class Inspect:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.view = SseContentview()
        self.upstream_view = UpstreamContentview()
        self.capture = Capture(self)
        # Whether flows outlive their hooks (mitmweb/console keep them, -w saves them); under plain
        # mitmdump a copy of every stream and a frozen summary would be waste.
        self.keep_flows = False
        # Whether anything shows this flow at all (kept, saved, or printed by mitmdump's dumper);
        # under `mitmdump -q` comments and masking are work nobody reads.
        self.annotate = True

    def load(self, loader: Any) -> None:
        contentviews.add(self.view)  # mitmproxy 12 replaces a view of the same name on reload
        contentviews.add(self.upstream_view)

    def body_limit(self) -> int:
        return int(self.gateway.config.inspect.stream_body_max)

    def configure(self, updated: set[str]) -> None:
        if "save_stream_file" in updated or "flow_detail" in updated:
            self._decide()

    def running(self) -> None:
        self._decide()
        columns = getattr(ctx.options, "web_columns", None)
        if columns is not None and "comment" not in columns:
            # mitmweb hides the comment column by default; the comment says why each flow ended so.
            ctx.options.update(web_columns=[*columns, "comment"])

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
        if self.keep_flows and flow.response is not None:
            self._client_url(flow)  # answered here: nothing goes to the placeholder upstream

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._tap(flow)
        if self.annotate:
            self._comment(flow)

    def _tap(self, flow: http.HTTPFlow) -> None:
        limit = int(self.gateway.config.inspect.stream_body_max)
        transcoder = getattr(flow.metadata.get(EXCHANGE), "transcoder", None)
        if self.keep_flows and limit > 0 and transcoder is not None and getattr(transcoder, "tap", 0) is None:
            transcoder.tap = bytearray()
            transcoder.tap_upstream = bytearray()
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

    def _keep(self, flow: http.HTTPFlow, exchange: Any) -> None:
        transcoder = getattr(exchange, "transcoder", None)
        tap = getattr(transcoder, "tap", None)
        if tap is not None and flow.response is not None:
            flow.response.raw_content = bytes(tap)
            transcoder.tap = None
        view = upstream_request_view(exchange)
        if view is not None:
            flow.metadata[UPSTREAM_REQUEST] = view
        self._keep_upstream_response(flow, exchange, transcoder)
        client_request = flow.metadata.pop(CLIENT_REQUEST, None)
        if client_request is not None and getattr(exchange, "relayed", False):
            flow.request = client_request  # the re-targeted one lives on in the Upstream view
        self._client_url(flow)
        summary = flow_summary(flow)
        for key in [k for k, v in flow.metadata.items() if not is_plain(v)]:
            del flow.metadata[key]
        if summary:
            flow.metadata[FLOW_SUMMARY] = summary

    def _keep_upstream_response(self, flow: http.HTTPFlow, exchange: Any, transcoder: Any) -> None:
        """The upstream's last answer: whole for unary ones and errors; for a stream its head
        plus the bytes the relay read from it (tapped, bounded)."""
        received = getattr(exchange, "upstream_response", None)
        if received is None:
            return
        body = getattr(received, "content", None)
        if body is None:
            tap = getattr(transcoder, "tap_upstream", None)
            body = bytes(tap) if tap is not None else b""
            if transcoder is not None:
                transcoder.tap_upstream = None
        flow.metadata[UPSTREAM_RESPONSE] = upstream_response_view(
            received.status_code, received.headers, body, self.body_limit()
        )
        exchange.upstream_response = None

    @staticmethod
    def _client_url(flow: http.HTTPFlow) -> None:
        """The URL the client asked: the gateway's own address, not the reverse-proxy placeholder."""
        sockname = flow.client_conn.sockname
        if not sockname:
            return
        request = flow.request
        request.scheme = "https" if flow.client_conn.tls_established else "http"
        request.host = sockname[0]
        request.port = sockname[1]

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
