"""Precomputed wire bytes for the bench: client requests and upstream answers per dialect.

Why precomputed: the fakes and the load generator must cost next to nothing, so everything they
send is built once here and only written out during a run. The shapes are the real services'
(OpenAI Chat Completions, Claude Messages, Gemini/Code Assist, Kiro's AWS event stream).

A client asks for a stream of N events at P ms pace by putting `bench n=N p=P` in its prompt; the
marker survives every translation, so the fake reads it from whichever upstream body arrives.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from translators.eventstream import encode_message

MARKER = re.compile(rb"bench n=(\d+) p=(\d+)")
ANSWER = "Hello! You said: bench. " + " ".join(f"word{i}" for i in range(20))
CLIENT_KEY = "sk-bench-client-key"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def prompt(n: int | None, pace_ms: int = 0) -> str:
    """The user prompt: a stream request carries the marker the fake reads."""
    return "Say hello." if n is None else f"Say hello. bench n={n} p={pace_ms}"


# -- client requests ----------------------------------------------------------------------------


def client_body(dialect: str, *, stream: bool, n: int | None = None, pace_ms: int = 0) -> bytes:
    text = prompt(n if stream else None, pace_ms)
    if dialect == "openai_chat":
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 256,
        }
        if stream:
            body["stream"] = True
        return dumps(body)
    if dialect == "claude":
        body = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
        if stream:
            body["stream"] = True
        return dumps(body)
    raise ValueError(f"no bench client for dialect {dialect}")


def client_path(dialect: str, provider: str | None) -> str:
    path = {"openai_chat": "/v1/chat/completions", "claude": "/v1/messages"}[dialect]
    return f"/{provider}{path}" if provider else path


def http_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """One HTTP/1.1 keep-alive POST with the gateway's client key in both common carriers' form."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"host: {host}\r\n"
        "content-type: application/json\r\n"
        f"authorization: Bearer {CLIENT_KEY}\r\n"
        "anthropic-version: 2023-06-01\r\n"
        f"content-length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


# -- upstream answers ---------------------------------------------------------------------------


def _response_head(content_type: str, *, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def json_answer(dialect: str) -> bytes:
    """The whole HTTP response of a unary answer."""
    if dialect == "openai_chat":
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 26, "total_tokens": 38},
        }
    elif dialect == "claude":
        body = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": ANSWER}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 26},
        }
    elif dialect in ("gemini", "code_assist"):
        body = _gemini_chunk(ANSWER, final=True)
        if dialect == "code_assist":
            body = {"response": body, "traceId": "bench"}
    elif dialect == "kiro":
        data = b"".join(kiro_events(1))
        return _response_head("application/vnd.amazon.eventstream", length=len(data)) + data
    else:
        raise ValueError(dialect)
    data = dumps(body)
    return _response_head("application/json", length=len(data)) + data


def _gemini_chunk(text: str, *, final: bool) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    chunk: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-2.5-pro", "responseId": "bench"}
    if final:
        cand["finishReason"] = "STOP"
        chunk["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": 26, "totalTokenCount": 38}
    return chunk


def _sse(obj: Any, event: str | None = None, eol: bytes = b"\n") -> bytes:
    head = b"event: " + event.encode() + eol if event else b""
    return head + b"data: " + (obj if isinstance(obj, bytes) else dumps(obj)) + eol + eol


def sse_events(dialect: str, n: int) -> list[bytes]:
    """The events of one streamed answer with n text deltas (plus the dialect's framing events)."""
    words = [f"w{i} " for i in range(n)]
    if dialect == "openai_chat":
        base = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk({"content": w}) for w in words]
        out.append(chunk({}, "stop"))
        out.append(_sse(b"[DONE]"))
        return out
    if dialect == "claude":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        }
        out = [
            _sse(start, "message_start"),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
        ]
        out += [
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                "content_block_delta",
            )
            for w in words
        ]
        out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        out.append(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": n},
                },
                "message_delta",
            )
        )
        out.append(_sse({"type": "message_stop"}, "message_stop"))
        return out
    if dialect in ("gemini", "code_assist"):
        eol = b"\r\n" if dialect == "code_assist" else b"\n"
        out = []
        for i, w in enumerate(words):
            chunk = _gemini_chunk(w, final=i == n - 1)
            out.append(_sse({"response": chunk, "traceId": "bench"} if dialect == "code_assist" else chunk, eol=eol))
        return out
    if dialect == "kiro":
        return kiro_events(n)
    raise ValueError(dialect)


def kiro_events(n: int) -> list[bytes]:
    def frame(event_type: str, payload: dict[str, Any]) -> bytes:
        headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
        return encode_message(headers, dumps(payload))

    if n == 1:  # the unary answer: the whole text in one event
        out = [frame("assistantResponseEvent", {"content": ANSWER})]
    else:
        out = [frame("assistantResponseEvent", {"content": f"w{i} "}) for i in range(n)]
    out.append(frame("contextUsageEvent", {"contextUsagePercentage": 1.5}))
    return out


@lru_cache(maxsize=64)
def stream_answer(dialect: str, n: int) -> tuple[bytes, tuple[bytes, ...]]:
    """(response head, one chunk-encoded piece per event + the last chunk)."""
    ctype = {
        "kiro": "application/vnd.amazon.eventstream",
    }.get(dialect, "text/event-stream")
    head = _response_head(ctype, length=None)
    pieces = (*(_chunk(e) for e in sse_events(dialect, n)), LAST_CHUNK)
    return head, pieces
