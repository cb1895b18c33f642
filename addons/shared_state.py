"""SharedState: builds the state backend of config `state` (local or redis), starts and stops it.

Before Pools and Usage in the chain, so they find `gateway.state` ready when they configure. A
live config edit that changes `state` swaps the backend (the old one is closed in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from addons.context import Gateway
from auth.state import StateBackend, make_state

logger = logging.getLogger(__name__)


class SharedState:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._settings: tuple[str, str | None, float] | None = None
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        settings = self.gateway.config.state
        url = settings.redis_url.get_secret_value() if settings.redis_url else None
        wanted = (settings.backend, url, settings.timeout)
        if wanted == self._settings:
            return
        old = self.gateway.state
        self.gateway.state = make_state(*wanted)
        self._settings = wanted
        described = self.gateway.state.describe()
        logger.info("aiclient-mitm: shared state: %s %s", described["backend"], described.get("url", ""))
        if self._running:
            self._spawn(self._swap(old, self.gateway.state))

    async def _swap(self, old: StateBackend, new: StateBackend) -> None:
        await old.close()
        await new.start()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="aiclient-state")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def running(self) -> None:
        self._running = True
        await self.gateway.state.start()

    async def done(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        await self.gateway.state.close()
