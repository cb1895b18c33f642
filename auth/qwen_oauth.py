"""Qwen Code's OAuth token file (`~/.qwen/oauth_creds.json`) as a gateway credential.

Why so careful: Qwen rotates the refresh token on every refresh, and the same file is often shared
with the qwen-code CLI. So a refresh takes qwen-code's own lock file, first re-reads the file (a
CLI session may already have refreshed), and writes the rotated token back atomically before the
new access token is used. A refused refresh never touches the user's file (qwen-code deletes it):
the account is disabled, and a small marker beside the file remembers which refresh token was
refused, so a restart and `python -m auth status` say so until the user logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from auth.credentials import AuthContext, CredentialError, counted_refresh, read_credential_file
from auth.state import NO_CLUSTER_LOCK, ClusterLock, RefreshFence
from core.files import write_json_atomic

logger = logging.getLogger(__name__)

# Qwen Code's public OAuth client (packages/core/src/qwen/qwenOAuth2.ts).
QWEN_CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
QWEN_SCOPE = "openid profile email model.completion"
DEFAULT_TOKEN_URL = "https://chat.qwen.ai/api/v1/oauth2/token"
DEFAULT_CREDENTIALS = Path("~/.qwen/oauth_creds.json")
QWEN_CODE_VERSION = "0.10.0"
LOGIN_HINT = "log in again: python -m auth login qwen"
REQUIRED_FIELDS = ("access_token", "refresh_token", "token_type", "expiry_date")
# A token this close to expiry is not sent at all (qwen-code's own margin).
MIN_VALID = 30.0
# After a failed ahead-of-expiry refresh, requests keep the still-valid token this long before trying again.
RETRY_REFRESH_AFTER = 30.0
# A 401 for a token obtained this recently is answered with that token, not another refresh.
JUST_REFRESHED = 10.0
# qwen-code's lock file discipline: stale after 10 s, 20 attempts, backoff 100 ms -> 2 s.
LOCK_STALE = 10.0
LOCK_ATTEMPTS = 20
REFRESH_TIMEOUT = 30.0


def user_agent() -> str:
    """What qwen-code sends (`QwenCode/<version> (<platform>; <arch>)`); Aliyun's WAF wants a UA."""
    plat = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine or "x64")
    return f"QwenCode/{QWEN_CODE_VERSION} ({plat}; {arch})"


def device_code_url(token_url: str) -> str:
    """`.../oauth2/token` -> `.../oauth2/device/code` (same host, last path segment replaced)."""
    head, _, _ = token_url.rstrip("/").rpartition("/")
    return f"{head}/device/code"


def credentials_path(path: Path | None) -> Path:
    return (path or DEFAULT_CREDENTIALS).expanduser()


# -- the file ------------------------------------------------------------------------------------


def parse_token_file(data: Any, path: Path) -> dict[str, Any]:
    """The file's JSON object, checked the way qwen-code checks it; unknown fields are kept."""
    if not isinstance(data, dict):
        raise CredentialError(f"{path} is not a Qwen Code token file (expected a JSON object)")
    for name in REQUIRED_FIELDS:
        value = data.get(name)
        if name == "expiry_date":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str) and bool(value)
        if not ok:
            raise CredentialError(f"{path} is not a usable Qwen Code token file: {name} is missing; {LOGIN_HINT}")
    return data


def read_token_file(path: Path) -> dict[str, Any]:
    text = read_credential_file(path, f"no Qwen token file at {path}; log in first: python -m auth login qwen")
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialError(f"{path} is not valid JSON; {LOGIN_HINT}") from None
    return parse_token_file(data, path)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace with mode 0600 in qwen-code's own layout (2-space indent)."""
    write_json_atomic(path, data, indent=2)


# -- the refusal marker ----------------------------------------------------------------------------


def _token_digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def refusal_marker_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.aiclient-refused")


def read_refusal(path: Path, refresh_token: str) -> str | None:
    """The recorded reason when exactly this refresh token was refused before (a new login has a
    new refresh token, so an old marker no longer applies)."""
    try:
        marker = json.loads(refusal_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("refresh_token_sha256") != _token_digest(refresh_token):
        return None
    reason = marker.get("reason")
    return reason if isinstance(reason, str) and reason else "the refresh token was refused"


def write_refusal(path: Path, refresh_token: str, reason: str) -> None:
    marker = {
        "refresh_token_sha256": _token_digest(refresh_token),
        "reason": reason,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_private_json(refusal_marker_path(path), marker)


def clear_refusal(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        refusal_marker_path(path).unlink()


# -- qwen-code's cross-process lock ----------------------------------------------------------------


class TokenFileLock:
    """`oauth_creds.lock` beside the token file, the lock qwen-code takes around its refreshes."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(f"{path.stem}.lock")
        self._id = ""

    def acquire(self) -> None:
        """Blocking (run it in a thread); raises CredentialError after qwen-code's attempt budget."""
        interval = 0.1
        for _ in range(LOCK_ATTEMPTS):
            lock_id = uuid.uuid4().hex
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                time.sleep(interval)
                interval = min(interval * 1.5, 2.0)
                continue
            except OSError as e:
                raise CredentialError(f"cannot create lock file {self.path}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(lock_id)
            self._id = lock_id
            return
        raise CredentialError(f"token refresh skipped: {self.path} stayed locked by another process")

    def _remove_if_stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age <= LOCK_STALE:
            return False
        stale = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, stale)
            os.unlink(stale)
        except OSError:
            pass
        return True

    def release(self) -> None:
        try:
            if self.path.read_text() == self._id:
                self.path.unlink()
        except OSError:
            pass


# -- the credential --------------------------------------------------------------------------------


class RefreshRefused(CredentialError):
    """Qwen answered 400/401 to the refresh grant: the refresh token is dead."""


class QwenOAuthCredential:
    """One Qwen account: its token file, refreshed ahead of expiry and after a 401, one refresh at a time."""

    refreshable = True

    def __init__(
        self,
        path: Path,
        *,
        token_url: str = DEFAULT_TOKEN_URL,
        refresh_ahead: float = 900.0,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Reads the file now (at config load), so a missing or refused one is reported at once."""
        self.path = path
        self.token_url = token_url
        self.refresh_ahead = refresh_ahead
        self.connect_timeout = connect_timeout
        self._clock = clock
        self._data = read_token_file(path)
        refused = read_refusal(path, self._data["refresh_token"])
        if refused:
            raise CredentialError(f"disabled: {refused}")
        self.disabled: str | None = None
        self._lifetime: float | None = None  # known after our own refresh
        self._retry_refresh_at = 0.0
        self._obtained_at = 0.0  # when this process last got a new token (refresh or adoption)
        self._lock = asyncio.Lock()
        # Several gateway processes (auth/state.py): one refresh of this account in the whole cluster.
        self.cluster_lock: ClusterLock = NO_CLUSTER_LOCK
        self.cluster_name = f"qwen:{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"

    # -- protocol ----------------------------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        return float(self._data["expiry_date"]) / 1000.0

    async def auth(self) -> AuthContext:
        self._check_enabled()
        if not self._wants_refresh():
            return self._context()
        async with self._lock:
            self._check_enabled()
            if self._wants_refresh():
                try:
                    await self._refresh(failed_token=None)
                except RefreshRefused:
                    raise
                except CredentialError as e:
                    if not self._usable():
                        raise
                    # Refreshing early failed, but the token still works: use it, try again later.
                    self._retry_refresh_at = self._clock() + RETRY_REFRESH_AFTER
                    logger.warning("aiclient-mitm: early Qwen token refresh failed (%s): %s", self.path.name, e)
            return self._context()

    async def force_refresh(self) -> AuthContext:
        failed = self._data["access_token"]
        async with self._lock:
            self._check_enabled()
            # Requests that got their 401 with the old token while another one refreshed share that
            # refresh: the protocol does not say which token failed, so a token obtained moments
            # ago counts as the answer to this 401 too.
            if self._data["access_token"] == failed and self._clock() - self._obtained_at > JUST_REFRESHED:
                await self._refresh(failed_token=failed)
            return self._context()

    async def describe(self) -> str:
        if self.disabled:
            return f"disabled: {self.disabled}"
        expires = self.expires_at or 0.0
        left = expires - self._clock()
        when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if left > 0:
            state = f"access token valid until {when} ({_duration(left)} left)"
        else:
            state = f"access token expired {when} (refreshed on next use)"
        resource = self._data.get("resource_url") or "default portal"
        return f"{state}; resource {resource}; file {self.path}"

    # -- state ---------------------------------------------------------------------------------

    def _check_enabled(self) -> None:
        if self.disabled:
            raise CredentialError(self.disabled)

    def _context(self) -> AuthContext:
        extra = {}
        resource = self._data.get("resource_url")
        if isinstance(resource, str) and resource:
            extra["resource_url"] = resource
        return AuthContext(self._data["access_token"], extra)

    def _remaining(self, data: dict[str, Any] | None = None) -> float:
        return float((data or self._data)["expiry_date"]) / 1000.0 - self._clock()

    def _usable(self, data: dict[str, Any] | None = None) -> bool:
        return self._remaining(data) > MIN_VALID

    def _lead(self) -> float:
        # A token that lives shorter than refresh_ahead would otherwise be refreshed on every request.
        lead = self.refresh_ahead if self._lifetime is None else min(self.refresh_ahead, self._lifetime / 2)
        return max(lead, MIN_VALID)

    def _wants_refresh(self) -> bool:
        if not self._usable():
            return True
        return self._remaining() <= self._lead() and self._clock() >= self._retry_refresh_at

    # -- refresh -------------------------------------------------------------------------------

    @counted_refresh
    async def _refresh(self, failed_token: str | None) -> None:
        """Under self._lock and the cluster's lock of this account: adopt the token another gateway
        process published or a newer one from the file, else run the refresh grant."""
        async with self.cluster_lock(self.cluster_name) as fence:
            if await self._adopt_published(fence, failed_token):
                return
            await self._refresh_locked(failed_token, fence)

    async def _adopt_published(self, fence: RefreshFence, failed_token: str | None) -> bool:
        """The token a process elsewhere in the cluster refreshed while we waited: taken (and written
        to our file, whose refresh token it rotated) when it is newer than ours and still valid."""
        published = await fence.published()
        if published is None:
            return False
        try:
            data = parse_token_file(published, self.path)
        except CredentialError:
            return False
        if data["refresh_token"] == self._data["refresh_token"] or not self._usable(data):
            return False
        if data["access_token"] == failed_token:
            return False
        try:
            await asyncio.to_thread(write_private_json, self.path, data)
        except OSError as e:
            logger.warning("aiclient-mitm: could not save the shared Qwen token to %s: %s", self.path, e.strerror or e)
        self._data = data
        self._lifetime = None
        self._obtained_at = self._clock()
        self._retry_refresh_at = 0.0
        return True

    async def _refresh_locked(self, failed_token: str | None, fence: RefreshFence) -> None:
        lock = TokenFileLock(self.path)
        await asyncio.to_thread(lock.acquire)
        try:
            for _ in range(2):  # a second round only when another process rotated the token meanwhile
                if self._adopt_from_file(await self._read_disk(), failed_token):
                    return
                sent = self._data["refresh_token"]
                if not await fence.held():
                    # Fencing: our lock expired and another process may be spending this refresh token.
                    raise CredentialError("token refresh skipped: the cluster refresh lock was lost; retry")
                try:
                    await self._refresh_grant(sent)
                    await fence.publish(self._data, self._remaining())
                    return
                except RefreshRefused as refused:
                    if await self._adopt_published(fence, failed_token):
                        return  # another process refreshed first (its lock was unreachable): take its token
                    on_disk = await self._read_disk()
                    if on_disk is not None and on_disk["refresh_token"] != sent:
                        continue  # rotated by another process: adopt or refresh with the new one
                    await self._disable(sent, str(refused))
                    raise RefreshRefused(self.disabled) from None
            raise CredentialError("token refresh did not settle: the token file keeps changing")
        finally:
            await asyncio.to_thread(lock.release)

    async def _read_disk(self) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(read_token_file, self.path)
        except CredentialError:
            return None  # keep what we have; the file may be mid-rewrite by a login

    def _adopt_from_file(self, on_disk: dict[str, Any] | None, failed_token: str | None) -> bool:
        """True when the file holds a different, still-valid token that makes a refresh unnecessary."""
        same = all(on_disk[k] == self._data[k] for k in ("access_token", "refresh_token")) if on_disk else True
        if on_disk is None or same:
            return False
        self._data = on_disk
        self._lifetime = None
        self._obtained_at = self._clock()
        fresh = self._usable(on_disk) and on_disk["access_token"] != failed_token
        return fresh and (failed_token is not None or self._remaining(on_disk) > self._lead())

    async def _refresh_grant(self, refresh_token: str) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": QWEN_CLIENT_ID}
        headers = {"accept": "application/json", "user-agent": user_agent()}
        timeout = httpx2.Timeout(REFRESH_TIMEOUT, connect=self.connect_timeout)
        try:
            async with httpx2.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
                r = await client.post(self.token_url, data=form, headers=headers)
        except httpx2.HTTPError as e:
            raise CredentialError(f"token refresh failed: {type(e).__name__}: {e}") from None
        body = _json_or_none(r.content)
        if r.status_code in (400, 401):
            raise RefreshRefused(
                f"Qwen refused the refresh token ({r.status_code} {oauth_error_text(body, r.content)})"
            )
        if r.status_code != 200:
            raise CredentialError(f"token refresh failed: {r.status_code} {oauth_error_text(body, r.content)}")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CredentialError("token refresh failed: the answer holds no access_token")
        assert isinstance(body, dict)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 3600
        updated = dict(self._data)
        updated["access_token"] = token
        updated["refresh_token"] = body.get("refresh_token") or refresh_token
        updated["token_type"] = body.get("token_type") or updated.get("token_type") or "Bearer"
        if body.get("resource_url"):
            updated["resource_url"] = body["resource_url"]
        updated["expiry_date"] = int((self._clock() + float(lifetime)) * 1000)
        try:
            # Persist first: the old refresh token is already dead once Qwen rotated it.
            await asyncio.to_thread(write_private_json, self.path, updated)
        except OSError as e:
            logger.error(
                "aiclient-mitm: could not save the rotated Qwen token to %s (%s); the file's refresh token is "
                "now stale and this account needs a new login after a restart",
                self.path,
                e.strerror or e,
            )
        self._data = updated
        self._lifetime = float(lifetime)
        self._obtained_at = self._clock()
        self._retry_refresh_at = 0.0

    async def _disable(self, refresh_token: str, reason: str) -> None:
        self.disabled = f"{reason}; {LOGIN_HINT}"
        logger.warning("aiclient-mitm: Qwen account %s disabled: %s", self.path.name, self.disabled)
        try:
            await asyncio.to_thread(write_refusal, self.path, refresh_token, self.disabled)
        except OSError as e:
            logger.warning("aiclient-mitm: could not record the refusal beside %s: %s", self.path, e.strerror or e)


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def oauth_error_text(body: Any, content: bytes) -> str:
    """`error: description` of an OAuth (or OpenAI-shaped) error body, short; never echoes what we sent."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            pieces = (error.get("code"), error.get("message"))
        else:
            pieces = (error, body.get("error_description") or body.get("message"))
        parts = [str(p) for p in pieces if p]
        if parts:
            return ": ".join(parts)[:200]
    return content[:120].decode("utf-8", "replace") or "empty body"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d"
