"""Incremental Server-Sent Events framing (WHATWG rules) over raw bytes.

Works on bytes so a multi-byte UTF-8 character split across reads is never decoded half;
each complete event is decoded once. Handles CRLF/CR/LF, comments, multi-line `data:`,
`data:` without a space, and drops events with no data.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any


class SseParser:
    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        """Returns (event name or None, data) for every event completed by this chunk."""
        buf = self._buf + chunk if self._buf else chunk
        out: list[tuple[str | None, str]] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, nl if nl >= 0 else n)
            if cr >= 0:
                # A CR ends the line; a CR at the very end may be the first half of CRLF.
                if cr == n - 1:
                    break
                end, nxt = cr, cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            self._line(buf[start:end], out)
            start = nxt
        self._buf = buf[start:]
        return out

    def close(self) -> list[tuple[str | None, str]]:
        """End of body: a final event without its blank line still counts."""
        out: list[tuple[str | None, str]] = []
        if self._buf:
            self._line(self._buf.rstrip(b"\r"), out)
            self._buf = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[tuple[str | None, str]]) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                self._data = []
                if data:
                    out.append((self._event, data))
            self._event = None
            return
        if line[0] == 58:  # ":" comment / keep-alive
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # id / retry / unknown fields are irrelevant to the gateway


# One encoder for every event: json.dumps with non-default arguments builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII kept as is (what the real APIs send)."""
    return _ENCODER.encode(obj)


# A JSON string literal exactly as `dumps` writes one inside any value (json's own C escaper, the
# one JSONEncoder uses with ensure_ascii=False): for the encoders' per-token templates.
encode_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def data_event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


def named_event(name: str, obj: Any) -> str:
    return f"event: {name}\ndata: {dumps(obj)}\n\n"


_EMPTY_DATA_LINES = frozenset({b"", b"data:", b"data: "})


class SseEventRelay:
    """Forwards whole SSE events byte for byte and drops those whose data is empty.

    Same-dialect streams pass through unchanged except for this: some upstreams send empty
    `data:` frames, and OpenAI SDKs crash on them. Holding back a partial event until its blank
    line also means clients only ever receive whole events.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        out: list[bytes] = []
        start = 0
        # Each separator is searched for again only once the last one found is behind us: a read
        # holding many events stays one pass over the bytes (an LF-only stream has no CRLFCRLF,
        # and searching the rest of the read for one after every event was quadratic).
        lf = buf.find(b"\n\n")
        crlf = buf.find(b"\r\n\r\n")
        while lf >= 0 or crlf >= 0:
            end = crlf + 4 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
            event = buf[start:end]
            if not self._empty(event):
                out.append(event)
            start = end
            if 0 <= lf < start:
                lf = buf.find(b"\n\n", start)
            if 0 <= crlf < start:
                crlf = buf.find(b"\r\n\r\n", start)
        self._buf = buf[start:]
        return b"".join(out) if len(out) != 1 else out[0]

    def close(self) -> bytes:
        rest, self._buf = self._buf, b""
        return b"" if self._empty(rest) else rest

    @staticmethod
    def _empty(event: bytes) -> bool:
        if b"data: {" in event or b"data:{" in event:
            return False  # the usual event, a JSON object: not empty, no need to look at each line
        return all(line.rstrip(b"\r") in _EMPTY_DATA_LINES for line in event.split(b"\n"))
