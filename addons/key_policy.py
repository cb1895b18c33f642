"""KeyPolicy: a client key's allowlists and limits, enforced before anything is sent.

Runs after the Router (it needs the model asked for and the provider chosen): a model or
provider outside the key's allowlist is a 403 naming what is allowed; a spent request or token
budget is a 429 with Retry-After = seconds until its UTC window frees. Answers come in the
caller's dialect and are never forwarded; any error while checking refuses with a 500 (fail
closed). Tokens are added after each answer by the Usage addon. The counters live in memory and
in `<state_dir>/client-keys.json` (written a few seconds after a change and at shutdown), or with
`state.backend: redis` in Redis (exact across processes; these local ones while Redis is away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy import http

from addons import replies
from addons.context import CLIENT_KEY, KEY_ADMITTED, ROUTE, Gateway, Route
from auth.client_keys import COUNTERS_FILE, ClientKey, KeyLimits, LocalCounters, check_access
from auth.state import SharedCounters
from core.files import read_json, write_json_atomic

logger = logging.getLogger(__name__)

# Seconds between looks for changed counters to write.
SAVE_INTERVAL = 5.0


def counters_path(gateway: Gateway) -> Path:
    return gateway.config.state_path(gateway.config_path) / COUNTERS_FILE


class KeyPolicy:
    def __init__(self, gateway: Gateway, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.clock = clock
        self.counters: LocalCounters | None = None
        self.path: Path | None = None
        self._saver: asyncio.Task[None] | None = None

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        self.path = counters_path(self.gateway)
        self.counters = LocalCounters.from_json(read_json(self.path), self.clock)
        self.gateway.key_limits = KeyLimits(SharedCounters(lambda: self.gateway.state, self.counters), self.clock)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        key: ClientKey | None = flow.metadata.get(CLIENT_KEY)
        if route is None or key is None:
            return
        route.client_key = key
        if route.operation not in ("generate", "count_tokens"):
            return
        try:
            refusal = check_access(key, route.model, route.provider, self.clock())
            if refusal is None and route.operation == "generate":
                limits = self.gateway.key_limits
                if limits is None:
                    raise RuntimeError("client key counters are not set up")
                refusal = await limits.admit(key)
        except Exception:
            logger.exception("aiclient-mitm: checking client key %s's policy failed", key.name)
            flow.response = replies.error_response(route.dialect, 500, "internal error while checking the client key")
            return
        if refusal is None:
            flow.metadata[KEY_ADMITTED] = True
            return
        headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after is not None else None
        flow.response = replies.error_response(
            route.dialect, refusal.status, refusal.message, code=refusal.code, headers=headers
        )

    # -- persistence ----------------------------------------------------------------------------

    def running(self) -> None:
        if self._saver is None:
            self._saver = asyncio.get_running_loop().create_task(self._save_loop(), name="aiclient-key-counters")

    async def done(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        self._save()

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            counters = self.counters
            if counters is not None and counters.changed:
                counters.changed = False
                # Snapshot on the loop (consistent), write from a thread (no blocking I/O on the loop).
                await asyncio.to_thread(self._write, counters.to_json())

    def _save(self) -> None:
        if self.counters is not None and self.counters.changed:
            self.counters.changed = False
            self._write(self.counters.to_json())

    def _write(self, data: dict) -> None:
        if self.path is None:
            return
        try:
            write_json_atomic(self.path, data)
        except OSError as e:
            logger.warning("aiclient-mitm: cannot write client key counters to %s: %s", self.path, e)
