"""ClientAuth: only callers holding a configured key reach anything but /health.

The keys in force come from config.yaml's api_keys, AICLIENT_API_KEYS and keys_file; the keys
file is watched and re-read when it changes (a bad edit is refused and logged, the previous keys
stay). A matched key's identity (its name) and policy go into flow.metadata; an expired key is
refused here. Fails closed: mitmproxy logs an exception in a hook and forwards the flow anyway,
so any exception in here becomes a local 500 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy import http
from pydantic import SecretStr

from addons import replies
from addons.admin import caller_dialect
from addons.context import CLIENT_KEY, CLIENT_KEY_ID, CLIENT_KEY_NAME, Gateway
from addons.router import dialect_for_path, is_root_probe, strip_provider_prefix
from auth.client_keys import ClientKey, Keyring, build_keyring, check_expiry, load_keys_file
from core.config import ApiKey, ConfigError

logger = logging.getLogger(__name__)

ENV_KEYS = "AICLIENT_API_KEYS"
# No key needed: health, and the dashboard page (its data endpoint needs an admin key).
_OPEN_PATHS = frozenset({"/health", "/dashboard"})


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


# Seconds between looks at keys_file (a stat; the file is read only when it changed).
KEYS_FILE_POLL = 1.0


def env_keys() -> list[ApiKey]:
    """AICLIENT_API_KEYS: comma-separated plain (admin) keys."""
    return [SecretStr(k.strip()) for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: inode (atomic replacements), mtime, size; None when missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ClientAuth:
    def __init__(self, gateway: Gateway, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.clock = clock
        self.keys_file: Path | None = None
        self._keys_file_stamp: tuple[int, int, int] | None = None
        self._watch: asyncio.Task[None] | None = None

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        config = self.gateway.config
        self.keys_file = config.keys_file_path(self.gateway.config_path)
        try:
            file_entries: list[ApiKey] = []
            if self.keys_file is not None:
                self._keys_file_stamp = _stamp(self.keys_file)
                file_entries = load_keys_file(self.keys_file)
            sources = [("api_keys", config.api_keys), (ENV_KEYS, env_keys()), ("keys_file", file_entries)]
            if not any(entries for _, entries in sources):
                sources = [("generated", [SecretStr(load_or_create_key(key_file_for(self.gateway.config_path)))])]
            keyring = build_keyring(sources)
        except ConfigError as e:
            # Logged as an error at start, which stops mitmproxy; nobody gets in meanwhile.
            self.gateway.keyring = Keyring()
            logger.error("aiclient-mitm: invalid client keys: %s", e)
            return
        self.gateway.keyring = keyring
        logger.info("aiclient-mitm: %d client key(s) in force", len(keyring))

    # -- keys_file: re-read when it changes ---------------------------------------------------

    def running(self) -> None:
        if self.keys_file is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_keys_file(), name="aiclient-keys-file")

    async def done(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _watch_keys_file(self) -> None:
        while True:
            await asyncio.sleep(KEYS_FILE_POLL)
            try:
                await self.reload_keys_file()
            except Exception:
                logger.exception("aiclient-mitm: watching keys_file failed; the keys in force stay")

    async def reload_keys_file(self) -> bool:
        """Re-reads keys_file when it changed; True when new keys are in force. A bad file is
        refused with a logged reason and the previous keys stay (nobody is locked out)."""
        path = self.keys_file
        if path is None:
            return False
        stamp = await asyncio.to_thread(_stamp, path)
        if stamp == self._keys_file_stamp:
            return False
        self._keys_file_stamp = stamp
        try:
            entries = await asyncio.to_thread(load_keys_file, path)
            config = self.gateway.config
            sources = [("api_keys", config.api_keys), (ENV_KEYS, env_keys()), ("keys_file", entries)]
            if not any(e for _, e in sources):
                raise ConfigError("keys_file: no key would be left (keep one or set api_keys)")
            keyring = build_keyring(sources)
        except ConfigError as e:
            logger.warning("aiclient-mitm: %s changed but is refused: %s; the previous keys stay in force", path, e)
            return False
        self.gateway.keyring = keyring
        logger.info("aiclient-mitm: %s reloaded: %d client key(s) in force", path, len(keyring))
        return True

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        try:
            self._check(flow)
        except Exception:
            flow.response = replies.internal_error(dialect_for_path(flow.request.path), "checking the client key")

    def _check(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        presented = self._take_key(req)
        path = strip_provider_prefix(req.path.partition("?")[0])
        if req.method == "OPTIONS" or path in _OPEN_PATHS or is_root_probe(req):
            return
        if path == "/metrics" and self.gateway.config.metrics.public and presented is None:
            return
        if presented is not None:
            try:
                # Header and query bytes that are not UTF-8 arrive surrogate-escaped: they match no key.
                candidate = presented.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                candidate = b""
            key = self.gateway.keyring.match(candidate)
            if key is not None:
                self._identified(flow, key, candidate)
                return
        reason = "invalid API key" if presented else "missing API key"
        flow.response = replies.error_response(
            caller_dialect(flow),
            401,
            f"{reason}: send the gateway key as 'Authorization: Bearer <key>', 'x-api-key', 'x-goog-api-key' or ?key=",
            code="invalid_api_key",
        )

    def _identified(self, flow: http.HTTPFlow, key: ClientKey, candidate: bytes) -> None:
        """Records who is calling; refuses an expired key (the rest of its policy is KeyPolicy's)."""
        flow.metadata[CLIENT_KEY] = key
        flow.metadata[CLIENT_KEY_NAME] = key.name
        flow.metadata[CLIENT_KEY_ID] = key_id(candidate)
        refusal = check_expiry(key, self.clock())
        if refusal is not None:
            flow.response = replies.error_response(
                dialect_for_path(flow.request.path), refusal.status, refusal.message, code=refusal.code
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
