"""Local answers in the caller's own dialect: errors, JSON bodies, CORS headers."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from translators import errors

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Max-Age": "86400",
}


def error_body(dialect: str, status: int, message: str, code: str | None = None) -> dict[str, Any]:
    if dialect == "claude":
        return errors.claude_error(status, message)
    if dialect == "gemini":
        return errors.gemini_error(status, message)
    return errors.openai_error(status, message, code)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    h = {"Content-Type": "application/json", **CORS_HEADERS, **(headers or {})}
    return http.Response.make(status, json.dumps(body, ensure_ascii=False).encode(), h)


def error_response(
    dialect: str, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> http.Response:
    return json_response(status, error_body(dialect, status, message, code), headers)
