"""Kiro credentials: the token file the Kiro IDE writes, refreshed ahead of expiry and on 401.

Facts in upstreams.md 2.1-2.2. Two kinds of login share one file format
(`~/.aws/sso/cache/kiro-auth-token.json`):
- social (Google/GitHub): refreshed at `prod.{region}.auth.desktop.kiro.dev/refreshToken`; its
  `profileArn` must go into every request body;
- Builder ID / IAM Identity Center ("IdC"): refreshed at the AWS SSO-OIDC `/token` endpoint with
  the client registration, which comes from `clientId`/`clientSecret` in the token file or ONLY
  from the file named by `clientIdHash` beside it (a peer merges every JSON of the folder and picks
  up foreign secrets); sending a `profileArn` with these tokens is refused.

Refreshes are single-flight per account (one asyncio.Lock), run their file I/O in a thread, and
write the rotated tokens back atomically (mode 0600, unknown fields kept) before the new access
token is used. A token given inline (`credentials_base64`) is refreshed in memory only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from auth.credentials import AuthContext, CredentialError, counted_refresh, read_credential_file
from auth.state import NO_CLUSTER_LOCK, ClusterLock, RefreshFence
from core.files import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_FILE = Path("~/.aws/sso/cache/kiro-auth-token.json")
DEFAULT_REGION = "us-east-1"
DEFAULT_SOCIAL_REFRESH_URL = "https://prod.{region}.auth.desktop.kiro.dev/refreshToken"
DEFAULT_IDC_REFRESH_URL = "https://oidc.{region}.amazonaws.com/token"
# The IDE version the requests identify as. AIClient-2-API notes that other version strings broke
# IdC accounts, so it only changes through the provider option `kiro_version`.
KIRO_VERSION = "0.11.63"
DEFAULT_EXPIRES_IN = 3600
REFRESH_TIMEOUT = 20.0
RELOGIN_HINT = "log in again in the Kiro IDE, then run `python -m auth login kiro`"
# Refresh answers that no retry can fix (upstreams.md 2.2; pitfalls 1.5).
_PERMANENT_MARKERS = ("invalid refresh token", "invalid_grant", "invalid_client", "unauthorized_client")
_SAFE_HASH = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")


# ---------------------------------------------------------------------------------------------
# The token record


@dataclass(slots=True, frozen=True)
class KiroToken:
    access_token: str
    refresh_token: str
    # Epoch seconds; None when the file has no (readable) expiresAt -- treated as expired.
    expires_at: float | None
    social: bool
    # As the file says it: "social", "IdC", "builder-id"...; and which identity provider.
    auth_method: str
    login_provider: str
    profile_arn: str | None
    region: str
    # SSO-OIDC region of an IdC login (the token file's `idcRegion`, else `region`).
    idc_region: str
    client_id: str | None = None
    client_secret: str | None = None
    # When the IdC client registration expires (its own file says so); refreshes fail after it.
    client_expires_at: float | None = None


def parse_time(value: Any) -> float | None:
    """`expiresAt` as epoch seconds: ISO 8601 (Z or offset, fractions) or epoch (s or ms)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 1e11 else float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(epoch: float) -> str:
    """The IDE's own `expiresAt` format: `2026-01-01T12:00:00.000Z`."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    text = read_credential_file(path, f"{what} {path} does not exist ({RELOGIN_HINT})")
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialError(f"{what} {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{what} {path} must hold a JSON object")
    return data


def parse_token(raw: dict[str, Any], where: str, registration_dir: Path | None) -> KiroToken:
    """The token record of a token file's JSON. For IdC logins without an inline client id and
    secret, reads exactly `<registration_dir>/<clientIdHash>.json` -- no other file."""
    access = _str(raw, "accessToken") or ""
    refresh = _str(raw, "refreshToken") or ""
    if not access and not refresh:
        raise CredentialError(f"{where} has neither accessToken nor refreshToken")
    method = _str(raw, "authMethod") or ""
    client_id, client_secret = _str(raw, "clientId"), _str(raw, "clientSecret")
    id_hash = _str(raw, "clientIdHash")
    # upstreams.md 2.1: social when it says so, or when nothing points at a client registration.
    social = method.lower() == "social" or (not method and not (client_id or id_hash))
    client_expires: float | None = None
    if not social and not (client_id and client_secret):
        if id_hash is None:
            raise CredentialError(
                f"{where} is an {method or 'IdC'} login without clientId/clientSecret or clientIdHash; "
                "the client registration is needed to refresh it"
            )
        if registration_dir is None:
            raise CredentialError(
                f"{where}: an {method or 'IdC'} token given inline must carry clientId and clientSecret "
                "(its registration file cannot be looked up)"
            )
        if not _SAFE_HASH.match(id_hash):
            raise CredentialError(f"{where}: clientIdHash is not a plain file name")
        reg_path = registration_dir / f"{id_hash}.json"
        reg = _read_json(reg_path, "Kiro client registration")
        client_id, client_secret = _str(reg, "clientId"), _str(reg, "clientSecret")
        if not (client_id and client_secret):
            raise CredentialError(f"Kiro client registration {reg_path} has no clientId/clientSecret")
        client_expires = parse_time(reg.get("expiresAt"))
    region = _str(raw, "region") or DEFAULT_REGION
    return KiroToken(
        access_token=access,
        refresh_token=refresh,
        expires_at=parse_time(raw.get("expiresAt")) if access else None,
        social=social,
        auth_method=method or ("social" if social else "IdC"),
        login_provider=_str(raw, "provider") or "",
        # Only social logins have one that may be sent (2.1; kiro.rs #161).
        profile_arn=_str(raw, "profileArn") if social else None,
        region=region,
        idc_region=_str(raw, "idcRegion") or region,
        client_id=None if social else client_id,
        client_secret=None if social else client_secret,
        client_expires_at=client_expires,
    )


# ---------------------------------------------------------------------------------------------
# Where the token lives


class TokenStore:
    """A token file on disk: read, re-read when someone else (the IDE) rewrote it, write back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    def registration_dir(self) -> Path | None:
        return self.path.parent

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def load(self) -> dict[str, Any]:
        stamp = self._stat()
        raw = _read_json(self.path, "Kiro token file")
        self._stamp = stamp
        return raw

    def changed(self) -> bool:
        stamp = self._stat()
        return stamp is not None and stamp != self._stamp

    def save(self, raw: dict[str, Any]) -> None:
        """Atomic replace with mode 0600 (a reader never sees half a file)."""
        write_json_atomic(self.path, raw, indent=2)
        self._stamp = self._stat()


class InlineTokenStore:
    """A token given in the config (`credentials_base64`): refreshed in memory, never written."""

    where = "credentials_base64"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw

    def registration_dir(self) -> Path | None:
        return None

    def load(self) -> dict[str, Any]:
        return dict(self._raw)

    def changed(self) -> bool:
        return False

    def save(self, raw: dict[str, Any]) -> None:
        self._raw = dict(raw)


def decode_inline(value: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.b64decode(value.strip(), validate=False))
    except (binascii.Error, ValueError):
        raise CredentialError("credentials_base64 is not base64 of a JSON token file") from None
    if not isinstance(data, dict):
        raise CredentialError("credentials_base64 must decode to a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Refresh


class RefreshError(Exception):
    """A refresh attempt failed; `permanent` when only a new login can fix it."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _scrub(text: str, secrets_: list[str]) -> str:
    for s in secrets_:
        if s and len(s) >= 6:
            text = text.replace(s, "***")
    return text


def _error_text(body: bytes) -> str:
    """The error of a refresh answer: `message`, or OIDC `error` + `error_description`."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(obj, dict):
        parts = [obj.get(k) for k in ("error", "message", "Message", "error_description")]
        found = [p for p in parts if isinstance(p, str) and p]
        if found:
            return ": ".join(dict.fromkeys(found))[:300]
    return text[:200]


def machine_id(seed: str) -> str:
    """The stable per-account id in Kiro's User-Agent (never regenerated on errors; pitfalls 2.11)."""
    return hashlib.sha256(f"aiclient-mitm:kiro:{seed}".encode()).hexdigest()


class KiroCredential:
    """One Kiro account (Credential protocol)."""

    refreshable = True

    def __init__(
        self,
        store: TokenStore | InlineTokenStore,
        *,
        label: str,
        refresh_url: str | None = None,
        refresh_idc_url: str | None = None,
        refresh_ahead: float = 900.0,
        timeout: float = REFRESH_TIMEOUT,
        kiro_version: str = KIRO_VERSION,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._label = label
        self._social_url = refresh_url or DEFAULT_SOCIAL_REFRESH_URL
        self._idc_url = refresh_idc_url or DEFAULT_IDC_REFRESH_URL
        self._ahead = refresh_ahead
        self._timeout = timeout
        self._version = kiro_version
        self._transport = transport
        self._raw = store.load()
        self._token = parse_token(self._raw, store.where, store.registration_dir())
        t = self._token
        self.machine_id = machine_id(t.profile_arn or t.client_id or label)
        self._lock = asyncio.Lock()
        self._generation = 0
        self._refused: str | None = None  # why the last refresh was refused for good
        self.refresh_count = 0
        # Several gateway processes (auth/state.py): one refresh of this account in the whole cluster.
        self.cluster_lock: ClusterLock = NO_CLUSTER_LOCK
        self.cluster_name = f"kiro:{hashlib.sha256((t.profile_arn or t.client_id or label).encode()).hexdigest()[:16]}"

    # -- protocol --------------------------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at

    @property
    def token(self) -> KiroToken:
        return self._token

    async def auth(self) -> AuthContext:
        if self._fresh():
            return self._context()
        async with self._lock:
            if not self._fresh():
                await self._refresh(forced=False)
            return self._context()

    async def force_refresh(self) -> AuthContext:
        seen = self._generation
        async with self._lock:
            if self._generation == seen:  # nobody refreshed while we waited
                await self._refresh(forced=True)
            return self._context()

    async def describe(self) -> str:
        t = self._token
        kind = f"{t.auth_method} login" + (f" ({t.login_provider})" if t.login_provider else "")
        parts = [kind, f"region {t.region}"]
        now = time.time()
        if t.expires_at is None:
            parts.append("access token expiry unknown (refreshed at first use)")
        elif t.expires_at > now:
            parts.append(f"access token valid for {_duration(t.expires_at - now)} (until {format_time(t.expires_at)})")
        else:
            parts.append(f"access token expired {_duration(now - t.expires_at)} ago")
        if not t.refresh_token:
            parts.append("no refresh token")
        if t.client_expires_at is not None and t.client_expires_at < now:
            parts.append(f"client registration expired ({RELOGIN_HINT})")
        if self._refused:
            parts.append(f"refresh refused: {self._refused}")
        parts.append(self._store.where)
        return ", ".join(parts)

    def portable_record(self) -> dict[str, Any]:
        """The token file's JSON standing on its own (an IdC login's client registration inlined),
        for `python -m auth login kiro --save`."""
        raw = dict(self._raw)
        t = self._token
        if not t.social and t.client_id and t.client_secret:
            raw["clientId"], raw["clientSecret"] = t.client_id, t.client_secret
        return raw

    # -- internals -------------------------------------------------------------------------

    def _context(self) -> AuthContext:
        t = self._token
        if not t.access_token:
            raise CredentialError("no access token")
        extra = {"region": t.region, "auth_method": "social" if t.social else "idc", "machine_id": self.machine_id}
        if t.social and t.profile_arn:
            extra["profile_arn"] = t.profile_arn
        return AuthContext(t.access_token, extra)

    def _fresh(self) -> bool:
        t = self._token
        return bool(t.access_token) and t.expires_at is not None and t.expires_at - time.time() > self._ahead

    def _usable(self) -> bool:
        """Still valid, though inside the refresh-ahead window."""
        t = self._token
        return bool(t.access_token) and t.expires_at is not None and t.expires_at > time.time() + 5

    @counted_refresh
    async def _refresh(self, forced: bool) -> None:
        """Under self._lock and the cluster's lock of this account (Kiro rotates refresh tokens)."""
        async with self.cluster_lock(self.cluster_name) as fence:
            if await self._adopt_published(fence):
                return
            await self._refresh_locked(forced, fence)

    async def _adopt_published(self, fence: RefreshFence) -> bool:
        """The token another gateway process refreshed while we waited: taken and written to our
        file when it is newer than ours and still valid."""
        raw = await fence.published()
        if raw is None:
            return False
        try:
            token = parse_token(raw, self._store.where, self._store.registration_dir())
        except CredentialError:
            return False
        if token.refresh_token == self._token.refresh_token or not token.access_token:
            return False
        if token.expires_at is None or token.expires_at <= time.time() + 5:
            return False
        try:
            await asyncio.to_thread(self._store.save, raw)
        except OSError as e:
            logger.warning("aiclient-mitm: Kiro account %s: could not save the shared token: %s", self._label, e)
        self._raw, self._token = raw, token
        self._refused = None
        self._generation += 1
        return True

    async def _refresh_locked(self, forced: bool, fence: RefreshFence) -> None:
        if await asyncio.to_thread(self._adopt_external):
            if not forced and self._fresh():
                return
            if forced:
                return  # the IDE wrote a new token since the refused one: try that first
        if self._refused is not None:
            if not forced and self._usable():
                return
            raise CredentialError(self._refused)
        if not self._token.refresh_token:
            if not forced and self._usable():
                return
            raise CredentialError(f"the access token expired and there is no refresh token; {RELOGIN_HINT}")
        if not await fence.held():
            # Fencing: our lock expired and another process may be spending this refresh token.
            raise CredentialError("token refresh skipped: the cluster refresh lock was lost; retry")
        try:
            updated, raw = await self._call_refresh()
        except RefreshError as e:
            if e.permanent and await self._adopt_published(fence):
                return  # another process refreshed first (its lock was unreachable): its token
            if e.permanent:
                self._refused = f"token refresh refused ({e}); {RELOGIN_HINT}"
            if not forced and self._usable():
                logger.warning(
                    "aiclient-mitm: Kiro account %s: refresh failed, using the current token: %s", self._label, e
                )
                return
            reason = self._refused or f"token refresh failed: {e}"
            raise CredentialError(reason) from None
        # Persist first: a rotated refresh token that is lost kills the login.
        try:
            await asyncio.to_thread(self._store.save, raw)
        except OSError as e:
            logger.warning(
                "aiclient-mitm: Kiro account %s: could not write back %s: %s",
                self._label,
                self._store.where,
                e.strerror or e,
            )
        self._raw, self._token = raw, updated
        self._generation += 1
        self.refresh_count += 1
        await fence.publish(raw, (updated.expires_at or time.time()) - time.time())
        logger.info(
            "aiclient-mitm: Kiro account %s refreshed; valid until %s",
            self._label,
            format_time(updated.expires_at or time.time()),
        )

    def _adopt_external(self) -> bool:
        """Picks up a token file the IDE rewrote (a new login or its own refresh)."""
        if not self._store.changed():
            return False
        try:
            raw = self._store.load()
            token = parse_token(raw, self._store.where, self._store.registration_dir())
        except CredentialError as e:
            logger.warning("aiclient-mitm: Kiro account %s: ignoring the rewritten token file: %s", self._label, e)
            return False
        if token.access_token == self._token.access_token and token.refresh_token == self._token.refresh_token:
            return False
        self._raw, self._token = raw, token
        self._refused = None
        self._generation += 1
        return True

    async def _call_refresh(self) -> tuple[KiroToken, dict[str, Any]]:
        t = self._token
        if t.social:
            url = self._social_url.replace("{region}", t.region)
            body: dict[str, Any] = {"refreshToken": t.refresh_token}
        else:
            url = self._idc_url.replace("{region}", t.idc_region)
            body = {
                "clientId": t.client_id,
                "clientSecret": t.client_secret,
                "grantType": "refresh_token",
                "refreshToken": t.refresh_token,
            }
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": f"KiroIDE-{self._version}-{self.machine_id}",
        }
        hidden = [t.refresh_token, t.access_token, t.client_secret or ""]
        timeout = httpx2.Timeout(self._timeout)
        answer: httpx2.Response | None = None
        async with httpx2.AsyncClient(timeout=timeout, trust_env=False, transport=self._transport) as client:
            for attempt in (1, 2):  # cold connections die with EOF now and then (pitfalls 1.5)
                try:
                    answer = await client.post(url, json=body, headers=headers)
                    break
                except httpx2.TransportError as e:
                    if attempt == 2:
                        raise RefreshError(f"{type(e).__name__} at {url}: {_scrub(str(e), hidden)}", False) from None
        assert answer is not None
        if answer.status_code >= 400:
            text = _scrub(_error_text(answer.content), hidden)
            low = text.lower()
            # 400/401/403 from a refresh endpoint: the refresh token or client is refused.
            permanent = any(m in low for m in _PERMANENT_MARKERS) or answer.status_code in (400, 401, 403)
            raise RefreshError(f"HTTP {answer.status_code}: {text or 'no message'}", permanent)
        try:
            data = answer.json()
        except ValueError:
            raise RefreshError("the refresh answer is not JSON", False) from None
        if not isinstance(data, dict):
            raise RefreshError("the refresh answer is not a JSON object", False)
        access = data.get("accessToken") or data.get("access_token")
        if not isinstance(access, str) or not access:
            raise RefreshError("the refresh answer has no accessToken", False)
        new_refresh = data.get("refreshToken") or data.get("refresh_token")
        expires_in = data.get("expiresIn") or data.get("expires_in")
        if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        expires_at = time.time() + float(expires_in)
        raw = dict(self._raw)  # unknown fields stay; the registration is never copied in
        raw["accessToken"] = access
        if isinstance(new_refresh, str) and new_refresh:
            raw["refreshToken"] = new_refresh
        raw["expiresAt"] = format_time(expires_at)
        arn = data.get("profileArn")
        if t.social and isinstance(arn, str) and arn:
            raw["profileArn"] = arn
        updated = replace(
            t,
            access_token=access,
            refresh_token=raw.get("refreshToken") or t.refresh_token,
            expires_at=expires_at,
            profile_arn=(arn if isinstance(arn, str) and arn else t.profile_arn) if t.social else None,
        )
        return updated, raw


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def credential_store(credentials: Path | None, credentials_base64: str | None) -> TokenStore | InlineTokenStore:
    """Where an account's token lives: a file (default: the IDE's own) or the config itself."""
    if credentials is not None and credentials_base64:
        raise CredentialError("set credentials or credentials_base64, not both")
    if credentials_base64:
        return InlineTokenStore(decode_inline(credentials_base64))
    path = (credentials or DEFAULT_TOKEN_FILE).expanduser()
    return TokenStore(path)
