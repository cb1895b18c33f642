"""Error bodies per dialect for an HTTP status (dialects.md section 10)."""

from __future__ import annotations

import json
from typing import Any

# status -> (OpenAI/Responses type, Claude error.type, Gemini status)
_TABLE: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "authentication_error", "UNAUTHENTICATED"),
    402: ("insufficient_quota", "billing_error", "RESOURCE_EXHAUSTED"),
    403: ("permission_error", "permission_error", "PERMISSION_DENIED"),
    404: ("invalid_request_error", "not_found_error", "NOT_FOUND"),
    405: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    413: ("invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    500: ("server_error", "api_error", "INTERNAL"),
    501: ("server_error", "api_error", "UNIMPLEMENTED"),
    502: ("server_error", "api_error", "UNAVAILABLE"),
    503: ("server_error", "overloaded_error", "UNAVAILABLE"),
    504: ("server_error", "timeout_error", "DEADLINE_EXCEEDED"),
    529: ("server_error", "overloaded_error", "UNAVAILABLE"),
}


def _row(status: int) -> tuple[str, str, str]:
    row = _TABLE.get(status)
    if row is None:
        row = _TABLE[500] if status >= 500 else _TABLE[400]
    return row


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _row(status)[0], "param": param, "code": code}}


def claude_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _row(status)[1], "message": message}}


def gemini_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _row(status)[2]}}


def claude_error_type(status: int) -> str:
    return _row(status)[1]


def openai_error_type(status: int) -> str:
    return _row(status)[0]


def extract_message(body: bytes) -> str:
    """The human message of any dialect's error body (OpenAI, Claude, Google, Kiro, arrays)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj: Any = json.loads(text)
    except ValueError:
        return text[:500] or "empty error body"
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("error_description") or err.get("Message")
            if isinstance(msg, str) and msg:
                return msg
        elif isinstance(err, str) and err:
            desc = obj.get("error_description") or obj.get("message")
            return f"{err}: {desc}" if isinstance(desc, str) else err
        msg = obj.get("message") or obj.get("Message")
        if isinstance(msg, str) and msg:
            return msg
    return text[:500]


def stream_error_frame(dialect: str, status: int, message: str, *, gemini_json: bool = False) -> bytes:
    """The raw in-band error a client of `dialect` gets when its stream fails after bytes went out,
    at an event boundary, ending the stream: what the official SDK of each dialect raises as an API
    error (OpenAI SDKs raise on any event whose data has a top-level "error" object; google-genai on
    a chunk starting with {"error":; anthropic on `event: error`)."""
    compact = {"ensure_ascii": False, "separators": (",", ":")}
    if dialect == "claude":
        return f"event: error\ndata: {json.dumps(claude_error(status, message), **compact)}\n\n".encode()
    if dialect == "gemini":
        body = json.dumps(gemini_error(status, message), **compact)
        return f",\r\n{body}]".encode() if gemini_json else f"data: {body}\r\n\r\n".encode()
    if dialect == "openai_responses":
        return responses_error_event(status, message)
    return f"data: {json.dumps(openai_error(status, message), **compact)}\n\ndata: [DONE]\n\n".encode()


def responses_error_event(status: int, message: str) -> bytes:
    """The Responses `error` event. Its documented fields are flat (code, message, param); the nested
    `error` object is what makes the openai SDK raise APIError instead of yielding the event."""
    code = openai_error_type(status)
    event = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "error": {"type": code, "code": code, "message": message},
    }
    return f"event: error\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def stream_keepalive(dialect: str, *, gemini_json: bool = False) -> bytes:
    """Bytes a client of `dialect` ignores, sent during upstream silences so idle timeouts on the way
    do not cut a healthy stream. Gemini gets a blank line, not an SSE comment: google-genai reads any
    non-`data:` line as raw JSON and fails on a comment."""
    if dialect == "claude":
        return b'event: ping\ndata: {"type":"ping"}\n\n'
    if dialect == "gemini":
        return b"\n" if gemini_json else b"\r\n"
    return b": keep-alive\n\n"
