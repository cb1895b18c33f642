"""Usage: token and request counters per client key x provider x account x model, at GET /usage.

Counted from the IR usage of every finished generate exchange (streams included, and cut
streams with what they reported); the same tokens go to the caller's key limits. A key is
known by its name; a non-admin key sees only its own rows. Kept in memory and written to
`<state_dir>/usage.json` a few seconds after a change (atomically, from a worker thread) and at
shutdown, so a restart keeps them.

With a shared state backend (redis) the increments also go to Redis (batched, off the request's
path), and GET /usage answers the cluster's totals; while Redis is unreachable the increments wait
in memory and /usage answers this process's own book, saying `"state": "degraded"`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons import replies
from addons.context import CLIENT_KEY, CLIENT_KEY_NAME, EXCHANGE, KEY_ADMITTED, ROUTE, Gateway, Route
from addons.outcome import Outcome, outcome_of
from core.files import read_json, write_json_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "usage.json"
COUNTED = "aiclient.usage_counted"
# Seconds between a change and the write of the state file (changes in between share one write).
SAVE_DELAY = 5.0
# Seconds between a change and its send to the shared backend (changes in between share one send).
SHARE_DELAY = 0.1


@dataclass(slots=True)
class Counters:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Counters) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens


Key = tuple[str, str, str, str]  # client key name, provider, account, model
KEY_FIELDS = ("client_key_name", "provider", "account", "model")


class UsageBook:
    """The counters; pure state, serializable to and from the state file's JSON."""

    def __init__(self) -> None:
        self.rows: dict[Key, Counters] = {}
        self.since = time.time()

    def count(self, key: Key, outcome: Outcome) -> None:
        u = outcome.usage
        row = self.rows.setdefault(key, Counters())
        row.add(
            Counters(
                requests=1,
                errors=0 if outcome.ok else 1,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cached_tokens=u.cache_read_tokens,
                reasoning_tokens=u.reasoning_tokens,
            )
        )

    def to_json(self, only_key: str | None = None) -> dict[str, Any]:
        """Every row, or only those of the key named `only_key` (the total is of the rows shown)."""
        shown = sorted((k, c) for k, c in self.rows.items() if only_key is None or k[0] == only_key)
        rows = [{**dict(zip(KEY_FIELDS, key, strict=True)), **asdict(c)} for key, c in shown]
        total = Counters()
        for _, c in shown:
            total.add(c)
        return {"since": self.since, "total": asdict(total), "rows": rows}

    @classmethod
    def from_shared(cls, fields: dict[str, int], since: float) -> UsageBook:
        """The book of the shared hash: field = JSON [client key id, provider, account, model, counter]."""
        book = cls()
        book.since = since
        names = set(Counters.__slots__)
        for field, value in fields.items():
            try:
                *key, counter = json.loads(field)
            except (ValueError, TypeError):
                continue
            if len(key) != len(KEY_FIELDS) or counter not in names:
                continue
            row = book.rows.setdefault(tuple(str(k) for k in key), Counters())  # type: ignore[arg-type]
            setattr(row, counter, getattr(row, counter) + int(value))
        return book

    @classmethod
    def from_json(cls, data: Any) -> UsageBook:
        book = cls()
        if not isinstance(data, dict):
            return book
        since = data.get("since")
        if isinstance(since, int | float):
            book.since = float(since)
        fields = set(Counters.__slots__)
        for row in data.get("rows") or ():
            if not isinstance(row, dict):
                continue
            if not row.get("client_key_name") and row.get("client_key_id"):
                # Rows written before keys had names: a plain key's name is key-<its id>.
                row = {**row, "client_key_name": f"key-{row['client_key_id']}"}
            key = tuple(str(row.get(k) or "") for k in KEY_FIELDS)
            counts = {k: int(v) for k, v in row.items() if k in fields and isinstance(v, int)}
            book.rows.setdefault(key, Counters()).add(Counters(**counts))  # type: ignore[arg-type]
        return book


def state_dir(gateway: Gateway) -> Path:
    config = gateway.config
    base = gateway.config_path.parent if gateway.config_path else Path.cwd()
    return config.state_dir if config.state_dir.is_absolute() else base / config.state_dir


class Usage:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.book = UsageBook()
        self.path: Path | None = None
        self._save_task: asyncio.Task[None] | None = None
        # Increments not yet in the shared backend (field of UsageBook.from_shared -> amount).
        self._pending: dict[str, int] = {}
        self._share_task: asyncio.Task[None] | None = None
        self._fields: dict[tuple[Key, str], str] = {}
        self._wired: object | None = None

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        path = state_dir(self.gateway) / STATE_FILE
        if path != self.path:  # a reload of the same config keeps the live counters
            self.path = path
            self.book = UsageBook.from_json(read_json(path))
        state = self.gateway.state
        if state.shared and self._wired is not state:
            self._wired = state
            state.on_resync(self._flush)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "usage":
            return
        key = flow.metadata.get(CLIENT_KEY)
        if key is None:
            flow.response = replies.error_response(route.dialect, 401, "a client key is required")
            return
        body = await self._view(None if key.admin else key.name)
        body["client_key_name"] = key.name
        body["admin"] = key.admin
        flow.response = replies.json_response(200, body)

    async def _view(self, only_key: str | None) -> dict[str, Any]:
        state = self.gateway.state
        if not state.shared:
            return self.book.to_json(only_key)
        await self._flush()
        fields = await state.usage()
        since = await state.usage_since(self.book.since)
        if fields is None or self._pending:
            return {**self.book.to_json(only_key), "scope": "this process", "state": "degraded"}
        shared = UsageBook.from_shared(fields, since or self.book.since)
        return {**shared.to_json(only_key), "scope": "cluster"}

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._count(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._count(flow)

    async def done(self) -> None:
        if self._save_task is not None and not self._save_task.done():
            self._save_task.cancel()
        self._save()

    async def _count(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(COUNTED):
            return
        try:
            outcome = outcome_of(flow)
            if outcome is None:
                return
            flow.metadata[COUNTED] = True
            route: Route = flow.metadata[ROUTE]
            exchange = flow.metadata.get(EXCHANGE)
            key = (
                flow.metadata.get(CLIENT_KEY_NAME) or "",
                getattr(exchange, "provider", None) or route.provider or "",
                exchange.member.label if exchange is not None else "",
                getattr(exchange, "model", None) or route.upstream_model or route.model,
            )
            self.book.count(key, outcome)
            self._schedule_save()
            if self.gateway.state.shared:
                self._share(key, outcome)
        except Exception:
            logger.exception("aiclient-mitm: could not count usage")
            return
        await self._count_key_tokens(flow, outcome)

    async def _count_key_tokens(self, flow: http.HTTPFlow, outcome: Outcome) -> None:
        """The answer's input + output tokens go to the caller's key budgets (cut streams: what came)."""
        limits = self.gateway.key_limits
        name = flow.metadata.get(CLIENT_KEY_NAME)
        if limits is None or name is None or not flow.metadata.get(KEY_ADMITTED):
            return
        try:
            await limits.add_tokens(name, outcome.usage.input_tokens + outcome.usage.output_tokens)
        except Exception:
            logger.exception("aiclient-mitm: could not count tokens for client key %s", name)

    def _share(self, key: Key, outcome: Outcome) -> None:
        """Queues this exchange's increments for the shared backend (sent in one batch shortly)."""
        u = outcome.usage
        for counter, amount in (
            ("requests", 1),
            ("errors", 0 if outcome.ok else 1),
            ("input_tokens", u.input_tokens),
            ("output_tokens", u.output_tokens),
            ("cached_tokens", u.cache_read_tokens),
            ("reasoning_tokens", u.reasoning_tokens),
        ):
            if amount:
                field = self._field(key, counter)
                self._pending[field] = self._pending.get(field, 0) + amount
        if self._share_task is None or self._share_task.done():
            self._share_task = asyncio.get_running_loop().create_task(self._share_later(), name="aiclient-usage-share")

    def _field(self, key: Key, counter: str) -> str:
        """The shared hash's field name of one counter of one row (cached: rows repeat)."""
        found = self._fields.get((key, counter))
        if found is None:
            if len(self._fields) > 50_000:
                self._fields.clear()
            found = self._fields[(key, counter)] = json.dumps([*key, counter], separators=(",", ":"))
        return found

    async def _share_later(self) -> None:
        await asyncio.sleep(SHARE_DELAY)
        await self._flush()

    async def _flush(self) -> None:
        """Sends the pending increments; kept for the next try when the backend does not take them."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        if not await self.gateway.state.add_usage(batch):
            for field, amount in batch.items():
                self._pending[field] = self._pending.get(field, 0) + amount

    def _schedule_save(self) -> None:
        if self.path is None or (self._save_task is not None and not self._save_task.done()):
            return
        self._save_task = asyncio.get_running_loop().create_task(self._save_later(), name="aiclient-usage-save")

    async def _save_later(self) -> None:
        await asyncio.sleep(SAVE_DELAY)
        # Snapshot on the loop (consistent), write from a thread (no blocking I/O on the loop).
        data = self.book.to_json()
        await asyncio.to_thread(self._write, data)

    def _save(self) -> None:
        if self.path is not None:
            self._write(self.book.to_json())

    def _write(self, data: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            write_json_atomic(self.path, data)
        except OSError as e:
            logger.warning("aiclient-mitm: cannot write usage counters to %s: %s", self.path, e)
