"""Who may operate the gateway: the one place that decides whether a caller is an admin.

ClientAuth puts the matched key (its policy, with the `admin` flag) and its name in flow.metadata:
plain keys (api_keys strings, AICLIENT_API_KEYS, the generated key) are admins, named entries only
with `admin: true`.
"""

from __future__ import annotations

from mitmproxy import http

from addons import replies
from addons.context import CLIENT_KEY, CLIENT_KEY_ID, CLIENT_KEY_NAME
from addons.router import dialect_for_path


def is_admin(flow: http.HTTPFlow) -> bool:
    """Whether the caller's key may see and change the gateway's operation."""
    if flow.metadata.get(CLIENT_KEY_ID) is None:
        return False  # no valid key (an open path such as /dashboard or a public /metrics)
    key = flow.metadata.get(CLIENT_KEY)
    return bool(getattr(key, "admin", True))


def caller_name(flow: http.HTTPFlow) -> str:
    """The caller for logs and metric labels: the key's name, else its short id; never the key."""
    return flow.metadata.get(CLIENT_KEY_NAME) or flow.metadata.get(CLIENT_KEY_ID) or "anonymous"


# The gateway's own paths: no dialect in the path, so the caller's headers tell which one it speaks.
_OWN_PATHS = ("/admin/", "/metrics", "/dashboard", "/pool", "/usage")


def caller_dialect(flow: http.HTTPFlow) -> str:
    """The error shape the caller understands: the path's dialect, and for the gateway's own
    paths (admin, metrics, ...) the one its SDK's headers announce."""
    path = flow.request.path.partition("?")[0]
    if not path.startswith(_OWN_PATHS):
        return dialect_for_path(path)
    headers = flow.request.headers
    if "anthropic-version" in headers:
        return "claude"
    if "x-goog-api-client" in headers:
        return "gemini"
    return "openai_chat"


def refusal(flow: http.HTTPFlow, what: str) -> http.Response | None:
    """None for an admin; else the 401/403 answer in the caller's dialect."""
    if is_admin(flow):
        return None
    dialect = caller_dialect(flow)
    if flow.metadata.get(CLIENT_KEY_ID) is None:
        message = f"{what} needs an admin key (Authorization: Bearer <key>)"
        return replies.error_response(dialect, 401, message, code="invalid_api_key")
    message = f"{what} needs an admin key; key {caller_name(flow)} is not one"
    return replies.error_response(dialect, 403, message, code="forbidden")
