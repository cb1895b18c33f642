"""The contract of an upstream provider adapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from auth.credentials import AuthContext, Credential
from core.config import Account, Provider
from translators import ir
from translators.base import StreamDecoder


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    # The upstream always answers with a stream (Kiro): unary clients get it decoded whole.
    stream_only: bool = False
    # A decoder other than the dialect codec's (Kiro's event stream, with its tool-name map).
    decoder: Callable[[], StreamDecoder] | None = None
    # Tool names the adapter shortened for the upstream: upstream name -> client name.
    tool_name_map: dict[str, str] | None = None


class ProviderAdapter(Protocol):
    id: str
    # Codec name of the upstream's wire format.
    dialect: str
    default_base_url: str
    default_models: tuple[str, ...]
    # Whether the upstream fetches http(s) image URLs itself (else the gateway inlines them).
    accepts_image_urls: bool

    def credential(self, provider: Provider, account: Account) -> Credential:
        """The account's credential; raises auth.credentials.CredentialError saying why it is unusable."""
        ...

    def build(
        self,
        provider: Provider,
        auth: AuthContext,
        body: dict[str, Any],
        *,
        request: ir.Request,
        model: str,
        stream: bool,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        """The upstream HTTP request. `body` is already rendered in the upstream's dialect (or the
        client's own body when the dialects match); adapters that render differently (Kiro) use
        `request`, the IR."""
        ...
