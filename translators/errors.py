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
