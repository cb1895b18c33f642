"""The Gemini CLI's Google OAuth login as a gateway credential: token file, refresh, write-back.

The file is the Gemini CLI's own (`~/.gemini/oauth_creds.json`, google-auth-library token JSON:
access_token, refresh_token, expiry_date in ms, token_type, scope, id_token), so the CLI and the
gateway can share one login. Why the details:
- google-auth does the refresh (its error parsing and retry rules for Google's token endpoint), but
  its refresh is synchronous: it runs in a worker thread so mitmproxy's event loop never waits on it;
- refresh is single-flight per account (one asyncio.Lock) and happens `refresh_ahead` seconds before
  expiry, so requests rarely meet an expired token; a 401 from the upstream forces one refresh;
- Google answers a refresh without a new refresh_token: the old one is kept;
- the file is written back atomically (temp file + os.replace, mode 0600), keeping fields we do not
  know; base64 credentials from the config are never written anywhere;
- a refused refresh token (invalid_grant) is permanent: the account is marked and never retried in
  a loop until the file changes (a new login), and the file is never deleted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from google.auth import exceptions as google_exceptions
from google.auth import transport as google_transport
from google.oauth2.credentials import Credentials

from auth.credentials import AuthContext, CredentialError, counted_refresh, read_credential_file
from core.files import write_json_atomic

logger = logging.getLogger(__name__)

# The Gemini CLI's public installed-app client (packages/core/src/code_assist/oauth2.ts); an
# installed-app secret is not confidential by Google's own OAuth rules.
GEMINI_CLI_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
GEMINI_CLI_CLIENT_SECRET = "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"
SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
)
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
DEFAULT_CREDENTIALS_PATH = Path("~/.gemini/oauth_creds.json")
LOGIN_COMMAND = "python -m auth login gemini"
# Seconds per token-endpoint call (google-auth retries 5xx itself, at most 3 attempts).
REFRESH_TIMEOUT = 20.0
# Token endpoint errors no retry can fix: the user must log in again.
_PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"})
# How long a failed project discovery is remembered before it is tried again.
PROJECT_RETRY_AFTER = 60.0


class TokenRejected(CredentialError):
    """A Google API refused the access token (401): refresh once, then try again."""


# ---------------------------------------------------------------------------------------------
# Files


def read_token_file(path: Path) -> dict[str, Any]:
    """The token JSON of a Gemini CLI login; CredentialError says what is wrong and what to do."""
    return _token_json(read_credential_file(path, f"no credential file at {path}; {_login_hint(path)}"), str(path))


def decode_token_base64(value: str) -> dict[str, Any]:
    """`credentials_base64`: the token file's JSON, base64-encoded (standard or URL-safe)."""
    compact = "".join(value.split()).replace("-", "+").replace("_", "/").rstrip("=")
    try:
        text = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError("credentials_base64 is not base64 of a Gemini CLI token file (JSON)") from None
    return _token_json(text, "credentials_base64")


def _token_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialError(f"{where} is not JSON (expected the Gemini CLI's oauth_creds.json)") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{where} must hold a JSON object (the Gemini CLI's oauth_creds.json)")
    if not _str(data.get("refresh_token")) and not _str(data.get("access_token")):
        raise CredentialError(f"{where} has neither a refresh_token nor an access_token; {LOGIN_COMMAND}")
    return data


def _login_hint(path: Path | None) -> str:
    if path is None or path.expanduser() == DEFAULT_CREDENTIALS_PATH.expanduser():
        return f"log in again: {LOGIN_COMMAND}"
    return f"log in again: {LOGIN_COMMAND} --out {path}"


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def id_token_claims(id_token: str | None) -> dict[str, Any]:
    """The claims of an OpenID id_token, unverified: only used to name the account (email)."""
    if not id_token or id_token.count(".") != 2:
        return {}
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


# ---------------------------------------------------------------------------------------------
# google-auth transport over httpx (httpx is a runtime dependency; `requests` is not)


class _HttpxResponse(google_transport.Response):
    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxTransport(google_transport.Request):
    """google.auth.transport.Request on a synchronous httpx client (for google-auth in a worker thread)."""

    def __init__(self, timeout: float = REFRESH_TIMEOUT) -> None:
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google_transport.Response:
        try:
            with httpx2.Client(trust_env=False, timeout=timeout or self._timeout) as client:
                return _HttpxResponse(client.request(method, url, content=body, headers=dict(headers or {})))
        except httpx2.HTTPError as e:
            raise google_exceptions.TransportError(f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------
# The credential


@dataclass(slots=True, frozen=True)
class _TokenState:
    """One consistent snapshot of the token, swapped whole so readers never see half an update."""

    data: dict[str, Any]  # the file's JSON, unknown fields included
    token: str
    expires_at: float | None
    # Lifetime of a token we refreshed ourselves (caps the refresh-ahead window); None when unknown.
    lifetime: float | None = None
    mtime: float | None = None

    @classmethod
    def of(cls, data: dict[str, Any], lifetime: float | None = None, mtime: float | None = None) -> _TokenState:
        expiry = data.get("expiry_date")
        expires_at = expiry / 1000.0 if isinstance(expiry, int | float) and not isinstance(expiry, bool) else None
        return cls(data, _str(data.get("access_token")), expires_at, lifetime, mtime)


ProjectResolver = Callable[[str], Awaitable[str]]


@dataclass(slots=True)
class _ProjectState:
    project_id: str | None = None
    source: str = ""  # "config" | "discovered"
    error: str | None = None
    error_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class GoogleOAuthCredential:
    """A Gemini CLI login: a current access token and the Code Assist project of the account."""

    refreshable = True

    def __init__(
        self,
        label: str,
        data: dict[str, Any],
        *,
        path: Path | None,
        token_url: str = DEFAULT_TOKEN_URL,
        refresh_ahead: float = 900.0,
        project_id: str | None = None,
        project_source: str = "config",
        resolve_project: ProjectResolver | None = None,
        transport: Callable[[], google_transport.Request] = HttpxTransport,
    ) -> None:
        self.label = label
        self._path = path
        self._token_url = token_url
        self._refresh_ahead = refresh_ahead
        self._transport = transport
        self._resolve_project = resolve_project
        self._state = _TokenState.of(data, mtime=_mtime(path))
        self._lock = asyncio.Lock()
        self._project = _ProjectState(project_id or None, project_source if project_id else "")
        # Why the account needs a new login (a refused refresh token), and the file's mtime then.
        self.login_required: str | None = None
        self._marked_mtime: float | None = None

    @property
    def expires_at(self) -> float | None:
        return self._state.expires_at

    @property
    def project_id(self) -> str | None:
        return self._project.project_id

    # -- Credential protocol ---------------------------------------------------------------

    async def auth(self) -> AuthContext:
        await self._check_login()
        if self._needs_refresh(self._state):
            async with self._lock:
                self._raise_if_marked()
                if self._needs_refresh(self._state):
                    await self._refresh(rejected=None)
        return await self._context()

    async def force_refresh(self) -> AuthContext:
        """After a 401: refresh once; concurrent callers share the refresh of the token they all had."""
        rejected = self._state.token
        await self._check_login()
        await self._refresh_rejected(rejected)
        return await self._context()

    async def describe(self) -> str:
        state = self._state
        email = _str(id_token_claims(_str(state.data.get("id_token"))).get("email"))
        items = [email or "email unknown"]
        if self.login_required:
            items.append(f"NEEDS LOGIN: {self.login_required}")
        if state.expires_at is None:
            items.append("token expiry unknown" if state.token else "no access token yet (refreshed on first use)")
        else:
            left = state.expires_at - time.time()
            when = dt.datetime.fromtimestamp(state.expires_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            items.append(
                f"token valid {_duration(left)} more (until {when})"
                if left > 0
                else f"token expired {_duration(-left)} ago at {when} (refreshed on next use)"
            )
        items.append("refresh token present" if _str(state.data.get("refresh_token")) else "NO refresh token")
        project = self._project
        if project.project_id:
            items.append(f"project {project.project_id} ({project.source or 'config'})")
        else:
            items.append(f"project: {project.error}" if project.error else "project discovered on first use")
        items.append(f"file {self._path}" if self._path else "from credentials_base64")
        return "; ".join(items)

    # -- token -----------------------------------------------------------------------------

    def _needs_refresh(self, state: _TokenState) -> bool:
        if not state.token:
            return True
        if state.expires_at is None:
            return False  # unknown expiry: used until the upstream says 401
        ahead = self._refresh_ahead
        if state.lifetime is not None:
            # A token shorter-lived than the window would otherwise be refreshed on every request.
            ahead = min(ahead, state.lifetime / 2)
        return state.expires_at - time.time() <= ahead

    @counted_refresh
    async def _refresh(self, rejected: str | None) -> None:
        """Called under the lock. Runs google-auth off the event loop and swaps the state in."""
        started = time.monotonic()
        try:
            self._state = await asyncio.to_thread(self._refresh_blocking, self._state, rejected)
        except google_exceptions.RefreshError as e:
            self._refresh_failed(e)
        except google_exceptions.TransportError as e:
            raise CredentialError(f"token refresh for {self.label} failed, will retry: {e}") from None
        elapsed = (time.monotonic() - started) * 1000
        logger.info("aiclient-mitm: gemini-cli-oauth %s token refreshed in %.0f ms", self.label, elapsed)

    async def _refresh_rejected(self, rejected: str) -> None:
        """One refresh for everyone who saw `rejected` refused; later callers find the new token."""
        async with self._lock:
            self._raise_if_marked()
            if self._state.token == rejected:
                await self._refresh(rejected=rejected)

    def _refresh_blocking(self, state: _TokenState, rejected: str | None) -> _TokenState:
        """Worker thread: adopt a newer token from the shared file, else ask Google for one."""
        if self._path is not None:
            newer = self._newer_on_disk(state, rejected)
            if newer is not None:
                return newer
        data = state.data
        refresh_token = _str(data.get("refresh_token"))
        creds = Credentials(
            token=None,
            refresh_token=refresh_token or None,
            token_uri=self._token_url,
            client_id=GEMINI_CLI_CLIENT_ID,
            client_secret=GEMINI_CLI_CLIENT_SECRET,
        )
        creds.refresh(self._transport())
        assert creds.token and creds.expiry is not None
        expiry = creds.expiry.replace(tzinfo=dt.UTC).timestamp()
        updated = dict(data)
        updated["access_token"] = creds.token
        updated["expiry_date"] = int(expiry * 1000)
        updated["token_type"] = "Bearer"
        if creds.refresh_token and creds.refresh_token != refresh_token:
            updated["refresh_token"] = creds.refresh_token
        if creds.id_token:
            updated["id_token"] = creds.id_token
        mtime = None
        if self._path is not None:
            try:
                write_json_atomic(self._path, updated)
                mtime = _mtime(self._path)
            except OSError as e:
                # The new token still serves this process; the next refresh tries the file again.
                logger.warning("aiclient-mitm: could not write %s: %s", self._path, e.strerror or e)
        return _TokenState.of(updated, lifetime=max(0.0, expiry - time.time()), mtime=mtime)

    def _newer_on_disk(self, state: _TokenState, rejected: str | None) -> _TokenState | None:
        """The Gemini CLI shares the file and refreshes it too: a fresher token there needs no refresh."""
        assert self._path is not None
        mtime = _mtime(self._path)
        if mtime is None or mtime == state.mtime:
            return None
        try:
            disk = _TokenState.of(read_token_file(self._path), mtime=mtime)
        except CredentialError:
            return None
        if disk.token and disk.token not in (state.token, rejected) and not self._needs_refresh(disk):
            return disk
        return None

    def _refresh_failed(self, e: google_exceptions.RefreshError) -> None:
        info = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
        code = _str(info.get("error"))
        description = _str(info.get("error_description"))
        if code not in _PERMANENT_ERRORS and _str(self._state.data.get("refresh_token")):
            raise CredentialError(f"token refresh for {self.label} failed, will retry: {e.args[0]}") from None
        reason = f"{code}: {description}" if code and description else (code or str(e.args[0]))
        self.login_required = f"Google refused the refresh token ({reason}); {_login_hint(self._path)}"
        self._marked_mtime = self._state.mtime
        logger.warning("aiclient-mitm: gemini-cli-oauth account %s needs a new login: %s", self.label, reason)
        raise CredentialError(self.login_required) from None

    def _raise_if_marked(self) -> None:
        if self.login_required:
            raise CredentialError(self.login_required)

    async def _check_login(self) -> None:
        """A marked account stays refused until its file changes (the user logged in again)."""
        if not self.login_required:
            return
        if self._path is not None:
            path = self._path
            reloaded = await asyncio.to_thread(_reload_if_changed, path, self._marked_mtime)
            if reloaded is not None:
                async with self._lock:
                    self._state = reloaded
                    self.login_required = None
                    self._marked_mtime = None
                logger.info("aiclient-mitm: gemini-cli-oauth %s: new login found in %s", self.label, path)
                return
        self._raise_if_marked()

    # -- project ---------------------------------------------------------------------------

    async def _context(self) -> AuthContext:
        project = await self._project_id()
        return AuthContext(self._state.token, {"project_id": project})

    async def _project_id(self) -> str:
        p = self._project
        if p.project_id:
            return p.project_id
        if self._resolve_project is None:
            raise CredentialError(f"no project for {self.label}: set accounts[].project_id")
        async with p.lock:
            if p.project_id:
                return p.project_id
            if p.error and time.monotonic() < p.error_until:
                raise CredentialError(p.error)
            try:
                try:
                    project = await self._resolve_project(self._state.token)
                except TokenRejected:
                    await self._refresh_rejected(self._state.token)
                    project = await self._resolve_project(self._state.token)
            except CredentialError as e:
                p.error, p.error_until = str(e), time.monotonic() + PROJECT_RETRY_AFTER
                raise
            p.project_id, p.source, p.error = project, "discovered", None
            return project


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _reload_if_changed(path: Path, marked_mtime: float | None) -> _TokenState | None:
    mtime = _mtime(path)
    if mtime is None or mtime == marked_mtime:
        return None
    try:
        return _TokenState.of(read_token_file(path), mtime=mtime)
    except CredentialError:
        return None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"
