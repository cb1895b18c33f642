"""Accounts of one provider: which one serves the next request, and what failures did to them.

Pure state with an injectable clock (tests never sleep for real cooldowns). Cooldowns are kept
per account and per model, because a 429 or an exhausted quota is usually about one model.
An account is never silently dropped: its state and the reason are always visible.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from auth.credentials import Credential

Strategy = Literal["round-robin", "least-recently-used", "fill-first"]
ANY_MODEL = "*"


@dataclass(slots=True)
class CooldownRules:
    """How failures turn into cooldowns (config `cooldown.*`)."""

    rate_limit_base: float = 1.0  # first 429 without a delay: base * 2**(n-1) seconds ...
    rate_limit_max: float = 1800.0  # ... capped here
    transient: float = 60.0  # 408/5xx/timeouts/connection errors
    quota_default: float = 3600.0  # quota exhausted and the upstream gave no reset time
    error_window: float = 600.0  # windowed error count over this many seconds


@dataclass(slots=True)
class AccountState:
    disabled: str | None = None  # reason; None = enabled
    disabled_until: float | None = None  # a disable that ends by itself (quota until its reset)
    cooldown_until: dict[str, float] = field(default_factory=dict)  # model (or ANY_MODEL) -> epoch
    consecutive_errors: int = 0
    recent_errors: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    last_used: float = 0.0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    rate_limit_streak: int = 0
    # What the upstream last said about the account's own usage limits, by window name, e.g.
    # {"primary": {"used_percent": 40.0, "window_minutes": 300, "resets_at": 1767225600}}.
    usage_windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # When the shared part (see AccountPool.shared_record) last changed, here or in another process.
    changed_at: float = 0.0


@dataclass(slots=True)
class PoolAccount:
    label: str
    credential: Credential | None
    # Why the account cannot serve at all (missing file, empty key), or None.
    unusable: str | None = None
    state: AccountState = field(default_factory=AccountState)


class NoUsableAccount(Exception):
    """No account can ever serve (misconfiguration or all disabled): 503 naming them and why."""

    def __init__(self, provider: str, reasons: list[str]) -> None:
        detail = "; ".join(reasons) if reasons else "no accounts configured"
        super().__init__(f"no usable account for provider {provider}: {detail}")
        self.provider = provider


class AllCoolingDown(Exception):
    """Every account that could serve is cooling down: 429 with Retry-After."""

    def __init__(self, provider: str, model: str, retry_after: float, last_errors: list[str] | None = None) -> None:
        why = f" (last errors: {'; '.join(last_errors)})" if last_errors else ""
        super().__init__(
            f"every account of {provider} is cooling down for model {model}{why}; retry in {retry_after:.0f} s"
        )
        self.provider = provider
        self.retry_after = retry_after


class AccountPool:
    def __init__(
        self,
        provider: str,
        accounts: list[PoolAccount],
        *,
        strategy: Strategy = "round-robin",
        rules: CooldownRules | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.accounts = accounts
        self.strategy = strategy
        self.rules = rules or CooldownRules()
        self.clock = clock
        self._turn = itertools.count()
        # Told about every change of an account's shared state (the state backend publishes it).
        self.on_change: Callable[[PoolAccount], None] | None = None
        self._by_label = {acct.label: acct for acct in accounts}

    # -- choosing ------------------------------------------------------------------------------

    def acquire(
        self, model: str, exclude: frozenset[str] | set[str] = frozenset(), prefer: str | None = None
    ) -> PoolAccount:
        """The next account for `model`, marked in flight; release() it when the attempt is over.
        `prefer` (session affinity) is taken when it is usable, else the strategy picks."""
        now = self.clock()
        usable: list[PoolAccount] = []
        waits: list[float] = []
        reasons: list[str] = []
        last_errors: list[str] = []
        for acct in self.accounts:
            if acct.unusable is not None:
                reasons.append(f"{acct.label}: {acct.unusable}")
                continue
            st = acct.state
            if st.disabled is not None:
                if st.disabled_until is not None and st.disabled_until <= now:
                    st.disabled = st.disabled_until = None
                else:
                    reasons.append(f"{acct.label}: {st.disabled}")
                    if st.disabled_until is not None:
                        waits.append(st.disabled_until - now)
                    continue
            if acct.label in exclude:
                continue
            until = max(st.cooldown_until.get(model, 0.0), st.cooldown_until.get(ANY_MODEL, 0.0))
            if until > now:
                waits.append(until - now)
                if st.last_error:
                    last_errors.append(f"{acct.label}: {st.last_error}")
                continue
            usable.append(acct)
        if not usable:
            if waits:
                raise AllCoolingDown(self.provider, model, max(1.0, min(waits)), last_errors)
            raise NoUsableAccount(self.provider, reasons)
        chosen = next((a for a in usable if a.label == prefer), None) if prefer is not None else None
        if chosen is None:
            chosen = self._pick(usable)
        chosen.state.in_flight += 1
        chosen.state.requests += 1
        chosen.state.last_used = now
        return chosen

    def _pick(self, usable: list[PoolAccount]) -> PoolAccount:
        if self.strategy == "fill-first":
            return usable[0]
        if self.strategy == "least-recently-used":
            return min(usable, key=lambda a: (a.state.last_used, a.state.in_flight))
        return usable[next(self._turn) % len(usable)]

    def release(self, acct: PoolAccount) -> None:
        acct.state.in_flight = max(0, acct.state.in_flight - 1)

    # -- outcomes ------------------------------------------------------------------------------

    def report_success(self, acct: PoolAccount, model: str) -> None:
        st = acct.state
        # Only a real change is shared (the usual success changes nothing shared: no publish).
        changed = st.consecutive_errors != 0 or st.rate_limit_streak != 0 or model in st.cooldown_until
        st.consecutive_errors = 0
        st.rate_limit_streak = 0
        st.last_success = self.clock()
        st.cooldown_until.pop(model, None)
        if changed:
            self._changed(acct)

    def report_failure(
        self,
        acct: PoolAccount,
        model: str,
        kind: str,
        message: str,
        *,
        retry_after: float | None = None,
        until: float | None = None,
        all_models: bool = False,
    ) -> None:
        """Applies the cooldown rules to one failure (kinds as in providers.base.UpstreamFailure);
        `all_models` when the limit is the account's, not the model's (a subscription's usage limit)."""
        now = self.clock()
        st = acct.state
        rules = self.rules
        if kind in ("bad_request", "context_too_long", "not_found"):
            return  # the request's fault, not the account's
        st.errors += 1
        st.consecutive_errors += 1
        st.recent_errors.append(now)
        while st.recent_errors and st.recent_errors[0] < now - rules.error_window:
            st.recent_errors.popleft()
        st.last_error = f"{kind}: {message}"[:300]
        st.last_error_at = now
        if kind == "rate_limited":
            st.rate_limit_streak += 1
            delay = retry_after
            if delay is None:
                delay = min(rules.rate_limit_max, rules.rate_limit_base * 2 ** (st.rate_limit_streak - 1))
            st.cooldown_until[model] = now + delay
        elif kind == "quota_exhausted":
            reset = until if until is not None else now + (retry_after or rules.quota_default)
            st.cooldown_until[ANY_MODEL if all_models else model] = reset
        elif kind == "auth":
            self.disable(acct, f"login expired or key refused: {message}"[:300])
        elif kind in ("forbidden", "suspended"):
            self.disable(acct, message)
        else:  # transient: 408/5xx/timeouts/connection errors
            st.cooldown_until[ANY_MODEL] = now + (retry_after if retry_after is not None else rules.transient)
        self._changed(acct)

    def note_usage(self, acct: PoolAccount, windows: dict[str, dict[str, Any]]) -> None:
        """Keeps the usage windows an upstream reported with an answer (shown by GET /pool)."""
        if windows:
            acct.state.usage_windows.update(windows)

    def disable(self, acct: PoolAccount, reason: str, until: float | None = None) -> None:
        acct.state.disabled = reason
        acct.state.disabled_until = until
        self._changed(acct)

    def find(self, label: str) -> PoolAccount | None:
        return next((a for a in self.accounts if a.label == label), None)

    def reset(self, acct: PoolAccount) -> None:
        """An operator's reset: cooldowns, disables and error streaks are forgotten (totals stay)."""
        self.recover(acct)
        st = acct.state
        st.recent_errors.clear()
        st.rate_limit_streak = 0
        st.last_error = st.last_error_at = None

    def enable(self, acct: PoolAccount) -> None:
        """An operator's enable: the account may serve again; its cooldowns stay as they are."""
        acct.state.disabled = acct.state.disabled_until = None

    def recover(self, acct: PoolAccount) -> None:
        """A successful health check or refresh: the account may serve again."""
        st = acct.state
        st.disabled = st.disabled_until = None
        st.cooldown_until.clear()
        st.consecutive_errors = 0
        self._changed(acct)

    # -- shared state (several gateway processes) ---------------------------------------------------

    def _changed(self, acct: PoolAccount) -> None:
        acct.state.changed_at = max(self.clock(), acct.state.changed_at + 1e-6)
        if self.on_change is not None:
            self.on_change(acct)

    def shared_record(self, acct: PoolAccount) -> dict[str, Any]:
        """The account state other processes must see (JSON-ready)."""
        st = acct.state
        return {
            "disabled": st.disabled,
            "disabled_until": st.disabled_until,
            "cooldown_until": dict(st.cooldown_until),
            "consecutive_errors": st.consecutive_errors,
            "recent_errors": list(st.recent_errors),
            "last_error": st.last_error,
            "last_error_at": st.last_error_at,
            "rate_limit_streak": st.rate_limit_streak,
            "changed_at": st.changed_at,
        }

    def apply_shared(self, label: str, record: dict[str, Any]) -> bool:
        """Takes another process's record of `label` when it is newer than ours; True when taken."""
        acct = self._by_label.get(label)
        if acct is None or not isinstance(record, dict):
            return False
        st = acct.state
        try:
            changed_at = float(record.get("changed_at") or 0.0)
            if changed_at <= st.changed_at:
                return False
            now = self.clock()
            cooldowns = {str(m): float(u) for m, u in (record.get("cooldown_until") or {}).items()}
            window = [float(t) for t in record.get("recent_errors") or () if float(t) >= now - self.rules.error_window]
            until = record.get("disabled_until")
            st.disabled = record.get("disabled")
            st.disabled_until = float(until) if until is not None else None
            st.cooldown_until = {m: u for m, u in cooldowns.items() if u > now}
            st.consecutive_errors = int(record.get("consecutive_errors") or 0)
            st.recent_errors = deque(sorted(window))
            st.last_error = record.get("last_error")
            st.last_error_at = record.get("last_error_at")
            st.rate_limit_streak = int(record.get("rate_limit_streak") or 0)
            st.changed_at = changed_at
        except (TypeError, ValueError, AttributeError):
            return False
        return True

    # -- visibility and persistence -----------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for acct in self.accounts:
            st = acct.state
            cooling = {m: round(u - now, 1) for m, u in st.cooldown_until.items() if u > now}
            if acct.unusable:
                state = "unusable"
            elif st.disabled:
                state = "disabled"
            elif cooling:
                state = "cooling"
            else:
                state = "ready"
            out.append(
                {
                    "label": acct.label,
                    "state": state,
                    "reason": acct.unusable or st.disabled,
                    "cooldown_seconds": cooling,
                    "disabled_until": st.disabled_until,
                    "in_flight": st.in_flight,
                    "requests": st.requests,
                    "errors": st.errors,
                    "recent_errors": len(st.recent_errors),
                    "consecutive_errors": st.consecutive_errors,
                    "last_error": st.last_error,
                    "last_error_at": st.last_error_at,
                    "last_success": st.last_success,
                    "usage_windows": st.usage_windows,
                }
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            acct.label: {
                "disabled": acct.state.disabled,
                "disabled_until": acct.state.disabled_until,
                "cooldown_until": acct.state.cooldown_until,
                "requests": acct.state.requests,
                "errors": acct.state.errors,
                "last_error": acct.state.last_error,
                "last_success": acct.state.last_success,
                "rate_limit_streak": acct.state.rate_limit_streak,
                "usage_windows": {name: dict(w) for name, w in acct.state.usage_windows.items()},
            }
            for acct in self.accounts
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Takes back a snapshot; accounts no longer configured are ignored, expired cooldowns dropped."""
        now = self.clock()
        for acct in self.accounts:
            saved = data.get(acct.label)
            if not isinstance(saved, dict):
                continue
            st = acct.state
            st.disabled = saved.get("disabled")
            st.disabled_until = saved.get("disabled_until")
            st.cooldown_until = {m: float(u) for m, u in (saved.get("cooldown_until") or {}).items() if float(u) > now}
            st.requests = int(saved.get("requests") or 0)
            st.errors = int(saved.get("errors") or 0)
            st.last_error = saved.get("last_error")
            st.last_success = saved.get("last_success")
            st.rate_limit_streak = int(saved.get("rate_limit_streak") or 0)
            windows = saved.get("usage_windows")
            st.usage_windows = windows if isinstance(windows, dict) else {}
