"""Rebuilds a whole Response from stream events.

Used wherever a stream has to be seen whole: a unary client served by a stream-only upstream
(Kiro), prompt logs of streamed answers, and the buffered answer of a retried stream.
"""

from __future__ import annotations

import json

from translators.ir import (
    Event,
    Finish,
    FinishReason,
    MessageStart,
    Part,
    Response,
    StreamError,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ThinkingSignature,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolCallStart,
    Usage,
    UsageUpdate,
)


class ResponseAccumulator:
    __slots__ = ("_args", "_calls", "error", "finish", "id", "model", "parts", "stop_sequence", "usage")

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.parts: list[Part] = []
        self.usage = Usage()
        self.finish: FinishReason | None = None
        self.stop_sequence: str | None = None
        self.error: StreamError | None = None
        self._args: dict[int, list[str]] = {}
        self._calls: dict[int, ToolCallPart] = {}

    def feed(self, events: list[Event]) -> None:
        for ev in events:
            t = type(ev)
            if t is TextDelta:
                last = self.parts[-1] if self.parts else None
                if type(last) is TextPart:
                    last.text += ev.text
                else:
                    self.parts.append(TextPart(ev.text))
            elif t is ThinkingDelta:
                last = self.parts[-1] if self.parts else None
                if type(last) is ThinkingPart and last.signature is None and last.redacted is None:
                    last.text += ev.text
                else:
                    self.parts.append(ThinkingPart(ev.text))
            elif t is ThinkingSignature:
                last = self.parts[-1] if self.parts else None
                if ev.redacted is not None:
                    self.parts.append(ThinkingPart("", redacted=ev.redacted, signature_origin=ev.origin))
                elif type(last) is ThinkingPart and last.signature is None and last.redacted is None:
                    last.signature = ev.signature
                    last.signature_origin = ev.origin
                else:
                    self.parts.append(ThinkingPart("", signature=ev.signature, signature_origin=ev.origin))
            elif t is ToolCallStart:
                call = ToolCallPart(ev.id, ev.name, {}, ev.signature, ev.signature_origin)
                self._calls[ev.index] = call
                self._args[ev.index] = []
                self.parts.append(call)
            elif t is ToolCallArgsDelta:
                self._args.setdefault(ev.index, []).append(ev.delta)
            elif t is ToolCallEnd:
                self._close_call(ev.index)
            elif t is UsageUpdate:
                self.usage.merge(ev.usage)
            elif t is Finish:
                self.finish = ev.reason
                self.stop_sequence = ev.stop_sequence
            elif t is MessageStart:
                self.id = self.id or ev.id
                self.model = self.model or ev.model
            elif t is StreamError:
                self.error = ev

    def _close_call(self, index: int) -> None:
        call = self._calls.pop(index, None)
        if call is None:
            return
        raw = "".join(self._args.pop(index, []))
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            args = {"_raw_arguments": raw}
        call.arguments = args if isinstance(args, dict) else {"value": args}

    def response(self) -> Response:
        for index in list(self._calls):
            self._close_call(index)
        finish = self.finish
        if finish is None:
            finish = FinishReason.ERROR if self.error else FinishReason.STOP
        return Response(self.id, self.model, self.parts, finish, self.usage, self.stop_sequence)
