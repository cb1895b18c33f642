"""A mitmweb/mitmproxy content view for AWS event-stream bodies (`application/vnd.amazon.eventstream`).

Kiro answers in binary frames; without this view the inspector shows bytes. The view lists each
frame's type and its JSON payload, exception frames marked as errors, then the assistant text and
tool calls put back together. It never raises: a broken stream shows the frames decoded before
the break and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mitmproxy import contentviews

from translators.eventstream import EventStreamDecoder, EventStreamError, EventStreamMessage

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STANDARD_HEADERS = (":message-type", ":event-type", ":exception-type", ":content-type", ":error-code")
# Longest reconstructed text shown in the summary (the frames above carry all of it).
_SUMMARY_CHARS = 20_000


def _decode(data: bytes) -> tuple[list[EventStreamMessage], str | None]:
    decoder = EventStreamDecoder()
    messages: list[EventStreamMessage] = []
    error = None
    try:
        messages = decoder.feed(data)
        decoder.feed(b"")  # raises an error held back behind good frames
        decoder.close()
    except EventStreamError as e:
        error = str(e)
    return messages, error


def _payload(msg: EventStreamMessage) -> Any:
    try:
        return json.loads(msg.payload)
    except ValueError:
        return None


def _frame_lines(index: int, msg: EventStreamMessage) -> Iterator[str]:
    h = msg.headers
    mtype = str(h.get(":message-type", "event"))
    if mtype == "exception":
        yield f"[{index}] exception {h.get(':exception-type', '?')}"
    elif mtype == "error":
        yield f"[{index}] error {h.get(':error-code', '?')}: {h.get(':error-message', '')}"
    else:
        yield f"[{index}] {mtype} {h.get(':event-type', '?')}"
    for name, value in h.items():
        if name not in _STANDARD_HEADERS and name != ":error-message":
            yield f"    {name}: {value if isinstance(value, str) else repr(value)}"
    if not msg.payload:
        return
    parsed = _payload(msg)
    if parsed is None:
        yield "    " + msg.payload.decode("utf-8", "replace")[:2000]
        return
    for line in json.dumps(parsed, indent=4, ensure_ascii=False).splitlines():
        yield "    " + line


def _summary(messages: list[EventStreamMessage]) -> Iterator[str]:
    """The answer put back together: text (thinking tags included, as sent) and tool calls."""
    text: list[str] = []
    calls: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for msg in messages:
        if msg.headers.get(":message-type", "event") != "event":
            continue
        p = _payload(msg)
        if not isinstance(p, dict):
            continue
        etype = msg.headers.get(":event-type")
        if etype == "assistantResponseEvent" and isinstance(p.get("content"), str):
            text.append(p["content"])
        elif etype == "toolUseEvent" and isinstance(p.get("toolUseId"), str):
            uid = p["toolUseId"]
            if uid in calls and p.get("stop") and not isinstance(p.get("input"), str):
                continue  # the call repeated after its stop
            names.setdefault(uid, str(p.get("name") or "?"))
            inp = p.get("input")
            if isinstance(inp, str):
                calls.setdefault(uid, []).append(inp)
            elif isinstance(inp, dict):
                calls.setdefault(uid, []).append(json.dumps(inp, ensure_ascii=False))
            else:
                calls.setdefault(uid, [])
    if not text and not calls:
        return
    yield ""
    yield "-- assistant text --"
    joined = "".join(text)
    yield from joined[:_SUMMARY_CHARS].splitlines() or [""]
    if len(joined) > _SUMMARY_CHARS:
        yield f"... ({len(joined) - _SUMMARY_CHARS} more characters)"
    for uid, parts in calls.items():
        yield f"-- tool call {names[uid]} ({uid}) --"
        yield "".join(parts)


class AwsEventStreamContentview(contentviews.Contentview):
    """Kiro's binary frames, one by one, then the answer put back together."""

    @property
    def name(self) -> str:
        return "AWS event stream"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        try:
            messages, error = _decode(data)
        except Exception as e:  # the decoder is ours; a bug must not break the inspector
            messages, error = [], f"{type(e).__name__}: {e}"
        exceptions = sum(1 for m in messages if m.headers.get(":message-type") in ("exception", "error"))
        head = f"AWS event stream: {len(messages)} frame(s)"
        if exceptions:
            head += f", {exceptions} exception(s)"
        if error is not None:
            head += ", broken"
        lines = [head, ""]
        try:
            for i, msg in enumerate(messages, 1):
                lines.extend(_frame_lines(i, msg))
            lines.extend(_summary(messages))
        except Exception as e:
            lines.append(f"cannot render the frames: {type(e).__name__}: {e}")
        if error is not None:
            lines.append(f"stream broken after {len(messages)} frame(s): {error}")
        return "\n".join(lines)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        return 1.0 if data and metadata.content_type == CONTENT_TYPE else 0.0


class KiroView:
    """Registers the view when the script loads. mitmproxy 12's registry replaces a view of the same
    name, so a script reload registers it again without a duplicate."""

    def __init__(self) -> None:
        self.view = AwsEventStreamContentview()

    def load(self, loader: Any) -> None:
        contentviews.add(self.view)
