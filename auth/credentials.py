"""What an upstream request needs from an account: a current token and its account facts.

OAuth credentials implement the same protocol with refresh ahead of expiry (single-flight per
account); an API key is the trivial case.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class CredentialError(Exception):
    """The account cannot be used (missing key, unreadable file, refused refresh); says why."""


def read_credential_file(path: Path, missing: str) -> str:
    """A credential file's text; CredentialError with `missing` (what to do) when it is not there."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialError(missing) from None
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or e}") from None


@dataclass(slots=True)
class RefreshStats:
    """Token refreshes of one account and how many failed (read by the /metrics scrape)."""

    attempts: int = 0
    failures: int = 0


def counted_refresh[**P, R](method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Counts calls of an OAuth credential's refresh method in `self.refresh_stats`."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        owner: Any = args[0]
        stats = owner.__dict__.get("refresh_stats")
        if stats is None:
            stats = owner.__dict__["refresh_stats"] = RefreshStats()
        stats.attempts += 1
        try:
            return await method(*args, **kwargs)
        except BaseException:
            stats.failures += 1
            raise

    return wrapper


@dataclass(slots=True, frozen=True)
class AuthContext:
    token: str
    # Account facts some upstreams need in the request: project_id, profile_arn, region, resource_url.
    extra: dict[str, str] = field(default_factory=dict)


class Credential(Protocol):
    # Whether force_refresh can produce a different token (OAuth) -- a 401 is retried only then.
    refreshable: bool
    # Epoch seconds when the current access token expires (None: never / unknown). The pool's
    # background refresher calls auth() for tokens close to it, idle accounts included.
    expires_at: float | None

    async def auth(self) -> AuthContext:
        """A token valid for the next request, refreshed first when it is near expiry."""
        ...

    async def force_refresh(self) -> AuthContext:
        """After the upstream refused the token (401): refresh once, whatever the expiry says."""
        ...

    async def describe(self) -> str:
        """One line for `python -m auth status` (expiry, project, health); never a secret."""
        ...


class StaticKey:
    """A plain API key: nothing to refresh."""

    __slots__ = ("_ctx",)
    refreshable = False
    expires_at = None

    def __init__(self, key: str) -> None:
        if not key:
            raise CredentialError("api_key is empty (is its environment variable set?)")
        self._ctx = AuthContext(key)

    async def auth(self) -> AuthContext:
        return self._ctx

    async def force_refresh(self) -> AuthContext:
        return self._ctx

    async def describe(self) -> str:
        return f"api key ...{self._ctx.token[-4:]}" if len(self._ctx.token) > 8 else "api key set"
