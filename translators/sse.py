"""Incremental Server-Sent Events framing (WHATWG rules) over raw bytes.

Works on bytes so a multi-byte UTF-8 character split across reads is never decoded half;
each complete event is decoded once. Handles CRLF/CR/LF, comments, multi-line `data:`,
`data:` without a space, and drops events with no data.
"""

from __future__ import annotations

import json
from typing import Any


class SseParser:
    __slots__ = ("_buf", "_event", "_data")

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


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII kept as is (what the real APIs send)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def data_event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


def named_event(name: str, obj: Any) -> str:
    return f"event: {name}\ndata: {dumps(obj)}\n\n"
