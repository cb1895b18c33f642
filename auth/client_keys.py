"""Client keys with a policy: who a key is, what it may use, how much of it, until when.

Pure rules and UTC window arithmetic (the clock is injected), plus the per-key counters behind a
tiny async interface (`CounterStore`) so a shared implementation (Redis: INCRBY + EXPIREAT) can
replace the in-process one without touching the rules. A key is known everywhere by its name;
the secret never leaves this module's Keyring.
"""

from __future__ import annotations

import calendar
import fnmatch
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import SecretStr, TypeAdapter, ValidationError

from core.config import ApiKey, ClientKeyEntry, ConfigError, check_unique_keys, expand_env, format_errors

# The local counters' snapshot in state_dir (read by `python -m auth keys list` too).
COUNTERS_FILE = "client-keys.json"

MINUTE = "minute"
DAY = "day"
MONTH = "month"
WINDOWS = (MINUTE, DAY, MONTH)


# -- windows (UTC, fixed: a minute, a day from 00:00, a calendar month from the 1st) -------------


def window_start(window: str, now: float) -> int:
    """Start (epoch seconds) of the UTC window that contains `now`."""
    t = math.floor(now)
    if window == MINUTE:
        return t - t % 60
    if window == DAY:
        return t - t % 86_400
    if window == MONTH:
        d = datetime.fromtimestamp(t, UTC)
        return calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    raise ValueError(f"unknown window {window!r}")


def window_end(window: str, now: float) -> int:
    """End (exclusive, epoch seconds) of the UTC window that contains `now`: the next one's start."""
    start = window_start(window, now)
    if window == MINUTE:
        return start + 60
    if window == DAY:
        return start + 86_400
    d = datetime.fromtimestamp(start, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


def retry_after(window: str, now: float) -> int:
    """Whole seconds until the window frees, rounded up (a client retrying on time fits)."""
    return max(1, math.ceil(window_end(window, now) - now))


# -- keys --------------------------------------------------------------------------------------


def plain_key_name(secret: bytes) -> str:
    """The name of a plain (unnamed) key: a short hash, stable across restarts, never the key."""
    return "key-" + hashlib.sha256(secret).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str
    secret: bytes
    admin: bool = True
    models: tuple[str, ...] | None = None  # fnmatch globs over the model the client asked for
    providers: frozenset[str] | None = None
    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    expires_at: float | None = None  # epoch seconds

    @classmethod
    def from_entry(cls, entry: ApiKey) -> ClientKey:
        if isinstance(entry, SecretStr):
            secret = entry.get_secret_value().encode()
            return cls(plain_key_name(secret), secret)
        return cls(
            name=entry.name,
            secret=entry.key.get_secret_value().encode(),
            admin=entry.admin,
            models=tuple(entry.models) if entry.models is not None else None,
            providers=frozenset(entry.providers) if entry.providers is not None else None,
            requests_per_minute=entry.requests_per_minute,
            requests_per_day=entry.requests_per_day,
            tokens_per_day=entry.tokens_per_day,
            tokens_per_month=entry.tokens_per_month,
            expires_at=entry.expires_at.timestamp() if entry.expires_at is not None else None,
        )

    def allows_model(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model, glob) for glob in self.models)

    def allows_provider(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def limits(self) -> str:
        """The key's limits for messages and listings, e.g. 'requests_per_day=100, tokens_per_day=5000'."""
        named = (
            ("requests_per_minute", self.requests_per_minute),
            ("requests_per_day", self.requests_per_day),
            ("tokens_per_day", self.tokens_per_day),
            ("tokens_per_month", self.tokens_per_month),
        )
        return ", ".join(f"{k}={v}" for k, v in named if v is not None) or "none"


class Keyring:
    """The keys in force. Matching compares against every key so timing tells nothing."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[ClientKey] = ()) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def match(self, presented: bytes) -> ClientKey | None:
        found: ClientKey | None = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.secret) and found is None:
                found = key
        return found

    def secrets(self) -> list[bytes]:
        return [k.secret for k in self._keys]

    def names(self) -> list[str]:
        return [k.name for k in self._keys]


def build_keyring(sources: Iterable[tuple[str, Sequence[ApiKey]]]) -> Keyring:
    """One keyring from (where, entries) sources, e.g. api_keys, AICLIENT_API_KEYS, keys_file.
    Raises ConfigError naming the entry when a name or a key is used twice across them."""
    keys: list[ClientKey] = []
    seen_names: dict[str, str] = {}
    seen_secrets: dict[bytes, str] = {}
    for where, entries in sources:
        try:
            check_unique_keys(list(entries), where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for i, entry in enumerate(entries):
            key = ClientKey.from_entry(entry)
            here = f"{where}.{i}"
            if key.secret in seen_secrets:
                raise ConfigError(f"{here}: the same key as {seen_secrets[key.secret]}")
            if key.name in seen_names:
                raise ConfigError(f"{here}.name: {key.name!r} is already used by {seen_names[key.name]}")
            seen_secrets[key.secret] = here
            seen_names[key.name] = here
            keys.append(key)
    return Keyring(keys)


_ENTRIES = TypeAdapter(list[ApiKey])


def parse_keys_file(text: str, where: str = "keys_file") -> list[ApiKey]:
    """The entries of a keys file (a YAML list like api_keys; ${VAR} expanded). Raises ConfigError
    with the entry's path and the reason."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(f"{where}: must be a YAML list of keys (strings or {{key, name, ...}})")
    try:
        entries = _ENTRIES.validate_python(expand_env(data))
    except ValidationError as e:
        raise ConfigError(", ".join(f"{where}.{line}" for line in format_errors(e).split("; "))) from None
    try:
        check_unique_keys(entries, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return entries


def load_keys_file(path: Path) -> list[ApiKey]:
    """parse_keys_file() of a file; a missing file holds no keys (the keys command creates it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"keys_file: cannot read {path}: {e.strerror or e}") from None
    return parse_keys_file(text)


def entry_names(entries: Iterable[ApiKey]) -> list[str]:
    return [e.name for e in entries if isinstance(e, ClientKeyEntry)]


# -- counters ----------------------------------------------------------------------------------


class CounterStore(Protocol):
    """Per-key counters that reset with their window. A shared implementation must make incr
    atomic (Redis: INCRBY then EXPIREAT window_end) so limits stay exact across processes."""

    async def incr(self, key: str, amount: int, window_end: float) -> int:
        """Adds `amount` (may be negative) and returns the new value; the counter ends at window_end."""
        ...

    async def get(self, key: str) -> int:
        """The counter's value, 0 when unknown or its window has ended."""
        ...

    async def count(self, key: str, amount: int, window_end: float) -> None:
        """Adds `amount` when no decision waits for the new value (a shared store may batch it)."""
        ...


class LocalCounters:
    """CounterStore of one process: a dict, snapshotted as JSON (see to_json / from_json)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[str, tuple[int, float]] = {}
        self.changed = False

    async def incr(self, key: str, amount: int, window_end: float) -> int:
        value, end = self._values.get(key, (0, window_end))
        if end <= self._clock():
            value = 0
        value += amount
        self._values[key] = (value, window_end)
        self.changed = True
        return value

    async def count(self, key: str, amount: int, window_end: float) -> None:
        await self.incr(key, amount, window_end)

    async def get(self, key: str) -> int:
        found = self._values.get(key)
        if found is None or found[1] <= self._clock():
            return 0
        return found[0]

    def to_json(self) -> dict[str, Any]:
        now = self._clock()
        return {k: [v, end] for k, (v, end) in sorted(self._values.items()) if end > now}

    @classmethod
    def from_json(cls, data: Any, clock: Callable[[], float] = time.time) -> LocalCounters:
        store = cls(clock)
        if isinstance(data, dict):
            now = clock()
            for k, v in data.items():
                ok = isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v)
                if ok and v[1] > now:
                    store._values[str(k)] = (int(v[0]), float(v[1]))
        return store


def counter_key(name: str, what: str, window: str, now: float) -> str:
    """e.g. 'alice|requests|day|1767225600': one counter per key, measure and window instance."""
    return f"{name}|{what}|{window}|{window_start(window, now)}"


# -- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: status (401/403/429), message, code, Retry-After seconds."""

    status: int
    message: str
    code: str
    retry_after: int | None = None


def check_expiry(key: ClientKey, now: float) -> Refusal | None:
    if key.expires_at is None or not key.expired(now):
        return None
    when = datetime.fromtimestamp(key.expires_at, UTC).isoformat().replace("+00:00", "Z")
    return Refusal(401, f"client key {key.name!r} expired at {when}", "invalid_api_key")


def check_access(key: ClientKey, model: str, provider: str | None, now: float) -> Refusal | None:
    """Expiry and allowlists: pure, no counters."""
    expired = check_expiry(key, now)
    if expired is not None:
        return expired
    if not key.allows_model(model):
        allowed = ", ".join(key.models or ())
        return Refusal(
            403, f"client key {key.name!r} may not use model {model!r} (allowed: {allowed})", "model_not_allowed"
        )
    if provider is not None and not key.allows_provider(provider):
        allowed = ", ".join(sorted(key.providers or ()))
        return Refusal(
            403,
            f"client key {key.name!r} may not use provider {provider!r} (allowed: {allowed})",
            "provider_not_allowed",
        )
    return None


class KeyLimits:
    """Request and token limits of client keys over a CounterStore. Every named key's requests
    per day and tokens per day/month are counted (`keys list` shows them), limited or not."""

    def __init__(self, store: CounterStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def admit(self, key: ClientKey) -> Refusal | None:
        """Counts one request, or refuses (counting nothing) when a budget is spent."""
        now = self.clock()
        for window, limit in ((DAY, key.tokens_per_day), (MONTH, key.tokens_per_month)):
            if limit is not None and await self.store.get(counter_key(key.name, "tokens", window, now)) >= limit:
                return Refusal(
                    429,
                    f"client key {key.name!r} has used its tokens_per_{window}={limit}; "
                    f"retry in {retry_after(window, now)} s",
                    "rate_limit_exceeded",
                    retry_after(window, now),
                )
        counted: list[tuple[str, float]] = []
        for window, limit in ((MINUTE, key.requests_per_minute), (DAY, key.requests_per_day)):
            if limit is None and window == MINUTE:
                continue
            name = counter_key(key.name, "requests", window, now)
            end = window_end(window, now)
            if limit is None:  # counted for listings only (the day, after every limit passed)
                await self.store.count(name, 1, end)
                continue
            value = await self.store.incr(name, 1, end)
            counted.append((name, end))
            if limit is not None and value > limit:
                # Increment first, then compare: exact even when several processes share the store.
                for done, done_end in counted:
                    await self.store.incr(done, -1, done_end)
                return Refusal(
                    429,
                    f"client key {key.name!r} reached requests_per_{window}={limit}; "
                    f"retry in {retry_after(window, now)} s",
                    "rate_limit_exceeded",
                    retry_after(window, now),
                )
        return None

    async def add_tokens(self, key_name: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self.clock()
        for window in (DAY, MONTH):
            await self.store.count(counter_key(key_name, "tokens", window, now), tokens, window_end(window, now))

    async def today(self, key_name: str) -> dict[str, int]:
        """Usage in the current windows, for listings."""
        now = self.clock()
        return {
            "requests_today": await self.store.get(counter_key(key_name, "requests", DAY, now)),
            "tokens_today": await self.store.get(counter_key(key_name, "tokens", DAY, now)),
            "tokens_this_month": await self.store.get(counter_key(key_name, "tokens", MONTH, now)),
        }
