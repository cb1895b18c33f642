"""Pools: the account pools of every provider, their background work and GET /pool.

Builds the pools from config (expanding credential directories and globs), restores their
snapshot so cooldowns and disabled reasons survive a restart, and runs one asyncio task set
while mitmproxy runs: tokens near expiry are refreshed ahead -- idle and cooling accounts too,
so an idle gateway never wakes up with every token expired -- optional health checks recover
accounts, and the snapshot is written atomically whenever the state changed.

With a shared state backend (redis), every change of an account's cooldown/disabled state is
published, other processes' changes are applied to the local pools (a mirror: choosing an
account never waits for Redis), and refreshes of one account take the cluster-wide lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import httpx2
from mitmproxy import http

from addons import replies
from addons.context import ROUTE, Gateway, Route
from auth.accounts import expand_accounts
from auth.code_assist import ProjectStore
from auth.credentials import CredentialError
from auth.pool import AccountPool, CooldownRules, PoolAccount
from auth.state import Record, StateBackend
from core.files import read_json, write_json_atomic
from providers import ADAPTERS
from translators import ir

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "pool.json"
# How often the background loop looks at tokens and the snapshot.
TICK_SECONDS = 5.0


class Pools:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._tasks: set[asyncio.Task[None]] = set()
        self._saved: dict | None = None
        self._last_check: dict[str, float] = {}
        self._wired: StateBackend | None = None

    def state_dir(self) -> Path:
        return self.gateway.config.state_path(self.gateway.config_path)

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        config = self.gateway.config
        rules = CooldownRules(**config.cooldown.model_dump())
        state_dir = self.state_dir()
        # A reload (POST /admin/reload) keeps the live state; at start it comes from the snapshot.
        saved = self._snapshot() if self.gateway.pools else (read_json(state_dir / SNAPSHOT_FILE) or {})
        pools: dict[str, AccountPool] = {}
        for pid in config.configured_providers():
            adapter = ADAPTERS.get(pid)
            if adapter is None:
                continue
            provider = config.providers[pid]
            members = []
            for label, account in expand_accounts(provider.accounts, self.gateway.config_path.parent):
                try:
                    if not account.enabled:
                        raise CredentialError("disabled in config")
                    members.append(
                        PoolAccount(label, adapter.credential(provider, account, label=label, state_dir=state_dir))
                    )
                except CredentialError as e:
                    logger.warning("aiclient-mitm: %s account %s is skipped: %s", pid, label, e)
                    members.append(PoolAccount(label, None, str(e)))
            pool = AccountPool(pid, members, strategy=provider.strategy, rules=rules)
            pool.restore(saved.get(pid) or {})
            pools[pid] = pool
        self.gateway.pools = pools
        self._saved = self._snapshot()
        self._share()

    # -- shared state ----------------------------------------------------------------------------

    def _share(self) -> None:
        """Wires the pools to the state backend: publish our changes, apply the others', one refresh."""
        state = self.gateway.state
        if not state.shared:
            return
        if self._wired is not state:
            self._wired = state
            state.on_account(self._apply)
            state.on_resync(self._resync)
            ProjectStore.shared = state  # Code Assist projects one process discovered serve all
        for pid, pool in self.gateway.pools.items():
            pool.on_change = self._publisher(pid)
            for acct in pool.accounts:
                if acct.credential is not None and getattr(acct.credential, "refreshable", False):
                    # Credentials that refresh take the cluster-wide lock of their account.
                    with contextlib.suppress(AttributeError):
                        acct.credential.cluster_lock = state.refresh_lock
                        acct.credential.cluster_name = f"{pid}:{acct.label}"
        with contextlib.suppress(RuntimeError):  # a live reload: take the cluster's view now
            self._spawn(self._resync())

    def _publisher(self, pid: str):
        def publish(acct: PoolAccount) -> None:
            with contextlib.suppress(RuntimeError):  # no loop (unit use): nothing to share with
                self._spawn(self._put(pid, acct))

        return publish

    async def _put(self, pid: str, acct: PoolAccount) -> None:
        pool = self.gateway.pools.get(pid)
        if pool is None:
            return
        # Not taken (Redis down): the resync after reconnection sends it.
        await self.gateway.state.put_account(pid, acct.label, pool.shared_record(acct))

    def _apply(self, pid: str, label: str, record: Record) -> None:
        pool = self.gateway.pools.get(pid)
        if pool is not None and pool.apply_shared(label, record):
            logger.debug("aiclient-mitm: %s/%s updated from another process", pid, label)

    async def _resync(self) -> None:
        """After (re)connecting: take the cluster's newer records, then send ours that Redis lacks
        or has older (changes made while it was down, or a Redis that restarted empty)."""
        shared = await self.gateway.state.accounts()
        if shared is None:
            return
        for pid, records in shared.items():
            for label, record in records.items():
                self._apply(pid, label, record)
        for pid, pool in self.gateway.pools.items():
            for acct in pool.accounts:
                theirs = shared.get(pid, {}).get(acct.label) or {}
                if acct.state.changed_at > float(theirs.get("changed_at") or 0.0):
                    await self._put(pid, acct)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="aiclient-pool-share")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- background work -------------------------------------------------------------------------

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        for task in (
            loop.create_task(self._loop(), name="aiclient-pools"),
            loop.create_task(self._discover_models(), name="aiclient-models"),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._save_if_changed()

    async def _loop(self) -> None:
        while True:
            try:
                await self._refresh_near_expiry()
                await self._health_checks()
                await asyncio.to_thread(self._save_if_changed)
            except Exception:
                logger.exception("aiclient-mitm: pool background work failed; continuing")
            await asyncio.sleep(TICK_SECONDS)

    async def _refresh_near_expiry(self) -> None:
        now = time.time()
        for pid, pool in self.gateway.pools.items():
            ahead = self.gateway.config.providers[pid].refresh_ahead + 2 * TICK_SECONDS
            for acct in pool.accounts:
                cred = acct.credential
                expires = getattr(cred, "expires_at", None) if cred is not None else None
                if cred is None or not getattr(cred, "refreshable", False) or expires is None:
                    continue
                if expires - now > ahead or (acct.state.disabled and acct.state.disabled_until is None):
                    continue
                try:
                    await cred.auth()  # refreshes ahead of expiry, single-flight with request-time refresh
                except CredentialError as e:
                    logger.warning("aiclient-mitm: background refresh of %s/%s failed: %s", pid, acct.label, e)
                    pool.disable(acct, f"token refresh failed: {e}")

    async def _discover_models(self) -> None:
        """Once at start: the model list of upstreams that publish one (adapter.models_request),
        asked with the provider's first account that has a token; the built-in list stays otherwise."""
        for pid, pool in self.gateway.pools.items():
            adapter = ADAPTERS.get(pid)
            ask = getattr(adapter, "models_request", None)
            if ask is None or self.gateway.config.providers[pid].models:
                continue
            provider = self.gateway.config.providers[pid]
            for acct in pool.accounts:
                if acct.credential is None or acct.state.disabled:
                    continue
                try:
                    url, headers = ask(provider, await acct.credential.auth())
                    timeout = httpx2.Timeout(30.0, connect=provider.connect_timeout)
                    async with httpx2.AsyncClient(trust_env=False, timeout=timeout, follow_redirects=False) as client:
                        r = await client.get(url, headers=headers)
                    models = adapter.parse_models(r.json()) if r.status_code == 200 else []
                except (CredentialError, httpx2.HTTPError, ValueError) as e:
                    logger.info("aiclient-mitm: could not list the models of %s: %s", pid, e)
                    continue
                if models:
                    self.gateway.discovered_models[pid] = models
                    logger.info("aiclient-mitm: %s lists %d models", pid, len(models))
                    break
                logger.info("aiclient-mitm: %s answered %s to the model list", pid, r.status_code)
                break

    async def _health_checks(self) -> None:
        now = time.time()
        for pid, pool in self.gateway.pools.items():
            check = self.gateway.config.providers[pid].health_check
            if check.interval <= 0 or now - self._last_check.get(pid, 0.0) < check.interval:
                continue
            self._last_check[pid] = now
            for acct in pool.accounts:
                if acct.credential is None or acct.state.disabled or not acct.state.consecutive_errors:
                    continue
                if await self._probe(pid, acct, check.model):
                    pool.recover(acct)
                    logger.info("aiclient-mitm: %s/%s recovered after a health check", pid, acct.label)

    async def _probe(self, pid: str, acct: PoolAccount, model: str | None) -> bool:
        """A cheap unary request ("Hi", 1 output token) with the account; True when it succeeds."""
        adapter = ADAPTERS[pid]
        provider = self.gateway.config.providers[pid]
        model = model or (provider.models or list(adapter.default_models) or ["default"])[0]
        req = ir.Request(model=model, messages=[ir.Message("user", [ir.TextPart("Hi")])], max_tokens=1)
        try:
            auth = await acct.credential.auth()
            body = adapter.render(provider, req, model)
            up = adapter.build(provider, auth, body, request=req, model=model, stream=False, client_headers={})
            timeout = httpx2.Timeout(30.0, connect=provider.connect_timeout)
            async with httpx2.AsyncClient(trust_env=False, timeout=timeout) as client:
                r = await client.post(up.url, headers=up.headers, content=up.body)
            return r.status_code < 400
        except (CredentialError, httpx2.HTTPError, ValueError) as e:
            logger.info("aiclient-mitm: health check of %s/%s failed: %s", pid, acct.label, e)
            return False

    # -- persistence and visibility ------------------------------------------------------------------

    def _snapshot(self) -> dict:
        return {pid: pool.snapshot() for pid, pool in self.gateway.pools.items()}

    def _save_if_changed(self) -> None:
        if self.gateway.config_path is None:
            return
        snap = self._snapshot()
        if snap == self._saved:
            return
        try:
            write_json_atomic(self.state_dir() / SNAPSHOT_FILE, snap)
            self._saved = snap
        except OSError as e:
            logger.warning("aiclient-mitm: cannot write the pool snapshot: %s", e)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "pool":
            return
        # A non-admin key sees only the providers its policy lets it use.
        key = route.client_key
        shown = {
            pid: pool.status()
            for pid, pool in self.gateway.pools.items()
            if key is None or key.admin or key.allows_provider(pid)
        }
        flow.response = replies.json_response(200, {"providers": shown})
