"""The contract of an upstream provider adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Account, Provider


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


class ProviderAdapter(Protocol):
    id: str
    # Codec name of the upstream's wire format.
    dialect: str
    default_base_url: str
    default_models: tuple[str, ...]

    def account_problem(self, account: Account) -> str | None:
        """Why this account cannot be used (missing key, ...), or None."""
        ...

    def build(
        self,
        provider: Provider,
        account: Account,
        body: dict[str, Any],
        *,
        stream: bool,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        """The upstream HTTP request for an already rendered body of the upstream's dialect."""
        ...
