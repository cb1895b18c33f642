"""ClientAuth: only callers holding a configured key reach anything but /health.

Fails closed: mitmproxy logs an exception in a hook and forwards the flow anyway, so any
exception in here becomes a local 500 instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from mitmproxy import http

from addons import replies
from addons.context import CLIENT_KEY_ID, Gateway
from addons.router import dialect_for_path, strip_provider_prefix

logger = logging.getLogger(__name__)

ENV_KEYS = "AICLIENT_API_KEYS"
_OPEN_PATHS = frozenset({"/health"})


def key_file_for(config_path: Path) -> Path:
    return config_path.with_name(config_path.stem + ".client-key")


def load_or_create_key(path: Path) -> str:
    """The generated key of a config without api_keys: created once (0600), printed once."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if key:
        logger.info("aiclient-mitm: using the generated client key stored in %s", path)
        return key
    key = "sk-aicm-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    logger.warning(
        "aiclient-mitm: no api_keys configured; generated client key %s (stored in %s, mode 0600). "
        "Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        key,
        path,
    )
    return key


def key_id(key: bytes) -> str:
    """A short stable id for logs and usage records; the key itself is never kept there."""
    return hashlib.sha256(key).hexdigest()[:12]


class ClientAuth:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        keys = [k.get_secret_value() for k in self.gateway.config.api_keys]
        keys += [k.strip() for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()]
        if not keys:
            keys = [load_or_create_key(key_file_for(self.gateway.config_path))]
        self.gateway.client_keys = [k.encode() for k in keys]

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        try:
            self._check(flow)
        except Exception:
            logger.exception("aiclient-mitm: client authentication failed unexpectedly")
            flow.response = replies.error_response(
                dialect_for_path(flow.request.path), 500, "internal error while checking the client key"
            )

    def _check(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        presented = self._take_key(req)
        path = strip_provider_prefix(req.path.partition("?")[0])
        if req.method == "OPTIONS" or path in _OPEN_PATHS:
            return
        if presented is not None:
            candidate = presented.encode()
            matched = False
            for key in self.gateway.client_keys:
                # Compare against every key so timing says nothing about which one matched.
                matched |= hmac.compare_digest(candidate, key)
            if matched:
                flow.metadata[CLIENT_KEY_ID] = key_id(candidate)
                return
        reason = "invalid API key" if presented else "missing API key"
        flow.response = replies.error_response(
            dialect_for_path(req.path),
            401,
            f"{reason}: send the gateway key as 'Authorization: Bearer <key>', 'x-api-key', 'x-goog-api-key' or ?key=",
            code="invalid_api_key",
        )

    @staticmethod
    def _take_key(req: http.Request) -> str | None:
        """Removes every key carrier from the request (it must never travel upstream)."""
        found: str | None = None
        auth = req.headers.pop("authorization", None)
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                found = value.strip()
        for name in ("x-api-key", "x-goog-api-key"):
            value = req.headers.pop(name, None)
            if value and found is None:
                found = value.strip()
        if "key" in req.query:
            value = req.query.pop("key")
            if found is None and value:
                found = value
        return found
