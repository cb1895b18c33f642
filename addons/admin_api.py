"""AdminApi: operating the gateway without a restart (admin keys only).

    POST /admin/accounts/{provider}/{label}/reset     clear cooldowns, disables and error streaks
    POST /admin/accounts/{provider}/{label}/disable   {"reason": "..."}: take it out of the pool
    POST /admin/accounts/{provider}/{label}/enable    {"reason": "..."}: let it serve again
    POST /admin/reload                                re-read config.yaml and keys_file; a bad file is refused
    GET  /admin/config                                the effective config, every secret masked

Others get 401/403 in their own dialect; an unknown provider or account is a 404 naming it.
Every action is logged with the caller's key name (never the key).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.hooks import ConfigureHook

from addons import admin, replies
from addons.client_auth import ENV_KEYS, env_keys
from addons.context import ROUTE, Gateway, Route
from addons.flow_inspect import MASK, mask_url
from addons.router import admin_account_target
from auth.client_keys import build_keyring, load_keys_file
from core.config import ConfigError, load_config

logger = logging.getLogger(__name__)

OPERATIONS = frozenset({"admin_account", "admin_reload", "admin_config"})
MAX_REASON = 300
# Config keys whose values are secrets whatever their type (SecretStr fields are masked by pydantic).
_SECRET_KEYS = ("api_key", "api_keys", "credentials_base64", "password", "secret", "token")


def mask_config(value: Any, key: str = "") -> Any:
    """The config as plain JSON with every secret replaced by a mask."""
    lowered = key.lower()
    if isinstance(value, dict):
        return {k: mask_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_config(v, key) for v in value]
    if value and any(lowered == s or lowered.endswith("_" + s) for s in _SECRET_KEYS):
        return MASK
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return mask_url(value)
    return value


def validate(path: Path) -> None:
    """Reads config.yaml and its keys_file as a reload would; ConfigError names the file, key and reason."""
    config = load_config(path)
    keys_file = config.keys_file_path(path)
    entries = load_keys_file(keys_file) if keys_file is not None else []
    build_keyring([("api_keys", config.api_keys), (ENV_KEYS, env_keys()), ("keys_file", entries)])


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation not in OPERATIONS:
            return
        what = f"{flow.request.method} {flow.request.path.partition('?')[0]}"
        refused = admin.refusal(flow, what)
        if refused is not None:
            logger.warning("aiclient-mitm: admin: %s refused for %s", what, admin.caller_name(flow))
            flow.response = refused
            return
        try:
            if route.operation == "admin_account":
                flow.response = self._account(flow)
            elif route.operation == "admin_reload":
                flow.response = await self._reload(flow)
            else:
                flow.response = self._config(flow)
        except Exception:
            logger.exception("aiclient-mitm: admin: %s failed", what)
            flow.response = replies.error_response(admin.caller_dialect(flow), 500, f"internal error in {what}")

    # -- accounts ----------------------------------------------------------------------------------

    def _account(self, flow: http.HTTPFlow) -> http.Response:
        dialect = admin.caller_dialect(flow)
        target = admin_account_target(flow.request.path)
        assert target is not None  # the Router matched the same pattern
        provider, label, action = target
        pool = self.gateway.pools.get(provider)
        if pool is None:
            known = ", ".join(self.gateway.pools) or "none"
            return replies.error_response(dialect, 404, f"unknown provider {provider!r} (configured: {known})")
        acct = pool.find(label)
        if acct is None:
            known = ", ".join(a.label for a in pool.accounts) or "none"
            return replies.error_response(
                dialect, 404, f"provider {provider} has no account {label!r} (accounts: {known})"
            )
        reason, problem = self._reason(flow)
        if problem is not None:
            return replies.error_response(dialect, 400, problem)
        who = admin.caller_name(flow)
        if action in ("enable", "reset") and acct.unusable is not None:
            return replies.error_response(
                dialect, 409, f"account {label} of {provider} cannot serve: {acct.unusable} (fix the config and reload)"
            )
        if action == "reset":
            pool.reset(acct)
        elif action == "disable":
            pool.disable(acct, f"disabled by {who}: {reason or 'no reason given'}"[:MAX_REASON])
        else:
            pool.enable(acct)
        logger.warning(
            "aiclient-mitm: admin %s: %s %s/%s%s", who, action, provider, label, f" ({reason})" if reason else ""
        )
        status = next(row for row in pool.status() if row["label"] == label)
        return replies.json_response(200, {"provider": provider, "action": action, "by": who, "account": status})

    @staticmethod
    def _reason(flow: http.HTTPFlow) -> tuple[str, str | None]:
        """The optional {"reason": "..."} body; a problem text when it is malformed."""
        raw = flow.request.content or b""
        if not raw.strip():
            return "", None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return "", f"request body is not valid JSON: {e}"
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
            return "", 'request body must be {"reason": "<text>"}'
        return body.get("reason", "").strip()[:MAX_REASON], None

    # -- config --------------------------------------------------------------------------------------

    async def _reload(self, flow: http.HTTPFlow) -> http.Response:
        dialect = admin.caller_dialect(flow)
        who = admin.caller_name(flow)
        path: Path | None = self.gateway.config_path
        if path is None:
            return replies.error_response(dialect, 409, "the gateway was started without a config file")
        try:
            await asyncio.to_thread(validate, path)  # first: a bad file changes nothing
        except ConfigError as e:
            logger.warning("aiclient-mitm: admin %s: reload of %s refused: %s", who, path, e)
            return replies.error_response(
                dialect, 400, f"reload refused, the running configuration stays: {e}", code="invalid_config"
            )
        # Every addon re-reads what it owns, exactly as at start (pools keep their live state).
        ctx.master.addons.trigger(ConfigureHook({"config"}))
        logger.warning("aiclient-mitm: admin %s: configuration reloaded from %s", who, path)
        return replies.json_response(
            200, {"reloaded": str(path.name), "by": who, "providers": self.gateway.config.configured_providers()}
        )

    def _config(self, flow: http.HTTPFlow) -> http.Response:
        logger.info("aiclient-mitm: admin %s: read the effective configuration", admin.caller_name(flow))
        return replies.json_response(200, mask_config(self.gateway.config.model_dump(mode="json")))
