"""The contract of an upstream provider adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from auth.credentials import AuthContext, Credential
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

    def credential(self, provider: Provider, account: Account) -> Credential:
        """The account's credential; raises auth.credentials.CredentialError saying why it is unusable."""
        ...

    def build(
        self,
        provider: Provider,
        auth: AuthContext,
        body: dict[str, Any],
        *,
        model: str,
        stream: bool,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        """The upstream HTTP request for a body already rendered in the upstream's dialect."""
        ...
