"""Which Google Cloud project a Gemini CLI login uses with Code Assist, and how it is found.

Code Assist wants a `project` in every request. An account's `project_id` from the config wins;
otherwise the project is discovered as the Gemini CLI does (upstreams.md 1.5): `loadCodeAssist`
names it for an onboarded account, else `onboardUser` with the default tier creates it and is
polled until done (bounded). The answer is cached per account in memory and in a JSON file under
the config's state_dir, so a restart does not onboard again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx2

from auth.credentials import CredentialError
from auth.google_oauth import TokenRejected
from auth.state import StateBackend
from core.config import Provider
from core.files import write_json_atomic
from translators.errors import extract_message

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://cloudcode-pa.googleapis.com"
API_VERSION = "v1internal"
STATE_FILE = "gemini-cli-projects.json"
# Name of the discovered projects in the shared state backend.
SHARED_KIND = "code_assist_project"
# The client identity the Gemini CLI sends (upstreams.md 1.4).
GEMINI_CLI_VERSION = "0.31.0"
GOOG_API_CLIENT = "google-genai-sdk/1.41.0 gl-node/v22.19.0"
CLIENT_METADATA = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}
DEFAULT_TIER = "legacy-tier"
FREE_TIER = "free-tier"
# Provider options (providers.gemini-cli-oauth.options): how project onboarding is polled.
OPTIONS: dict[str, float] = {"onboard_poll_interval": 2.0, "onboard_timeout": 60.0}
PROJECT_HINT = "set providers.gemini-cli-oauth.accounts[].project_id to a Google Cloud project with Gemini Code Assist"

_PLATFORMS = {"linux": "linux", "darwin": "darwin", "win32": "win32"}
_ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64", "i386": "ia32", "i686": "ia32"}


def api_base(base_url: str | None) -> str:
    """`https://host/v1internal` from a configured base with or without the version."""
    base = str(base_url or DEFAULT_BASE_URL).rstrip("/")
    return base if base.endswith(f"/{API_VERSION}") else f"{base}/{API_VERSION}"


def user_agent(model: str = "") -> str:
    """`GeminiCLI/<version>/<model> (<platform>; <arch>)`, with Node's platform and arch names."""
    system = _PLATFORMS.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = _ARCHES.get(machine, machine or "unknown")
    return f"GeminiCLI/{GEMINI_CLI_VERSION}/{model or 'gemini'} ({system}; {arch})"


def request_headers(token: str, model: str = "", *, stream: bool = False) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        # The gateway reads the bytes; compressed bodies would have to be inflated first.
        "accept-encoding": "identity",
        "user-agent": user_agent(model),
        "x-goog-api-client": GOOG_API_CLIENT,
    }


class ProjectStore:
    """Discovered projects by account label, in `<state_dir>/gemini-cli-projects.json` (None: memory only)."""

    # Several gateway processes (config `state: redis`): set by the Pools addon, so a project one
    # process discovered is used by the others without onboarding again.
    shared: ClassVar[StateBackend | None] = None

    # One lock per file across all stores of the process: two accounts may discover at once.
    _locks: dict[Path, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None

    def get(self, label: str) -> str | None:
        entry = self._read().get(label)
        project = entry.get("project") if isinstance(entry, dict) else None
        return project if isinstance(project, str) and project else None

    def put(self, label: str, project: str) -> None:
        if self.path is None:
            return
        with self._lock():
            data = self._read()
            data[label] = {"project": project, "discovered_at": int(time.time())}
            write_json_atomic(self.path, data)

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("aiclient-mitm: ignoring unreadable %s: %s", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _lock(self) -> threading.Lock:
        assert self.path is not None
        with self._locks_guard:
            return self._locks.setdefault(self.path.resolve(), threading.Lock())


class ProjectDiscovery:
    """loadCodeAssist -> cloudaicompanionProject, else onboardUser polled until done; one account.

    Called with the account's current access token; raises TokenRejected on a 401 (the caller
    refreshes once and calls again) and CredentialError naming what the user must do otherwise.
    """

    def __init__(
        self,
        base_url: str | None,
        label: str,
        store: ProjectStore,
        *,
        poll_interval: float = 2.0,
        onboard_timeout: float = 60.0,
        http_timeout: float = 30.0,
    ) -> None:
        self.base = api_base(base_url)
        self.label = label
        self.store = store
        self.poll_interval = poll_interval
        self.onboard_timeout = onboard_timeout
        self.http_timeout = http_timeout

    async def __call__(self, token: str) -> str:
        shared = self.store.shared if self.store.shared is not None and self.store.shared.shared else None
        if shared is not None:
            known = (await shared.discovered(SHARED_KIND) or {}).get(self.label)
            if known:
                await asyncio.to_thread(self._persist, known)
                logger.info("aiclient-mitm: gemini-cli-oauth %s uses project %s (shared)", self.label, known)
                return known
        async with httpx2.AsyncClient(trust_env=False, timeout=self.http_timeout, follow_redirects=False) as client:
            project = await self._discover(client, token)
        await asyncio.to_thread(self._persist, project)
        if shared is not None:
            await shared.put_discovered(SHARED_KIND, self.label, project)
        logger.info("aiclient-mitm: gemini-cli-oauth %s uses project %s", self.label, project)
        return project

    def _persist(self, project: str) -> None:
        try:
            self.store.put(self.label, project)
        except OSError as e:
            logger.warning("aiclient-mitm: could not save the project of %s: %s", self.label, e.strerror or e)

    async def _discover(self, client: httpx2.AsyncClient, token: str) -> str:
        loaded = await self._call(client, token, "POST", "loadCodeAssist", {"metadata": CLIENT_METADATA})
        ineligible = _ineligible(loaded)
        if loaded.get("currentTier"):
            project = _project_of(loaded.get("cloudaicompanionProject"))
            if project:
                return project
            tier = _tier_name(loaded["currentTier"])
            raise CredentialError(f"account {self.label} is on {tier} but Code Assist names no project; {PROJECT_HINT}")
        validation = next((t for t in ineligible if t.get("reasonCode") == "VALIDATION_REQUIRED"), None)
        if validation is not None:
            raise CredentialError(self._ineligible_message([validation], "must be verified by Google first"))
        allowed = [t for t in loaded.get("allowedTiers") or [] if isinstance(t, dict)]
        if not allowed and ineligible:
            raise CredentialError(self._ineligible_message(ineligible, "cannot use Gemini Code Assist"))
        tier = next((t for t in allowed if t.get("isDefault")), None)
        tier_id = tier.get("id") if tier and isinstance(tier.get("id"), str) else DEFAULT_TIER
        project = await self._onboard(client, token, tier_id)
        if project:
            return project
        reasons = f" ({self._reasons(ineligible)})" if ineligible else ""
        raise CredentialError(f"onboarding account {self.label} to {tier_id} gave no project{reasons}; {PROJECT_HINT}")

    async def _onboard(self, client: httpx2.AsyncClient, token: str, tier_id: str) -> str | None:
        # The free tier gets a Google-managed project: sending one is refused. Other tiers would need
        # the user's project, which is only known from the config (then discovery is not run at all).
        body = {"tierId": tier_id, "metadata": CLIENT_METADATA}
        operation = await self._call(client, token, "POST", "onboardUser", body)
        deadline = time.monotonic() + self.onboard_timeout
        while not operation.get("done"):
            if time.monotonic() + self.poll_interval > deadline:
                raise CredentialError(
                    f"Gemini Code Assist onboarding of account {self.label} did not finish within "
                    f"{self.onboard_timeout:g} s; run the Gemini CLI (`gemini`) once with this Google account to "
                    f"finish its setup, or {PROJECT_HINT}"
                )
            await asyncio.sleep(self.poll_interval)
            name = operation.get("name")
            if isinstance(name, str) and name.startswith("operations/"):
                operation = await self._call(client, token, "GET", name, None)
            else:
                operation = await self._call(client, token, "POST", "onboardUser", body)
        response = operation.get("response")
        if isinstance(operation.get("error"), dict):
            message = operation["error"].get("message") or "unknown error"
            raise CredentialError(f"onboarding account {self.label} failed: {message}")
        return _project_of(response.get("cloudaicompanionProject")) if isinstance(response, dict) else None

    async def _call(
        self, client: httpx2.AsyncClient, token: str, method: str, name: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        """POST {base}:{name} or GET {base}/{operation}; the JSON object answered."""
        url = f"{self.base}:{name}" if method == "POST" else f"{self.base}/{name}"
        what = name.split("/")[0] if method == "GET" else name
        try:
            r = await client.request(method, url, json=body, headers=request_headers(token))
        except httpx2.HTTPError as e:
            raise CredentialError(f"Code Assist unreachable during {what}: {type(e).__name__}: {e}") from None
        if r.status_code == 401:
            raise TokenRejected(f"Code Assist refused the access token of {self.label} during {what}")
        if r.status_code >= 400:
            message = extract_message(r.content)
            hint = f"; {PROJECT_HINT}" if r.status_code == 403 else ""
            raise CredentialError(f"Code Assist {what} for {self.label} answered {r.status_code}: {message}{hint}")
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise CredentialError(f"Code Assist {what} for {self.label} answered something other than a JSON object")
        return data

    def _ineligible_message(self, tiers: list[dict[str, Any]], what: str) -> str:
        links = [t["validationUrl"] for t in tiers if isinstance(t.get("validationUrl"), str)]
        todo = f"; open {links[0]} signed in with this Google account, then retry" if links else ""
        return f"Google account of {self.label} {what}: {self._reasons(tiers)}{todo}"

    @staticmethod
    def _reasons(tiers: list[dict[str, Any]]) -> str:
        return "; ".join(
            f"{t.get('reasonCode') or 'INELIGIBLE'}: {t.get('reasonMessage') or 'no reason given'}" for t in tiers
        )


def _ineligible(loaded: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in loaded.get("ineligibleTiers") or [] if isinstance(t, dict)]


def _project_of(value: Any) -> str | None:
    """cloudaicompanionProject is a string in loadCodeAssist and {id, name} in onboarding results."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _tier_name(tier: Any) -> str:
    if isinstance(tier, dict):
        return str(tier.get("name") or tier.get("id") or "a tier")
    return "a tier"


def provider_options(provider: Provider) -> dict[str, float]:
    """providers.gemini-cli-oauth.options with defaults; CredentialError names a bad key."""
    values = dict(OPTIONS)
    for key, value in provider.options.items():
        if key not in OPTIONS:
            raise CredentialError(f"options.{key}: unknown option for gemini-cli-oauth (known: {', '.join(OPTIONS)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CredentialError(f"options.{key}: must be a number of seconds above 0, got {value!r}")
        values[key] = float(value)
    return values
