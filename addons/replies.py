"""Local answers in the caller's own dialect: errors, JSON bodies, CORS headers."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from mitmproxy import http

from translators import errors

logger = logging.getLogger(__name__)

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


def internal_error(dialect: str, doing: str) -> http.Response:
    """A 500 for the gateway's own bug, from inside an `except` block: the traceback goes to the log
    under a request id, and the caller gets the same id (message and `x-request-id`) to report."""
    request_id = "req_" + secrets.token_hex(8)
    logger.exception("aiclient-mitm: internal error while %s [%s]", doing, request_id)
    return error_response(
        dialect,
        500,
        f"internal error while {doing} (request id {request_id})",
        headers={"x-request-id": request_id},
    )
