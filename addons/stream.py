"""The stream callables mitmproxy runs for every upstream chunk of a relayed stream.

They run synchronously on mitmproxy's single event loop, so they only handle the new bytes.
They must never raise (the client would hang) and never return b"" mid-stream (that ends an
HTTP/1.1 chunked body): a failure becomes the dialect's in-band error and a clean end.
"""

from __future__ import annotations

import logging
import time

from translators.accumulate import ResponseAccumulator
from translators.base import StreamDecoder, StreamEncoder
from translators.ir import Event, StreamError, TextDelta, ThinkingDelta, ToolCallStart
from translators.sse import SseEventRelay

logger = logging.getLogger(__name__)

_TOKEN_EVENTS = (TextDelta, ThinkingDelta, ToolCallStart)


class _Observer:
    """Shared by both callables: feeds decoded events to the collector and logs upstream errors."""

    __slots__ = ("bytes_out", "collector", "events_seen", "finished", "first_token_at", "label", "tap", "tap_limit")

    def __init__(self, collector: ResponseAccumulator | None, label: str) -> None:
        self.collector = collector
        self.label = label
        self.events_seen = 0
        self.bytes_out = 0
        self.finished = False
        # time.time() of the first text, thinking or tool-call event (time to first token).
        self.first_token_at: float | None = None
        # Set by an observer (the Inspect addon) to keep a copy of the client's bytes, up to tap_limit.
        self.tap: bytearray | None = None
        self.tap_limit = 0

    def observe(self, events: list[Event]) -> None:
        if not events:
            return
        if self.first_token_at is None and any(type(ev) in _TOKEN_EVENTS for ev in events):
            self.first_token_at = time.time()
        self.events_seen += len(events)
        if self.collector is not None:
            self.collector.feed(events)
        for ev in events:
            if type(ev) is StreamError:
                logger.warning("aiclient-mitm: upstream stream error (%s): %s", self.label, ev.message)

    def emitted(self, out: bytes) -> None:
        self.bytes_out += len(out)
        tap = self.tap
        if tap is not None and out and len(tap) < self.tap_limit:
            tap += out[: self.tap_limit - len(tap)]


class StreamTranscoder(_Observer):
    """Cross-dialect: upstream bytes -> IR events -> client dialect bytes."""

    __slots__ = ("decoder", "encoder")

    def __init__(
        self, decoder: StreamDecoder, encoder: StreamEncoder, collector: ResponseAccumulator | None, label: str
    ) -> None:
        super().__init__(collector, label)
        self.decoder = decoder
        self.encoder = encoder

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if self.finished:
            return []
        try:
            if data:
                events = self.decoder.feed(data)
                self.observe(events)
                out = self.encoder.feed(events) if events else b""
            else:
                events = self.decoder.close()
                self.observe(events)
                out = self.encoder.feed(events) + self.encoder.close()
                self.finished = True
        except Exception as e:  # the stream must end cleanly whatever happened
            logger.exception("aiclient-mitm: stream translation failed (%s)", self.label)
            out = self._fail(f"the gateway failed to translate the upstream stream: {type(e).__name__}")
        self.emitted(out)
        return out if out else []

    def _fail(self, message: str) -> bytes:
        self.finished = True
        try:
            return self.encoder.feed([StreamError(message, 502)]) + self.encoder.close()
        except Exception:
            logger.exception("aiclient-mitm: encoder failed while ending the stream (%s)", self.label)
            return b""


class StreamRelay(_Observer):
    """Same dialect: the upstream's SSE events go out as they are (minus empty data frames);
    the decoder only observes them, and a decoder failure stops the observing, not the stream."""

    __slots__ = ("decoder", "relay")

    def __init__(self, decoder: StreamDecoder, collector: ResponseAccumulator | None, label: str) -> None:
        super().__init__(collector, label)
        self.decoder: StreamDecoder | None = decoder
        self.relay = SseEventRelay()

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if self.finished:
            return []
        try:
            out = self.relay.feed(data) if data else self.relay.close()
        except Exception:
            logger.exception("aiclient-mitm: stream relay failed (%s)", self.label)
            out, self.finished = b"", True
        if not data:
            self.finished = True
        self._watch(data)
        self.emitted(out)
        return out if out else []

    def _watch(self, data: bytes) -> None:
        if self.decoder is None:
            return
        try:
            self.observe(self.decoder.feed(data) if data else self.decoder.close())
        except Exception:
            logger.exception("aiclient-mitm: could not decode the relayed stream (%s)", self.label)
            self.decoder = None
