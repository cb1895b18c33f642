"""A Google Cloud service account as a gateway credential (Vertex AI).

google-auth signs the JWT assertion and exchanges it at the token endpoint
(`google.oauth2.service_account.Credentials`, scope cloud-platform). Its refresh is synchronous,
so it runs in a worker thread over the same httpx transport as the Gemini CLI login; refresh is
single-flight per account and happens `refresh_ahead` seconds before the ~1 h token expires. The
key file is only read, never written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.auth import exceptions as google_exceptions
from google.auth import transport as google_transport
from google.oauth2 import service_account

from auth.credentials import AuthContext, CredentialError, counted_refresh, read_credential_file
from auth.google_oauth import HttpxTransport

logger = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_LOCATION = "us-central1"
_REQUIRED = ("client_email", "private_key", "project_id")


def read_service_account(path: Path) -> dict[str, Any]:
    """The key JSON of a service account; CredentialError says what is wrong with it."""
    text = read_credential_file(
        path, f"no service-account key file at {path}; create one in Google Cloud console (IAM > Service accounts)"
    )
    try:
        info = json.loads(text)
    except ValueError:
        raise CredentialError(f"{path} is not JSON (expected a service-account key file)") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise CredentialError(f'{path} is not a service-account key (its "type" must be "service_account")')
    missing = [k for k in _REQUIRED if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise CredentialError(f"{path} lacks {', '.join(missing)}")
    return info


@dataclass(slots=True, frozen=True)
class _Token:
    value: str
    expires_at: float | None
    lifetime: float | None


class ServiceAccountCredential:
    """An access token for one service account, plus the project and location requests go to."""

    refreshable = True

    def __init__(
        self,
        label: str,
        info: dict[str, Any],
        *,
        project_id: str | None = None,
        location: str | None = None,
        token_url: str | None = None,
        refresh_ahead: float = 300.0,
        transport: Callable[[], google_transport.Request] = HttpxTransport,
    ) -> None:
        self.label = label
        self.email = str(info["client_email"])
        self.project_id = project_id or str(info["project_id"])
        self.location = location or DEFAULT_LOCATION
        if token_url:
            info = {**info, "token_uri": token_url}
        try:
            self._creds = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM_SCOPE])
        except (ValueError, KeyError) as e:
            raise CredentialError(f"the service-account key of {label} is unusable: {e}") from None
        self._refresh_ahead = refresh_ahead
        self._transport = transport
        self._token = _Token("", None, None)
        self._lock = asyncio.Lock()

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at

    async def auth(self) -> AuthContext:
        if self._needs_refresh(self._token):
            async with self._lock:
                if self._needs_refresh(self._token):
                    await self._refresh()
        return self._context()

    async def force_refresh(self) -> AuthContext:
        rejected = self._token.value
        async with self._lock:
            if self._token.value == rejected:
                await self._refresh()
        return self._context()

    async def describe(self) -> str:
        token = self._token
        if token.expires_at is None:
            state = "no access token yet (fetched on first use)"
        else:
            state = f"token valid {max(0, int(token.expires_at - time.time()))} s more"
        return f"service account {self.email}; project {self.project_id}; location {self.location}; {state}"

    def _context(self) -> AuthContext:
        return AuthContext(self._token.value, {"project_id": self.project_id, "location": self.location})

    def _needs_refresh(self, token: _Token) -> bool:
        if not token.value or token.expires_at is None:
            return True
        ahead = self._refresh_ahead
        if token.lifetime is not None:
            ahead = min(ahead, token.lifetime / 2)  # a short-lived token must not refresh on every request
        return token.expires_at - time.time() <= ahead

    @counted_refresh
    async def _refresh(self) -> None:
        """Called under the lock: google-auth off the event loop."""
        try:
            self._token = await asyncio.to_thread(self._refresh_blocking)
        except google_exceptions.RefreshError as e:
            raise CredentialError(f"Google refused the service account {self.email}: {e.args[0]}") from None
        except google_exceptions.TransportError as e:
            raise CredentialError(f"token request for {self.label} failed, will retry: {e}") from None
        logger.info("aiclient-mitm: vertex-ai %s token refreshed", self.label)

    def _refresh_blocking(self) -> _Token:
        self._creds.refresh(self._transport())
        if not self._creds.token or self._creds.expiry is None:
            raise google_exceptions.RefreshError("the token endpoint answered without an access token")
        expiry = self._creds.expiry.replace(tzinfo=dt.UTC).timestamp()
        return _Token(self._creds.token, expiry, max(0.0, expiry - time.time()))
