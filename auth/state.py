"""Shared state of a gateway cluster behind one small interface, with two backends.

`LocalState` is one process on its own: the addons keep today's memory and files in state_dir,
and this only adds in-process session affinity. `RedisState` shares what several processes
(or machines) must agree on through Redis, with the maintained `redis` asyncio client:

- account records (cooldowns, disabled reasons, windowed errors) in one hash per provider, and a
  pub/sub channel that tells every process about a change -- each process keeps a local mirror,
  so choosing an account never waits for Redis;
- counters that reset with a window (client-key limits): INCRBY + EXPIREAT in one Lua script,
  exact across processes;
- usage counters (HINCRBY per row and field), discovered per-account data, affinity bindings;
- one token refresh per account in the whole cluster: a lock (SET NX PX with a random token,
  released and checked -- the fencing check -- with compare-and-act scripts) and the refreshed
  credential published for the processes that waited.

Redis down: every call has a bounded timeout; after a failure calls short-circuit for a second
(the answer is "not shared now", never an error to a request), a warning is logged once,
`degraded` is True, and on reconnection the registered resync callbacks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "aiclient:"
POOL_CHANNEL = PREFIX + "pool"
AFFINITY_CHANNEL = PREFIX + "affinity"
# A binding read from Redis is kept in the local copy this long (a re-binding is pushed over pub/sub).
AFFINITY_CACHE = 30.0
# After a failed call, calls return their fallback at once for this long (then one tries again).
RETRY_DOWN_AFTER = 1.0
# A refresh lock expires by itself after this long (a holder that died never blocks for good).
REFRESH_LOCK_TTL = 30.0
MAX_CONNECTIONS = 32
# How long a refresh keeps trying to reach Redis for its lock before refreshing without it.
LOCK_DOWN_GRACE = 3.0
# Seconds counts no decision waits for (tokens, unlimited request counts) are gathered before one send.
COUNT_BATCH_DELAY = 0.1

Record = dict[str, Any]
AccountListener = Callable[[str, str, Record], None]  # provider, label, record
Resync = Callable[[], Awaitable[None]]

# KEYS[1] counter; ARGV amount, window end (epoch s). Atomic: no read-modify-write race.
_INCR_WINDOW = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return v
"""
# Delete/extend only when the lock still holds our token (the fencing check).
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def redact_url(url: str) -> str:
    """The URL without its password, for logs and /health."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class RefreshFence:
    """What a lock holder can ask: is the lock still mine (check before writing), and what did the
    previous holder publish."""

    async def held(self) -> bool:
        return True

    async def published(self) -> Record | None:
        return None

    async def publish(self, data: Record, ttl: float) -> None:
        return None


class StateBackend:
    """The operations the pools, key limits, usage, discovered data, affinity and refreshes need.
    This base is the `local` backend's behaviour: nothing is shared, nothing can be down."""

    name = "local"
    shared = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._bindings: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def degraded(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "state": "ok"}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def on_account(self, listener: AccountListener) -> None:
        """Called for every account record another process wrote."""

    def on_resync(self, callback: Resync) -> None:
        """Called after (re)connecting to the shared store."""

    # -- account records ---------------------------------------------------------------------

    async def put_account(self, provider: str, label: str, record: Record) -> bool:
        return False

    async def accounts(self) -> dict[str, dict[str, Record]] | None:
        return None

    # -- windowed counters (auth.client_keys.CounterStore) -------------------------------------------

    async def incr(self, key: str, amount: int, window_end: float) -> int | None:
        """None: not shared (the caller counts locally)."""
        return None

    async def get(self, key: str) -> int | None:
        return None

    async def incr_many(self, batch: dict[str, tuple[int, float]]) -> bool:
        """key -> (amount, window end), in one round trip; True when stored."""
        return False

    # -- usage --------------------------------------------------------------------------------

    async def add_usage(self, deltas: dict[str, int]) -> bool:
        """field -> amount; True when stored."""
        return False

    async def usage(self) -> dict[str, int] | None:
        return None

    async def usage_since(self, since: float) -> float | None:
        return None

    # -- discovered per-account data ----------------------------------------------------------------

    async def put_discovered(self, kind: str, label: str, value: str) -> None:
        return None

    async def discovered(self, kind: str) -> dict[str, str] | None:
        return None

    # -- session affinity ---------------------------------------------------------------------

    async def bound(self, session: str) -> str | None:
        found = self._bindings.get(session)
        if found is None:
            return None
        if found[1] <= self.clock():
            self._bindings.pop(session, None)
            return None
        return found[0]

    async def bind(self, session: str, label: str, ttl: float) -> bool:
        """Binds (or keeps alive) a session; False when a recent binding to `label` is still
        fresh (more than half its ttl left) and nothing needed writing."""
        now = self.clock()
        found = self._bindings.get(session)
        if found is not None and found[0] == label and found[1] - now > ttl / 2:
            return False
        self._bindings[session] = (label, now + ttl)
        if len(self._bindings) > 100_000:  # bounded: drop the expired ones
            self._bindings = {k: v for k, v in self._bindings.items() if v[1] > now}
        return True

    # -- one refresh per account ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def refresh_lock(self, name: str) -> AsyncIterator[RefreshFence]:
        """Credentials already refresh one at a time within a process; nothing more to do alone."""
        yield RefreshFence()


class LocalState(StateBackend):
    """One process: memory and the files in state_dir, as the addons keep them."""


class RedisState(StateBackend):
    name = "redis"
    shared = True

    def __init__(self, url: str, *, timeout: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        import redis.asyncio as aioredis  # only a redis deployment pays the import

        self.url_for_logs = redact_url(url)
        self.timeout = timeout
        # One connection pool per process; bounded socket timeouts so nothing waits for long. A
        # blocking pool: a burst past max_connections waits (bounded) for a free connection instead
        # of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self._incr_window = self.client.register_script(_INCR_WINDOW)
        self._unlock = self.client.register_script(_UNLOCK)
        self._down_until = 0.0
        self._down = False
        self._listeners: list[AccountListener] = []
        self._resyncs: list[Resync] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.origin = secrets.token_hex(6)  # this process, to skip its own pub/sub messages

    # -- health --------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._down

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "state": "degraded" if self._down else "ok", "url": self.url_for_logs}

    def _failed(self, what: str, error: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_DOWN_AFTER
        if not self._down:
            self._down = True
            logger.warning(
                "aiclient-mitm: shared state (redis %s) unreachable (%s: %s: %s); serving from this process's "
                "memory until it is back",
                self.url_for_logs,
                what,
                type(error).__name__,
                error,
            )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            logger.warning("aiclient-mitm: shared state (redis %s) is back; resynchronising", self.url_for_logs)
            self._spawn(self._run_resync())

    async def _call[T](self, what: str, make: Callable[[], Awaitable[T]], fallback: T, force: bool = False) -> T:
        """One bounded Redis call; the fallback while Redis is down (unless forced) or when it fails."""
        if not force and self._down and time.monotonic() < self._down_until:
            return fallback
        try:
            result = await asyncio.wait_for(make(), self.timeout * 2)
        except (OSError, TimeoutError) as e:
            self._failed(what, e)
            return fallback
        except Exception as e:  # redis.exceptions.* (ConnectionError, ResponseError, ...)
            from redis.exceptions import RedisError

            if not isinstance(e, RedisError):
                raise
            self._failed(what, e)
            return fallback
        self._recovered()
        return result

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._subscriber())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_account(self, listener: AccountListener) -> None:
        self._listeners.append(listener)

    def on_resync(self, callback: Resync) -> None:
        self._resyncs.append(callback)

    async def _run_resync(self) -> None:
        for callback in list(self._resyncs):
            try:
                await callback()
            except Exception:
                logger.exception("aiclient-mitm: resynchronising shared state failed")

    async def _subscriber(self) -> None:
        """Pool changes of the other processes into the local mirrors; reconnects forever."""
        first = True
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(POOL_CHANNEL, AFFINITY_CHANNEL), self.timeout * 4)
                if first:
                    first = False
                    self._down = False
                    await self._run_resync()
                elif self._down:
                    self._recovered()  # logs it and resynchronises
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("channel") == AFFINITY_CHANNEL:
                        self._learn_binding(message.get("data"))
                    elif message is not None:
                        self._deliver(message.get("data"))
                    elif self._down and time.monotonic() >= self._down_until:
                        await asyncio.wait_for(self.client.ping(), self.timeout * 2)
                        self._recovered()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
                raise
            except Exception as e:
                self._failed("subscribe", e)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
                await asyncio.sleep(RETRY_DOWN_AFTER)

    def _learn_binding(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") != self.origin:
                self._bindings[str(message["session"])] = (str(message["label"]), self.clock() + float(message["ttl"]))
        except (TypeError, ValueError, KeyError):
            return

    def _deliver(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self.origin:
                return
            provider, label, record = message["provider"], message["label"], message["record"]
        except (TypeError, ValueError, KeyError):
            return
        for listener in self._listeners:
            try:
                listener(provider, label, record)
            except Exception:
                logger.exception("aiclient-mitm: applying a shared pool change failed")

    # -- account records ---------------------------------------------------------------------

    async def put_account(self, provider: str, label: str, record: Record) -> bool:
        text = json.dumps(record, separators=(",", ":"))
        message = json.dumps(
            {"origin": self.origin, "provider": provider, "label": label, "record": record}, separators=(",", ":")
        )

        async def write() -> bool:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(f"{PREFIX}pool:{provider}", label, text)
                pipe.publish(POOL_CHANNEL, message)
                await pipe.execute()
            return True

        return await self._call("put_account", write, False)

    async def accounts(self) -> dict[str, dict[str, Record]] | None:
        async def read() -> dict[str, dict[str, Record]]:
            out: dict[str, dict[str, Record]] = {}
            async for key in self.client.scan_iter(match=f"{PREFIX}pool:*", count=100):
                provider = key.removeprefix(f"{PREFIX}pool:")
                rows = await self.client.hgetall(key)
                out[provider] = {}
                for label, text in rows.items():
                    with contextlib.suppress(ValueError):
                        out[provider][label] = json.loads(text)
            return out

        return await self._call("accounts", read, None)

    # -- counters ------------------------------------------------------------------------------

    async def incr(self, key: str, amount: int, window_end: float) -> int | None:
        name = f"{PREFIX}count:{key}"
        return await self._call(
            "incr", lambda: self._incr_window(keys=[name], args=[int(amount), int(window_end) + 1]), None
        )

    async def incr_many(self, batch: dict[str, tuple[int, float]]) -> bool:
        async def write() -> bool:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, (amount, end) in batch.items():
                    await self._incr_window(
                        keys=[f"{PREFIX}count:{key}"], args=[int(amount), int(end) + 1], client=pipe
                    )
                await pipe.execute()
            return True

        return await self._call("incr_many", write, False)

    async def get(self, key: str) -> int | None:
        async def read() -> int:
            value = await self.client.get(f"{PREFIX}count:{key}")
            return int(value or 0)

        return await self._call("get", read, None)

    # -- usage --------------------------------------------------------------------------------

    async def add_usage(self, deltas: dict[str, int]) -> bool:
        async def write() -> bool:
            async with self.client.pipeline(transaction=False) as pipe:
                for field, amount in deltas.items():
                    pipe.hincrby(f"{PREFIX}usage", field, amount)
                await pipe.execute()
            return True

        return await self._call("add_usage", write, False)

    async def usage(self) -> dict[str, int] | None:
        async def read() -> dict[str, int]:
            return {k: int(v) for k, v in (await self.client.hgetall(f"{PREFIX}usage")).items()}

        return await self._call("usage", read, None)

    async def usage_since(self, since: float) -> float | None:
        """When the cluster's usage counting began (the oldest process's `since`)."""

        async def first() -> float:
            await self.client.set(f"{PREFIX}usage_since", repr(since), nx=True)
            return float(await self.client.get(f"{PREFIX}usage_since") or since)

        return await self._call("usage_since", first, None)

    # -- discovered data ---------------------------------------------------------------------

    async def put_discovered(self, kind: str, label: str, value: str) -> None:
        await self._call("put_discovered", lambda: self.client.hset(f"{PREFIX}discovered:{kind}", label, value), 0)

    async def discovered(self, kind: str) -> dict[str, str] | None:
        return await self._call("discovered", lambda: self.client.hgetall(f"{PREFIX}discovered:{kind}"), None)

    # -- affinity -----------------------------------------------------------------------------

    async def bound(self, session: str) -> str | None:
        # The local copy first: no round trip for a conversation this process knows (new bindings
        # and re-bindings of other processes arrive over pub/sub).
        local = await super().bound(session)
        if local is not None:
            return local
        found = await self._call("bound", lambda: self.client.get(f"{PREFIX}affinity:{session}"), None)
        if found is not None:
            self._bindings[session] = (found, self.clock() + AFFINITY_CACHE)
        return found

    async def bind(self, session: str, label: str, ttl: float) -> bool:
        previous = self._bindings.get(session)
        if not await super().bind(session, label, ttl):
            return False
        key = f"{PREFIX}affinity:{session}"
        moved = previous is None or previous[0] != label
        message = json.dumps({"origin": self.origin, "session": session, "label": label, "ttl": ttl})

        async def write() -> bool:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, label, px=int(ttl * 1000))
                if moved:  # a new or changed binding: every process's local copy learns it
                    pipe.publish(AFFINITY_CHANNEL, message)
                await pipe.execute()
            return True

        return await self._call("bind", write, False)

    # -- refresh lock --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def refresh_lock(self, name: str) -> AsyncIterator[RefreshFence]:
        """Waits (bounded by REFRESH_LOCK_TTL) for the cluster-wide lock of one account's refresh.
        A rotating refresh token spent twice kills the account, so this tries Redis for real (no
        short circuit) for LOCK_DOWN_GRACE seconds before refreshing without the lock; the fence it
        then yields still reads what another process published."""
        key = f"{PREFIX}lock:refresh:{name}"
        token = secrets.token_hex(16)
        deadline = time.monotonic() + REFRESH_LOCK_TTL
        unreachable_until = time.monotonic() + LOCK_DOWN_GRACE
        acquired: bool | None = False
        pause = 0.02

        async def try_once() -> bool:  # SET NX answers nil (None) when taken: made a bool here
            return bool(await self.client.set(key, token, nx=True, px=int(REFRESH_LOCK_TTL * 1000)))

        while time.monotonic() < deadline:
            acquired = await self._call("refresh_lock", try_once, None, force=True)  # None: Redis is down
            if acquired:
                break
            if acquired is None and time.monotonic() >= unreachable_until:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        if not acquired:
            logger.warning(
                "aiclient-mitm: refresh lock %s not obtained (%s); refreshing without it",
                name,
                "shared state unreachable" if acquired is None else "timed out",
            )
            yield _RedisFence(self, key, None, name)
            return
        try:
            yield _RedisFence(self, key, token, name)
        finally:
            await self._call("refresh_unlock", lambda: self._unlock(keys=[key], args=[token]), 0)


class _RedisFence(RefreshFence):
    """token None: refreshing without the lock (Redis unreachable); held() cannot tell, says True."""

    def __init__(self, state: RedisState, key: str, token: str | None, name: str) -> None:
        self.state = state
        self.key = key
        self.token = token
        self.name = name

    async def held(self) -> bool:
        if self.token is None:
            return True
        value = await self.state._call("refresh_fence", lambda: self.state.client.get(self.key), self.token)
        return value == self.token

    async def published(self) -> Record | None:
        text = await self.state._call(
            "published", lambda: self.state.client.get(f"{PREFIX}credential:{self.name}"), None, force=True
        )
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def publish(self, data: Record, ttl: float) -> None:
        text = json.dumps(data, separators=(",", ":"))
        await self.state._call(
            "publish",
            lambda: self.state.client.set(f"{PREFIX}credential:{self.name}", text, px=max(1000, int(ttl * 1000))),
            0,
        )


class SharedCounters:
    """auth.client_keys.CounterStore over the state backend: exact across processes with redis, the
    process's own counters with local -- and while Redis is unreachable (a request is never refused
    for that; what is counted meanwhile stays in this process)."""

    def __init__(self, state: Callable[[], StateBackend], local: Any) -> None:
        self._state = state  # read at each call: a config reload may swap the backend
        self.local = local
        # count() increments waiting for their batch: key -> (amount, window end).
        self._pending: dict[str, tuple[int, float]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def count(self, key: str, amount: int, window_end: float) -> None:
        """No decision waits for it: batched into one pipeline a moment later (no round trip on the
        request's path); with local state, or when the batch does not get through, counted here."""
        if not self._state().shared:
            await self.local.incr(key, amount, window_end)
            return
        previous = self._pending.get(key, (0, window_end))[0]
        self._pending[key] = (previous + amount, window_end)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later(), name="aiclient-counters")

    async def _flush_later(self) -> None:
        await asyncio.sleep(COUNT_BATCH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        if not await self._state().incr_many(batch):
            for key, (amount, end) in batch.items():
                await self.local.incr(key, amount, end)

    async def incr(self, key: str, amount: int, window_end: float) -> int:
        state = self._state()
        if state.shared:
            value = await state.incr(key, amount, window_end)
            if value is not None:
                return value
        return await self.local.incr(key, amount, window_end)

    async def get(self, key: str) -> int:
        state = self._state()
        if state.shared:
            value = await state.get(key)
            if value is not None:
                return value
        return await self.local.get(key)


ClusterLock = Callable[[str], contextlib.AbstractAsyncContextManager[RefreshFence]]
# A credential alone in its process (or with the local backend): its own single-flight is enough.
NO_CLUSTER_LOCK: ClusterLock = LocalState().refresh_lock


def make_state(backend: str, redis_url: str | None, timeout: float) -> StateBackend:
    if backend == "redis":
        assert redis_url
        return RedisState(redis_url, timeout=timeout)
    return LocalState()
