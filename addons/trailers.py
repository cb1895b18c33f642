"""Chunked bodies that end with trailer fields: mitmproxy 12.3 raises NotImplementedError on them
inside its HTTP/1 layer and the client's connection then hangs unanswered.

The gateway reads no trailer field (RFC 9110 section 6.5.1 lets a recipient discard them), so the
body reader mitmproxy builds for chunked messages is swapped for one that drops them; the request is
then handled like any other chunked request.
"""

from __future__ import annotations

import h11
from h11._readers import ChunkedReader
from mitmproxy.proxy.layers.http import _http1


class TrailerDroppingChunkedReader(ChunkedReader):
    def __call__(self, buf):  # type: ignore[no-untyped-def]
        event = super().__call__(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event


_make_body_reader = _http1.make_body_reader


def _body_reader(expected_size: int | None) -> _http1.TBodyReader:
    if expected_size is None:
        return TrailerDroppingChunkedReader()
    return _make_body_reader(expected_size)


def drop_trailers() -> None:
    """Installs the trailer-dropping chunked reader (idempotent)."""
    _http1.make_body_reader = _body_reader
