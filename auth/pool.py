"""Accounts of one provider and which one serves the next request."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from auth.credentials import Credential


@dataclass(slots=True)
class PoolAccount:
    label: str
    credential: Credential | None
    # Why the account cannot serve, or None when it can.
    unusable: str | None = None


class NoUsableAccount(Exception):
    def __init__(self, provider: str, reasons: list[str]) -> None:
        detail = "; ".join(reasons) if reasons else "no accounts configured"
        super().__init__(f"no usable account for provider {provider}: {detail}")
        self.provider = provider


class AccountPool:
    """Round-robin over the usable accounts of a provider."""

    def __init__(self, provider: str, accounts: list[PoolAccount]) -> None:
        self.provider = provider
        self.accounts = accounts
        usable = [a for a in accounts if a.unusable is None]
        self._cycle = itertools.cycle(usable) if usable else None

    def next(self) -> PoolAccount:
        if self._cycle is None:
            raise NoUsableAccount(self.provider, [f"{a.label}: {a.unusable}" for a in self.accounts])
        return next(self._cycle)
