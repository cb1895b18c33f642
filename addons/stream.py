"""The stream callable mitmproxy runs for every upstream chunk of a translated stream.

It runs synchronously on mitmproxy's single event loop, so it only decodes the new bytes and
encodes the resulting events. It must never raise (the client would hang) and never return b""
mid-stream (that ends an HTTP/1.1 chunked body): a failure becomes the dialect's in-band error
and a clean end of stream.
"""

from __future__ import annotations

import logging

from translators.accumulate import ResponseAccumulator
from translators.base import StreamDecoder, StreamEncoder
from translators.ir import Event, StreamError

logger = logging.getLogger(__name__)


class StreamTranscoder:
    __slots__ = ("bytes_out", "collector", "decoder", "encoder", "events_seen", "finished", "label")

    def __init__(
        self,
        decoder: StreamDecoder,
        encoder: StreamEncoder | None,
        collector: ResponseAccumulator | None = None,
        label: str = "",
    ) -> None:
        self.decoder = decoder
        # None: pass the upstream bytes through unchanged and only decode to observe them.
        self.encoder = encoder
        self.collector = collector
        self.events_seen = 0
        self.bytes_out = 0
        self.finished = False
        self.label = label

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if self.finished:
            return []
        try:
            if data:
                events = self.decoder.feed(data)
                out = self._emit(events, data)
            else:
                events = self.decoder.close()
                out = self._emit(events, b"")
                if self.encoder is not None:
                    out += self.encoder.close()
                self.finished = True
        except Exception as e:  # the stream must end cleanly whatever happened
            logger.exception("aiclient-mitm: stream translation failed (%s)", self.label)
            out = self._fail(f"the gateway failed to translate the upstream stream: {type(e).__name__}")
        self.bytes_out += len(out)
        return out if out else []

    def _emit(self, events: list[Event], raw: bytes) -> bytes:
        if events:
            self.events_seen += len(events)
            if self.collector is not None:
                self.collector.feed(events)
            for ev in events:
                if type(ev) is StreamError:
                    logger.warning("aiclient-mitm: upstream stream error (%s): %s", self.label, ev.message)
        if self.encoder is None:
            return raw
        return self.encoder.feed(events) if events else b""

    def _fail(self, message: str) -> bytes:
        self.finished = True
        if self.encoder is None:
            return b""
        try:
            return self.encoder.feed([StreamError(message, 502)]) + self.encoder.close()
        except Exception:
            logger.exception("aiclient-mitm: encoder failed while ending the stream (%s)", self.label)
            return b""
