"""The Codex CLI's ChatGPT login (`~/.codex/auth.json`) as a gateway credential.

Why so careful: OpenAI rotates the refresh token on every refresh and the same file is usually
shared with the Codex CLI itself. A refresh therefore first re-reads the file (the CLI may already
have refreshed), and writes every returned field back atomically -- 0600, unknown fields kept,
the file's own shape (the CLI's nested `tokens` or CLIProxyAPI's flat one) unchanged -- before the
new access token is used. A refused refresh token (`refresh_token_reused|expired|invalidated`)
disables the account with "log in again"; the file is never deleted or blanked, and a marker
beside it remembers which refresh token was refused, so a restart says so too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from auth.credentials import AuthContext, CredentialError, counted_refresh, read_credential_file
from auth.qwen_oauth import oauth_error_text, read_refusal, write_refusal
from auth.state import NO_CLUSTER_LOCK, ClusterLock, RefreshFence
from core.files import write_json_atomic

logger = logging.getLogger(__name__)

# The Codex CLI's public OAuth client (codex-rs/login): PKCE, no secret.
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
ISSUER = "https://auth.openai.com"
DEFAULT_TOKEN_URL = f"{ISSUER}/oauth/token"
DEFAULT_CREDENTIALS = Path("~/.codex/auth.json")
LOGIN_HINT = "log in again: python -m auth login codex"
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"
# Refresh codes OpenAI uses for a dead refresh token: permanent until a new login.
PERMANENT_CODES = ("refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated")
# auth_mode values that hold no ChatGPT login this provider can use.
OTHER_MODES = {
    "apikey": "an OpenAI API key (API-key mode)",
    "agentIdentity": "an agent identity",
    "personal_access_token": "a personal access token",
    "chatgptAuthTokens": "tokens the Codex app keeps in memory",
}
# The official client refreshes a token without `exp` when its last refresh is older than this.
STALE_AFTER = 8 * 86_400.0
MIN_VALID = 30.0
RETRY_REFRESH_AFTER = 30.0
JUST_REFRESHED = 10.0
REFRESH_TIMEOUT = 30.0


def credentials_path(path: Path | None) -> Path:
    return (path or DEFAULT_CREDENTIALS).expanduser()


def jwt_claims(token: Any) -> dict[str, Any]:
    """The payload of a JWT, unverified (only read for expiry, account id and plan); {} if not a JWT."""
    if not isinstance(token, str) or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _auth_claim(claims: dict[str, Any]) -> dict[str, Any]:
    value = claims.get(AUTH_CLAIM)
    return value if isinstance(value, dict) else {}


def _iso(ts: float) -> str:
    """RFC 3339 with microseconds and Z, as the Codex CLI writes `last_refresh`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CodexTokens:
    """One auth.json in either shape: the CLI's `{"auth_mode", "tokens": {...}, "last_refresh"}`
    or CLIProxyAPI's flat `{"access_token", ..., "type": "codex", "expired"}`. Unknown fields ride along."""

    __slots__ = ("data", "flat")

    def __init__(self, data: dict[str, Any], flat: bool) -> None:
        self.data = data
        self.flat = flat

    @classmethod
    def parse(cls, data: Any, path: Path) -> CodexTokens:
        if not isinstance(data, dict):
            raise CredentialError(f"{path} is not a Codex auth.json (expected a JSON object)")
        mode = data.get("auth_mode")
        if isinstance(mode, str) and mode in OTHER_MODES:
            raise CredentialError(
                f"{path} holds {OTHER_MODES[mode]}, not a ChatGPT login; this provider needs the ChatGPT sign-in "
                "(python -m auth login codex). An API key belongs in openaiResponses-custom's api_key."
            )
        tokens = data.get("tokens")
        if isinstance(tokens, dict):
            out = cls(data, flat=False)
        elif isinstance(data.get("access_token"), str) and isinstance(data.get("refresh_token"), str):
            out = cls(data, flat=True)
        elif data.get("OPENAI_API_KEY"):
            raise CredentialError(
                f"{path} holds an OpenAI API key (API-key mode), not a ChatGPT login; use openaiResponses-custom "
                "with api_key, or sign in with ChatGPT: python -m auth login codex"
            )
        else:
            raise CredentialError(f"{path} holds no ChatGPT tokens; {LOGIN_HINT}")
        for name in ("access_token", "refresh_token"):
            if not isinstance(out.get(name), str) or not out.get(name):
                raise CredentialError(f"{path} is not a usable Codex login: {name} is missing; {LOGIN_HINT}")
        if not out.account_id:
            raise CredentialError(f"{path} names no ChatGPT account (no account_id, none in the tokens); {LOGIN_HINT}")
        return out

    def _tokens(self) -> dict[str, Any]:
        return self.data if self.flat else self.data["tokens"]

    def get(self, name: str) -> Any:
        return self._tokens().get(name)

    @property
    def access_token(self) -> str:
        return self._tokens()["access_token"]

    @property
    def refresh_token(self) -> str:
        return self._tokens()["refresh_token"]

    def claims(self) -> dict[str, Any]:
        """Claims of the id_token (plan, email), else of the access token (same auth claim)."""
        return jwt_claims(self.get("id_token")) or jwt_claims(self.access_token)

    @property
    def account_id(self) -> str | None:
        stored = self.get("account_id")
        if isinstance(stored, str) and stored:
            return stored
        for token in (self.get("id_token"), self.access_token):
            found = _auth_claim(jwt_claims(token)).get("chatgpt_account_id")
            if isinstance(found, str) and found:
                return found
        return None

    @property
    def plan_type(self) -> str | None:
        for token in (self.get("id_token"), self.access_token):
            plan = _auth_claim(jwt_claims(token)).get("chatgpt_plan_type")
            if isinstance(plan, str) and plan:
                return plan
        return None

    @property
    def expires_at(self) -> float | None:
        """The access token's `exp`; else the flat file's `expired`; else 8 days after `last_refresh`."""
        exp = jwt_claims(self.access_token).get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return float(exp)
        if self.flat and (expired := _parse_iso(self.data.get("expired"))) is not None:
            return expired
        last = _parse_iso(self.data.get("last_refresh"))
        return last + STALE_AFTER if last is not None else None

    @property
    def lifetime(self) -> float | None:
        """`exp - iat` of the access token, when it says both."""
        claims = jwt_claims(self.access_token)
        exp, iat = claims.get("exp"), claims.get("iat")
        if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
            return float(exp - iat)
        return None

    def updated(self, answer: dict[str, Any], now: float) -> CodexTokens:
        """A copy with every token field the refresh answer returned (old values kept for the rest)."""
        data = json.loads(json.dumps(self.data))
        out = CodexTokens(data, self.flat)
        tokens = out._tokens()
        for name in ("id_token", "access_token", "refresh_token"):
            value = answer.get(name)
            if isinstance(value, str) and value:
                tokens[name] = value
        if not tokens.get("account_id") and out.account_id:
            tokens["account_id"] = out.account_id
        data["last_refresh"] = _iso(now)
        if self.flat:
            exp = jwt_claims(tokens["access_token"]).get("exp")
            lifetime = answer.get("expires_in")
            if isinstance(exp, int | float):
                data["expired"] = _iso(float(exp))
            elif isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
                data["expired"] = _iso(now + float(lifetime))
        return out


def read_auth_file(path: Path) -> CodexTokens:
    text = read_credential_file(
        path,
        f"no Codex login at {path} (the Codex CLI may keep it in the OS keyring: set "
        'cli_auth_credentials_store = "file" in ~/.codex/config.toml, or log in: python -m auth login codex)',
    )
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialError(f"{path} is not valid JSON; {LOGIN_HINT}") from None
    return CodexTokens.parse(data, path)


def write_auth_file(path: Path, tokens: CodexTokens) -> None:
    """Atomic replace, mode 0600, pretty JSON as the Codex CLI writes it."""
    write_json_atomic(path, tokens.data, indent=2)


class RefreshRefused(CredentialError):
    """OpenAI refused the refresh token for good: a new login is needed."""


class CodexCredential:
    """One ChatGPT account of the Codex CLI: refreshed ahead of expiry and after a 401, one refresh at a time."""

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
        """Reads the file now (at config load), so a missing, foreign or refused one is reported at once."""
        self.path = path
        self.token_url = token_url
        self.refresh_ahead = refresh_ahead
        self.connect_timeout = connect_timeout
        self._clock = clock
        self._tokens = read_auth_file(path)
        refused = read_refusal(path, self._tokens.refresh_token)
        if refused:
            raise CredentialError(f"disabled: {refused}")
        self.disabled: str | None = None
        self._retry_refresh_at = 0.0
        self._obtained_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0  # refresh grants this process ran (tests, status)
        # Several gateway processes (auth/state.py): one refresh of this account in the whole cluster.
        self.cluster_lock: ClusterLock = NO_CLUSTER_LOCK
        self.cluster_name = f"codex:{self._tokens.account_id}"

    # -- protocol ----------------------------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        return self._tokens.expires_at

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
                    if not self._usable(self._tokens):
                        raise
                    self._retry_refresh_at = self._clock() + RETRY_REFRESH_AFTER
                    logger.warning("aiclient-mitm: early Codex token refresh failed (%s): %s", self.path.name, e)
            return self._context()

    async def force_refresh(self) -> AuthContext:
        failed = self._tokens.access_token
        async with self._lock:
            self._check_enabled()
            # Requests that got their 401 with the old token share the refresh another one just ran.
            if self._tokens.access_token == failed and self._clock() - self._obtained_at > JUST_REFRESHED:
                await self._refresh(failed_token=failed)
            return self._context()

    async def describe(self) -> str:
        if self.disabled:
            return f"disabled: {self.disabled}"
        claims = self._tokens.claims()
        email = claims.get("email") or (claims.get(PROFILE_CLAIM) or {}).get("email")
        plan = self._tokens.plan_type or "unknown plan"
        who = f"ChatGPT {plan}" + (f" ({_mask_email(email)})" if isinstance(email, str) else "")
        expires = self.expires_at
        if expires is None:
            state = "access token expiry unknown"
        elif expires > self._clock():
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
            state = f"access token valid until {when}"
        else:
            state = "access token expired (refreshed on next use)"
        return f"{who}; {state}; file {self.path}"

    # -- state -----------------------------------------------------------------------------------

    @property
    def plan_type(self) -> str | None:
        return self._tokens.plan_type

    def _check_enabled(self) -> None:
        if self.disabled:
            raise CredentialError(self.disabled)

    def _context(self) -> AuthContext:
        extra = {"account_id": self._tokens.account_id or ""}
        if plan := self._tokens.plan_type:
            extra["plan_type"] = plan
        return AuthContext(self._tokens.access_token, extra)

    def _remaining(self, tokens: CodexTokens) -> float:
        expires = tokens.expires_at
        return float("inf") if expires is None else expires - self._clock()

    def _usable(self, tokens: CodexTokens) -> bool:
        return self._remaining(tokens) > MIN_VALID

    def _lead(self, tokens: CodexTokens) -> float:
        """How long before expiry to refresh: refresh_ahead, but at most half the token's lifetime
        (exp - iat), or a short-lived token would be refreshed on every request."""
        lead = self.refresh_ahead
        lifetime = tokens.lifetime
        if lifetime is not None:
            lead = min(lead, lifetime / 2)
        return max(lead, MIN_VALID)

    def _wants_refresh(self) -> bool:
        if not self._usable(self._tokens):
            return True
        return self._remaining(self._tokens) <= self._lead(self._tokens) and self._clock() >= self._retry_refresh_at

    # -- refresh ---------------------------------------------------------------------------------

    @counted_refresh
    async def _refresh(self, failed_token: str | None) -> None:
        """Under self._lock and the cluster's lock of this account: adopt the login another gateway
        process published or a newer one from the file, else run the refresh grant."""
        async with self.cluster_lock(self.cluster_name) as fence:
            if await self._adopt_published(fence, failed_token):
                return
            await self._refresh_locked(failed_token, fence)

    async def _adopt_published(self, fence: RefreshFence, failed_token: str | None) -> bool:
        """The login a process elsewhere in the cluster refreshed while we waited: taken (and written
        to our file, whose refresh token it rotated) when it is newer than ours and still valid."""
        published = await fence.published()
        if published is None:
            return False
        try:
            tokens = CodexTokens.parse(published, self.path)
        except CredentialError:
            return False
        if tokens.account_id != self._tokens.account_id or tokens.refresh_token == self._tokens.refresh_token:
            return False
        if not self._usable(tokens) or tokens.access_token == failed_token:
            return False
        try:
            await asyncio.to_thread(write_auth_file, self.path, tokens)
        except OSError as e:
            logger.warning("aiclient-mitm: could not save the shared Codex login to %s: %s", self.path, e.strerror or e)
        self._tokens = tokens
        self._obtained_at = self._clock()
        self._retry_refresh_at = self._clock() + RETRY_REFRESH_AFTER
        return True

    async def _refresh_locked(self, failed_token: str | None, fence: RefreshFence) -> None:
        for _ in range(2):  # a second round only when another process rotated the token meanwhile
            if self._adopt_from_file(await self._read_disk(), failed_token):
                return
            sent = self._tokens.refresh_token
            if not await fence.held():
                # Fencing: our lock expired and another process may be spending this refresh token.
                raise CredentialError("token refresh skipped: the cluster refresh lock was lost; retry")
            try:
                await self._refresh_grant(sent)
                await fence.publish(self._tokens.data, self._remaining(self._tokens))
                return
            except RefreshRefused as refused:
                if await self._adopt_published(fence, failed_token):
                    return  # another process refreshed first (its lock was unreachable): take its token
                on_disk = await self._read_disk()
                if on_disk is not None and on_disk.refresh_token != sent:
                    continue  # the Codex CLI rotated it meanwhile: adopt or refresh with the new one
                await self._disable(sent, str(refused))
                raise RefreshRefused(self.disabled) from None
        raise CredentialError("token refresh did not settle: the auth file keeps changing")

    async def _read_disk(self) -> CodexTokens | None:
        try:
            return await asyncio.to_thread(read_auth_file, self.path)
        except CredentialError:
            return None  # keep what we have; the file may be mid-rewrite by a login

    def _adopt_from_file(self, on_disk: CodexTokens | None, failed_token: str | None) -> bool:
        """True when the file holds another login of the same account that makes a refresh unnecessary."""
        if on_disk is None or on_disk.account_id != self._tokens.account_id:
            return False
        if (on_disk.access_token, on_disk.refresh_token) == (self._tokens.access_token, self._tokens.refresh_token):
            return False
        self._tokens = on_disk
        self._obtained_at = self._clock()
        fresh = self._usable(on_disk) and on_disk.access_token != failed_token
        return fresh and (failed_token is not None or self._remaining(on_disk) > self._lead(on_disk))

    async def _refresh_grant(self, refresh_token: str) -> None:
        body = {"client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": refresh_token}
        timeout = httpx2.Timeout(REFRESH_TIMEOUT, connect=self.connect_timeout)
        try:
            async with httpx2.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
                r = await client.post(self.token_url, json=body, headers={"accept": "application/json"})
        except httpx2.HTTPError as e:
            raise CredentialError(f"token refresh failed: {type(e).__name__}: {e}") from None
        answer = _json_or_none(r.content)
        code = refresh_error_code(answer)
        if r.status_code == 401 or code in PERMANENT_CODES:
            reason = {
                "refresh_token_reused": "the refresh token was already used (another program refreshed this login)",
                "refresh_token_expired": "the refresh token expired",
                "refresh_token_invalidated": "the refresh token was revoked",
            }.get(
                code or "", f"OpenAI refused the refresh token ({r.status_code} {oauth_error_text(answer, r.content)})"
            )
            raise RefreshRefused(reason)
        if r.status_code != 200 or not isinstance(answer, dict):
            raise CredentialError(f"token refresh failed: {r.status_code} {oauth_error_text(answer, r.content)}")
        if not isinstance(answer.get("access_token"), str) or not answer["access_token"]:
            raise CredentialError("token refresh failed: the answer holds no access_token")
        self.refreshes += 1
        updated = self._tokens.updated(answer, self._clock())
        try:
            # Persist first: the old refresh token is already dead once OpenAI rotated it.
            await asyncio.to_thread(write_auth_file, self.path, updated)
        except OSError as e:
            logger.error(
                "aiclient-mitm: could not save the rotated Codex token to %s (%s); the file's refresh token is "
                "now stale and this account needs a new login after a restart",
                self.path,
                e.strerror or e,
            )
        self._tokens = updated
        self._obtained_at = self._clock()
        # A new token that still looks close to expiry (a skewed clock) is not refreshed again at once.
        self._retry_refresh_at = self._clock() + RETRY_REFRESH_AFTER

    async def _disable(self, refresh_token: str, reason: str) -> None:
        self.disabled = f"{reason}; {LOGIN_HINT}"
        logger.warning("aiclient-mitm: Codex account %s disabled: %s", self.path.name, self.disabled)
        try:
            await asyncio.to_thread(write_refusal, self.path, refresh_token, self.disabled)
        except OSError as e:
            logger.warning("aiclient-mitm: could not record the refusal beside %s: %s", self.path, e.strerror or e)


def refresh_error_code(body: Any) -> str | None:
    """`error.code`, a string `error`, or a top-level `code` of a refresh answer (codex manager.rs)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    for value in ((error or {}).get("code") if isinstance(error, dict) else error, body.get("code")):
        if isinstance(value, str) and value:
            return value
    return None


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _mask_email(email: str) -> str:
    name, _, domain = email.partition("@")
    return f"{name[:2]}***@{domain}" if domain else "***"
