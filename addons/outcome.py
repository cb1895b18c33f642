"""How one exchange ended, read once and shared by the addons that report on it.

PromptLog, Usage and Inspect all need the same facts after the answer (status, the answer as IR,
its usage, timings); computing them here once per flow keeps the three consistent and parses a
passthrough body at most once -- and only when one of them asks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from addons.context import EXCHANGE, ROUTE, Route
from translators import errors, get_codec, ir, tokens
from translators.base import TranslationError

logger = logging.getLogger(__name__)

OUTCOME = "aiclient.outcome"

# Status values of an outcome (and of prompt log records).
OK = "ok"  # a whole answer
ERROR = "error"  # answered with an error status, by the upstream or the gateway
STREAM_ERROR = "stream_error"  # the stream carried an error event (or ended without finishing)
UPSTREAM_CUT = "upstream_cut"  # the upstream connection broke in the middle of the stream
CLIENT_CUT = "client_cut"  # the client went away before the answer was complete

_CLIENT_GONE = "Client disconnected"


@dataclass(slots=True)
class Outcome:
    status: str
    http_status: int | None
    # The answer: whole, or what arrived before a cut; None when there was none.
    answer: ir.Response | None
    error: str | None
    latency_ms: int
    ttft_ms: int | None
    # The answer's finish reason; None when a stream ended without one (cut).
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def usage(self) -> ir.Usage:
        return self.answer.usage if self.answer is not None else ir.Usage()


def estimate_missing_usage(req: ir.Request, answer: ir.Response) -> None:
    """An upstream that reported no usage at all (an OpenAI-compatible stream relayed unchanged
    without stream_options.include_usage) gets the gateway's estimate, marked as such."""
    u = answer.usage
    if u.input_tokens or u.output_tokens:
        return
    output = 0
    for part in answer.parts:
        if isinstance(part, ir.TextPart | ir.ThinkingPart):
            output += tokens.estimate_text_tokens(part.text)
        elif isinstance(part, ir.ToolCallPart):
            output += tokens.estimate_text_tokens(part.name + json.dumps(part.arguments, ensure_ascii=False))
    answer.usage = ir.Usage(tokens.estimate_request_tokens(req), output, estimated=True)


def outcome_of(flow: http.HTTPFlow) -> Outcome | None:
    """The outcome of a finished generate exchange (cached on the flow); None for other flows."""
    cached = flow.metadata.get(OUTCOME)
    if cached is not None:
        return cached
    route: Route | None = flow.metadata.get(ROUTE)
    if route is None or route.operation != "generate" or route.request is None:
        return None
    if flow.response is None and flow.error is None:
        return None
    outcome = _read(flow, route)
    if outcome.answer is not None:
        estimate_missing_usage(route.request, outcome.answer)
        if outcome.finish_reason is None and not _cut_stream(flow):
            outcome.finish_reason = str(outcome.answer.finish_reason)
    flow.metadata[OUTCOME] = outcome
    return outcome


def _read(flow: http.HTTPFlow, route: Route) -> Outcome:
    exchange = flow.metadata.get(EXCHANGE)
    transcoder = getattr(exchange, "transcoder", None)
    start = flow.request.timestamp_start
    end = _end_time(flow)
    latency = _ms(end - start)
    if transcoder is not None:
        return _streamed(flow, transcoder, latency, start)
    resp = flow.response
    if flow.error is not None or resp is None:
        message = flow.error.msg if flow.error is not None else "no answer"
        status = CLIENT_CUT if _CLIENT_GONE in message else ERROR
        code = resp.status_code if resp is not None else None
        return Outcome(status, code, getattr(exchange, "response", None), message, latency, None)
    if resp.status_code >= 400:
        message = errors.extract_message(resp.raw_content or b"")
        return Outcome(ERROR, resp.status_code, None, message, latency, None)
    answer = getattr(exchange, "response", None)
    if answer is None and exchange is not None:
        answer = _parse_passthrough(route, exchange, resp)
    if answer is None:
        return Outcome(ERROR, resp.status_code, None, "the answer could not be read", latency, None)
    return Outcome(OK, resp.status_code, answer, None, latency, None)


def _cut_stream(flow: http.HTTPFlow) -> bool:
    """A relayed stream that never delivered its finish event."""
    transcoder = getattr(flow.metadata.get(EXCHANGE), "transcoder", None)
    collector = getattr(transcoder, "collector", None)
    return transcoder is not None and (collector is None or collector.finish is None)


def _streamed(flow: http.HTTPFlow, transcoder: Any, latency: int, start: float) -> Outcome:
    collector = transcoder.collector
    answer = collector.response() if collector is not None else None
    first = getattr(transcoder, "first_token_at", None)
    ttft = _ms(first - start) if first else None
    status_code = flow.response.status_code if flow.response is not None else None
    if flow.error is not None:
        status = CLIENT_CUT if _CLIENT_GONE in flow.error.msg else UPSTREAM_CUT
        return Outcome(status, status_code, answer, flow.error.msg, latency, ttft)
    cut = getattr(transcoder, "cut", None)
    if cut:  # the gateway ended the stream in-band: the upstream broke, stalled or reset
        return Outcome(UPSTREAM_CUT, status_code, answer, cut, latency, ttft)
    if collector is not None and collector.error is not None:
        return Outcome(STREAM_ERROR, status_code, answer, collector.error.message, latency, ttft)
    if not transcoder.finished:
        return Outcome(UPSTREAM_CUT, status_code, answer, "the stream did not end", latency, ttft)
    return Outcome(OK, status_code, answer, None, latency, ttft)


def _parse_passthrough(route: Route, exchange: Any, resp: http.Response) -> ir.Response | None:
    """Same-dialect unary answers reach the client as the upstream's own JSON; turned into IR only
    now, from the object Upstream already parsed (or the body, when it parsed none)."""
    parsed = getattr(exchange, "passthrough_json", None)
    try:
        body = parsed if parsed is not None else json.loads(resp.content or b"")
        return get_codec(route.dialect).parse_response(body)
    except (ValueError, TypeError, KeyError, TranslationError) as e:
        logger.warning("aiclient-mitm: could not read the %s answer for the record: %s", route.dialect, e)
        return None


def _end_time(flow: http.HTTPFlow) -> float:
    if flow.error is not None:
        return flow.error.timestamp
    if flow.response is not None and flow.response.timestamp_end:
        return flow.response.timestamp_end
    return time.time()


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
