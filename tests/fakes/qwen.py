"""Fake Qwen Code backend: the portal's /v1/chat/completions plus chat.qwen.ai's OAuth endpoints.

The chat endpoint is the OpenAI Chat fake (same validation, same brain, same stream grammar incl.
reasoning_content and tool-call deltas, usage chunk) behind Qwen's checks: a live OAuth access
token and the DashScope headers qwen-code sends. The OAuth endpoints speak the device-code + PKCE
flow (pending / slow_down / success, scripted) and the rotating refresh grant, form-encoded.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.server import Exchange, HttpError, RecordedRequest, _read_body

CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MODELS = ("qwen3-coder-plus", "qwen3-coder-flash", "coder-model", "vision-model")
OAUTH_PREFIX = "/api/v1/oauth2/"
TOKEN_PATH = "/api/v1/oauth2/token"
DEVICE_PATH = "/api/v1/oauth2/device/code"
# The 429 bodies of the portal (qwen-code isQwenQuotaExceededError / isQwenThrottlingError).
QUOTA_ERROR = {
    "error": {
        "message": "Free allocated quota exceeded.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
THROTTLE_ERROR = {
    "error": {"message": "Requests throttling triggered.", "type": "Throttling", "param": None, "code": "Throttling"}
}
INVALID_TOKEN = "invalid access token or token expired"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class DeviceAuthorization:
    challenge: str
    steps: list[str]
    polls: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, answer)


class FakeQwen(FakeOpenAIChat):
    """`device_script`: what successive token polls of a device code answer
    (authorization_pending | slow_down | expired | success). `refuse_refresh` answers the refresh
    grant 400 invalid_grant; `rotate` issues a new refresh token on every refresh."""

    def __init__(
        self,
        *,
        token_lifetime: int = 21_600,
        resource_url: str | None = None,
        refresh_delay: float = 0.0,
        split_writes: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            api_key="", models=MODELS, stream_noise=False, split_writes=split_writes, seed=seed, allow_image_urls=False
        )
        self.token_lifetime = token_lifetime
        self.resource_url = resource_url
        self.refresh_delay = refresh_delay
        self.device_script = ["authorization_pending", "authorization_pending", "slow_down", "success"]
        self.refuse_refresh = False
        self.rotate = True
        self.refresh_grants = 0  # successful refreshes
        self.devices: dict[str, DeviceAuthorization] = {}
        self._access: dict[str, float] = {}  # access token -> expiry (epoch s)
        self._refresh: set[str] = set()
        self._tokens_lock = threading.RLock()

    # -- tokens, for tests ---------------------------------------------------------------------
    def issue(self, lifetime: float | None = None) -> tuple[str, str, float]:
        """A new (access, refresh, expiry) the fake accepts; lifetime <= 0 gives an expired access token."""
        access = "qat-" + secrets.token_urlsafe(24)
        refresh = "qrt-" + secrets.token_urlsafe(24)
        expiry = time.time() + (self.token_lifetime if lifetime is None else lifetime)
        with self._tokens_lock:
            self._access[access] = expiry
            self._refresh.add(refresh)
        return access, refresh, expiry

    def token_file(self, *, lifetime: float | None = None, resource_url: str | None = None, **extra: Any) -> dict:
        """A credential file in qwen-code's format holding freshly issued tokens."""
        access, refresh, expiry = self.issue(lifetime)
        data = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "resource_url": resource_url if resource_url is not None else self.url,
            "expiry_date": int(expiry * 1000),
        }
        data.update(extra)
        return data

    def refresh_token_valid(self, token: str) -> bool:
        with self._tokens_lock:
            return token in self._refresh

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def oauth_requests(self, grant_type: str | None = None) -> list[RecordedRequest]:
        out = [r for r in self.requests if r.path.startswith(OAUTH_PREFIX)]
        if grant_type is not None:
            out = [r for r in out if dict(parse_qsl(r.body.decode())).get("grant_type") == grant_type]
        return out

    # -- chat --------------------------------------------------------------------------------------
    def handle(self, ex: Exchange) -> None:
        request = ex.request
        if request.method == "POST" and request.path == "/v1/chat/completions":
            self._check_token(request)
            self._check_dashscope_headers(request)
            model = request.json.get("model") if isinstance(request.json, dict) else None
            if isinstance(model, str) and model not in MODELS:
                raise HttpError(400, f"Model not exist: {model}", code="model_not_found")
            self._completions(ex)
        else:
            raise HttpError(404, f"Not found: {request.method} {request.path}", code="not_found")

    def _check_token(self, request: RecordedRequest) -> None:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        with self._tokens_lock:
            expiry = self._access.get(token)
        if expiry is None or expiry <= time.time():
            raise HttpError(401, INVALID_TOKEN, code="invalid_api_key")

    @staticmethod
    def _check_dashscope_headers(request: RecordedRequest) -> None:
        h = request.headers
        ua = h.get("user-agent", "")
        wanted = {"x-dashscope-authtype": "qwen-oauth", "x-dashscope-cachecontrol": "enable"}
        for name, value in wanted.items():
            if h.get(name) != value:
                raise HttpError(400, f"missing or wrong {name} header (expected {value!r})")
        if not ua.startswith("QwenCode/") or h.get("x-dashscope-useragent") != ua:
            raise HttpError(400, "User-Agent and X-DashScope-UserAgent must both be QwenCode/<version> (...)")

    # -- OAuth (form-encoded, so not through the JSON plumbing) -------------------------------------
    def _serve(self, handler: Any) -> None:
        if not urlsplit(handler.path).path.startswith(OAUTH_PREFIX):
            super()._serve(handler)
            return
        split = urlsplit(handler.path)
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=_read_body(handler),
        )
        with self._lock:
            self.requests.append(request)
        ex = Exchange(self, handler, request, None)
        status, payload = self._oauth(request)
        try:
            ex.send_json(payload, status=status)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True

    def _oauth(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        if request.method != "POST":
            return 405, {"error": "invalid_request", "error_description": "POST only"}
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "form-encoded body required"}
        form = dict(parse_qsl(request.body.decode()))
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client", "error_description": "unknown client_id"}
        if request.path == DEVICE_PATH:
            return self._device_code(form)
        if request.path == TOKEN_PATH:
            grant = form.get("grant_type")
            if grant == DEVICE_GRANT:
                return self._device_token(form)
            if grant == "refresh_token":
                return self._refresh_grant(form)
            return 400, {"error": "unsupported_grant_type", "error_description": f"grant_type {grant!r}"}
        return 404, {"error": "not_found", "error_description": request.path}

    def _device_code(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("code_challenge_method") != "S256" or not form.get("code_challenge"):
            return 400, {"error": "invalid_request", "error_description": "PKCE S256 code_challenge required"}
        if "model.completion" not in form.get("scope", "").split():
            return 400, {"error": "invalid_scope", "error_description": "scope must include model.completion"}
        device_code = "dc-" + secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        self.devices[device_code] = DeviceAuthorization(form["code_challenge"], list(self.device_script))
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{self.url}/authorize",
            "verification_uri_complete": f"{self.url}/authorize?user_code={user_code}&client=qwen-code",
            "expires_in": 900,
        }

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        device = self.devices.get(form.get("device_code", ""))
        if device is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown device_code"}
        step = device.steps.pop(0) if device.steps else "expired"
        device.polls.append((time.monotonic(), step))
        if step == "authorization_pending":
            return 400, {"error": "authorization_pending", "error_description": "The user has not approved yet."}
        if step == "slow_down":
            return 429, {"error": "slow_down", "error_description": "Polling too frequently."}
        if step == "expired":
            return 401, {"error": "expired_token", "error_description": "The device code has expired."}
        if s256(form.get("code_verifier", "")) != device.challenge:
            return 400, {"error": "invalid_grant", "error_description": "code_verifier does not match the challenge"}
        device.steps = ["expired"]  # a device code is used once
        access, refresh, _ = self.issue()
        return 200, {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "scope": "openid profile email model.completion",
            "resource_url": self.resource_url or self.url,
        }

    def _refresh_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.refresh_delay:
            time.sleep(self.refresh_delay)  # lets concurrent callers pile up behind one refresh
        token = form.get("refresh_token", "")
        with self._tokens_lock:
            known = token in self._refresh
            if self.refuse_refresh or not known:
                return 400, {"error": "invalid_grant", "error_description": "Invalid refresh token or expired."}
            if self.rotate:
                self._refresh.discard(token)
            access, refresh, _ = self.issue()
            self.refresh_grants += 1
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.token_lifetime}
        if self.rotate:
            answer["refresh_token"] = refresh
        if self.resource_url:
            answer["resource_url"] = self.resource_url
        return 200, answer

    def device_steps(self) -> Iterable[str]:
        """Answers given to token polls, in order, across all device codes."""
        return [step for d in self.devices.values() for _, step in d.polls]
