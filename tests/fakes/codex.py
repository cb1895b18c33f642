"""Fake ChatGPT Codex backend (`/backend-api/codex/responses`, `/models`) plus auth.openai.com's
token endpoint and device-code login (upstreams-wave2.md 6.1).

The responses endpoint is the Responses fake (same validation, brain and event grammar) behind the
Codex backend's own rules: a live ChatGPT access token (a JWT) and the matching ChatGPT-Account-ID,
`originator` and a Codex-shaped User-Agent, `store: false`, `stream: true`, `instructions`, and the
refused parameters answered `{"detail": "Unsupported parameter: X"}`. Every answer carries the
x-codex-* usage headers. The token endpoint rotates refresh tokens and detects reuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.fakes import brain
from tests.fakes.openai_chat import openai_error
from tests.fakes.openai_responses import FakeOpenAIResponses
from tests.fakes.server import Exchange, HttpError, RecordedRequest, _read_body, sse_event

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
BASE_PATH = "/backend-api/codex"
AUTH_CLAIM = "https://api.openai.com/auth"
REDIRECTS = ("http://localhost:1455/auth/callback", "http://localhost:1457/auth/callback")
REFUSED = (
    "max_output_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "metadata",
    "top_logprobs",
    "truncation",
    "safety_identifier",
    "prompt_cache_retention",
    "previous_response_id",
)
MODELS = ("gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "codex-auto-review")
UA_SHAPE = re.compile(r"^[\w.-]+/[\w.-]+ \(.+; .+\)")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT: the gateway only reads the claims."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(secrets.token_bytes(16))}"


@dataclass
class Login:
    account_id: str
    plan: str
    email: str


class FakeCodex(FakeOpenAIResponses):
    """`refresh_failure`: a code (`refresh_token_expired`, `refresh_token_invalidated`) the next refresh
    grants answer with; `usage_limited` / `not_included`: account ids the backend refuses that way;
    `stream_failures`: `response.failed` errors the next successful-looking streams end with."""

    def __init__(self, *, token_lifetime: int = 3600, refresh_delay: float = 0.0, split_writes: bool = True) -> None:
        super().__init__(api_key="", split_writes=split_writes)
        self.token_lifetime = token_lifetime
        self.refresh_delay = refresh_delay
        self.refresh_failure: str | None = None
        self.usage_limited: dict[str, int] = {}  # account id -> resets_at
        self.not_included: set[str] = set()
        self.stream_failures: list[dict[str, Any]] = []
        self.empty_completed_output = False
        self.used_percent: dict[str, float] = {}
        self.refresh_grants = 0
        self.device_polls = 0
        self.codes: dict[str, tuple[str, str, Login]] = {}  # authorization code -> (challenge, redirect, login)
        self.devices: dict[str, dict[str, Any]] = {}
        self._access: dict[str, tuple[str, float]] = {}  # access token -> (account id, expiry)
        self._refresh: dict[str, Login] = {}
        self._used_refresh: set[str] = set()
        self._tokens_lock = threading.RLock()

    # -- tokens, for tests ---------------------------------------------------------------------
    def issue(self, login: Login, lifetime: float | None = None) -> dict[str, str]:
        """New tokens for `login`: {"access_token", "refresh_token", "id_token"}; lifetime <= 0 = expired."""
        now = time.time()
        expiry = now + (self.token_lifetime if lifetime is None else lifetime)
        auth = {"chatgpt_account_id": login.account_id, "chatgpt_plan_type": login.plan, "chatgpt_user_id": "user-1"}
        access = make_jwt({"exp": int(expiry), "iat": int(now), AUTH_CLAIM: auth, "jti": secrets.token_hex(8)})
        id_token = make_jwt({"exp": int(now + 3600), "email": login.email, AUTH_CLAIM: auth})
        refresh = "rt_" + secrets.token_urlsafe(24)
        with self._tokens_lock:
            self._access[access] = (login.account_id, expiry)
            self._refresh[refresh] = login
        return {"access_token": access, "refresh_token": refresh, "id_token": id_token}

    def auth_file(
        self, account_id: str = "acct-1", *, plan: str = "plus", lifetime: float | None = None, flat: bool = False
    ) -> dict[str, Any]:
        """An auth.json in the Codex CLI's shape (or CLIProxyAPI's flat one) holding fresh tokens."""
        tokens = self.issue(Login(account_id, plan, f"{account_id}@example.com"), lifetime)
        if flat:
            return {**tokens, "account_id": account_id, "email": f"{account_id}@example.com", "type": "codex"}
        return {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {**tokens, "account_id": account_id},
            "last_refresh": "2026-12-01T10:11:12.123456Z",
        }

    def refresh_token_valid(self, token: str) -> bool:
        with self._tokens_lock:
            return token in self._refresh

    def responses_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == f"{BASE_PATH}/responses"]

    def oauth_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/oauth/token"]

    def usage_headers(self, account_id: str) -> dict[str, str]:
        now = int(time.time())
        return {
            "x-codex-primary-used-percent": str(self.used_percent.get(account_id, 12.5)),
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-at": str(now + 3600),
            "x-codex-secondary-used-percent": "3.0",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-at": str(now + 86_400 * 3),
            "x-request-id": secrets.token_hex(8),
        }

    # -- errors --------------------------------------------------------------------------------
    def error_payload(self, err: HttpError) -> dict[str, Any]:
        if "raw" in err.details:
            return err.details["raw"]
        if err.details.get("detail"):
            return {"detail": err.message}
        return openai_error(err)

    # -- backend -------------------------------------------------------------------------------
    def handle(self, ex: Exchange) -> None:
        request = ex.request
        if request.method == "POST" and request.path == f"{BASE_PATH}/responses":
            account = self._check_identity(request)
            self._check_body(request.json, account)
            self._respond(ex, account)
        elif request.method == "GET" and request.path == f"{BASE_PATH}/models":
            account = self._check_identity(request)
            if not request.query.get("client_version"):
                raise HttpError(400, "client_version is required", detail=True)
            models = [{"slug": m, "visibility": "hide" if "review" in m else "list"} for m in MODELS]
            ex.send_json({"models": models}, headers=self.usage_headers(account))
        else:
            raise HttpError(404, f"Not Found: {request.method} {request.path}", detail=True)

    def _check_identity(self, request: RecordedRequest) -> str:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        with self._tokens_lock:
            known = self._access.get(token)
        if known is None or known[1] <= time.time():
            raise HttpError(
                401, "Your authentication token has expired. Please try signing in again.", code="token_expired"
            )
        account = request.headers.get("chatgpt-account-id")
        if account != known[0]:
            raise HttpError(403, "ChatGPT-Account-ID is missing or does not match the token", detail=True)
        if not request.headers.get("originator"):
            raise HttpError(400, "originator header is required", detail=True)
        if not UA_SHAPE.match(request.headers.get("user-agent", "")):
            raise HttpError(403, "Just a moment... (error code 1010)", detail=True)  # Cloudflare's bot check
        return account

    def _check_body(self, body: Any, account: str) -> None:
        if not isinstance(body, dict):
            raise HttpError(400, "Request body must be a JSON object", detail=True)
        if body.get("store") is not False:
            raise HttpError(400, "Store must be set to false", detail=True)
        if body.get("stream") is not True:
            raise HttpError(400, "Stream must be set to true", detail=True)
        if not isinstance(body.get("instructions"), str):
            raise HttpError(400, "Instructions are required", detail=True)
        for name in REFUSED:
            if name in body:
                raise HttpError(400, f"Unsupported parameter: {name}", detail=True)
        if account in self.not_included:
            raise HttpError(
                429,
                "Codex is not included in your plan",
                raw={"error": {"type": "usage_not_included", "message": "Codex is not included in your plan."}},
                headers=self.usage_headers(account),
            )
        resets_at = self.usage_limited.get(account)
        if resets_at is not None:
            error = {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": resets_at,
                "resets_in_seconds": max(0, resets_at - int(time.time())),
            }
            headers = {**self.usage_headers(account), "x-codex-primary-used-percent": "100"}
            raise HttpError(429, error["message"], raw={"error": error}, headers=headers)

    def _respond(self, ex: Exchange, account: str) -> None:
        body = ex.request.json
        model = body.get("model")
        if model not in MODELS:
            raise HttpError(
                400, f"The '{model}' model is not supported when using Codex with a ChatGPT account.", detail=True
            )
        reasoning = body.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, dict):
            raise HttpError(400, "reasoning must be an object", detail=True)
        try:
            prompt = self._input(body.get("input"), [body["instructions"]], False)
        except HttpError as e:
            if "encrypted content" not in e.message:
                raise
            # The backend reports an unreadable reasoning blob inside the stream, not as an HTTP error.
            failure = {"code": "invalid_encrypted_content", "message": e.message}
            response = {"id": self.new_id("resp_", 40), "object": "response", "model": model, "output": []}
            ex.send_sse(self._codex_stream(response, failure), headers=self.usage_headers(account))
            return
        prompt.tools = self._tools(body.get("tools"))
        prompt.thinking = bool(reasoning) and reasoning.get("effort") not in (None, "none")
        answer = brain.answer(prompt)
        encrypted = "reasoning.encrypted_content" in (body.get("include") or [])
        response = self._response(body, model, answer, encrypted)
        failure = self.stream_failures.pop(0) if self.stream_failures else None
        ex.send_sse(self._codex_stream(response, failure), headers=self.usage_headers(account))

    def _codex_stream(self, response: dict[str, Any], failure: dict[str, Any] | None) -> Iterator[bytes]:
        if failure is not None:
            pending = {**response, "status": "in_progress", "output": [], "usage": None}
            yield sse_event({"type": "response.created", "response": pending}, event="response.created")
            failed = {**response, "status": "failed", "output": [], "error": failure}
            yield sse_event({"type": "response.failed", "response": failed}, event="response.failed")
            return
        for event in self._stream(response):
            if self.empty_completed_output and event.startswith(b"event: response.completed"):
                obj = json.loads(event.split(b"data: ", 1)[1])
                obj["response"]["output"] = []  # the real backend often sends it empty
                event = sse_event(obj, event="response.completed")
            yield event

    # -- auth.openai.com -------------------------------------------------------------------------
    def _serve(self, handler: Any) -> None:
        path = urlsplit(handler.path).path
        if path.startswith(BASE_PATH):
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
        try:
            if request.path == "/oauth/authorize":
                self._authorize(handler, request)
                return
            status, payload = self._auth_server(request)
            ex.send_json(payload, status=status)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True

    def _authorize(self, handler: Any, request: RecordedRequest) -> None:
        """The browser step: the user "approves" at once and is sent back to the loopback redirect."""
        q = request.query
        ok = (
            q.get("client_id") == CLIENT_ID
            and q.get("response_type") == "code"
            and q.get("code_challenge_method") == "S256"
            and q.get("redirect_uri") in REDIRECTS
            and "offline_access" in q.get("scope", "").split()
            and q.get("state")
        )
        if not ok:
            handler.send_response(400)
            handler.send_header("content-length", "0")
            handler.end_headers()
            return
        code = "ac_" + secrets.token_urlsafe(16)
        self.codes[code] = (q["code_challenge"], q["redirect_uri"], Login("acct-login", "pro", "me@example.com"))
        location = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        handler.send_response(302)
        handler.send_header("location", location)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def _auth_server(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        if request.method != "POST":
            return 405, {"error": "invalid_request"}
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                form = json.loads(request.body)
            except ValueError:
                return 400, {"error": "invalid_request", "error_description": "bad JSON"}
        elif ctype.startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(request.body.decode()))
        else:
            return 400, {"error": "invalid_request", "error_description": "JSON or form body required"}
        if not isinstance(form, dict) or form.get("client_id") != CLIENT_ID:
            if request.path != "/api/accounts/deviceauth/token":
                return 401, {"error": "invalid_client", "error_description": "unknown client_id"}
        if request.path == "/oauth/token":
            grant = form.get("grant_type")
            if grant == "refresh_token":
                return self._refresh_grant(form.get("refresh_token", ""))
            if grant == "authorization_code":
                return self._code_grant(form)
            return 400, {"error": "unsupported_grant_type"}
        if request.path == "/api/accounts/deviceauth/usercode":
            device_id = "dev_" + secrets.token_hex(8)
            user_code = secrets.token_hex(3).upper()
            self.devices[device_id] = {"user_code": user_code, "polls": 0}
            return 200, {"device_auth_id": device_id, "user_code": user_code, "interval": "1"}
        if request.path == "/api/accounts/deviceauth/token":
            return self._device_token(form)
        return 404, {"error": "not_found"}

    def _device_token(self, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        device = self.devices.get(form.get("device_auth_id", ""))
        if device is None or device["user_code"] != form.get("user_code"):
            return 404, {"error": "unknown device authorization"}
        device["polls"] += 1
        self.device_polls += 1
        if device["polls"] <= 2:
            return 403, {"error": "authorization_pending"}
        verifier = b64url(secrets.token_bytes(32))
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        code = "ac_" + secrets.token_urlsafe(16)
        redirect = f"{self.url}/deviceauth/callback"
        self.codes[code] = (challenge, redirect, Login("acct-device", "plus", "dev@example.com"))
        return 200, {"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier}

    def _code_grant(self, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        entry = self.codes.pop(form.get("code", ""), None)
        if entry is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        challenge, redirect, login = entry
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != challenge:
            return 400, {"error": "invalid_grant", "error_description": "code_verifier does not match"}
        if form.get("redirect_uri") != redirect:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"}
        return 200, {**self.issue(login), "token_type": "Bearer", "expires_in": self.token_lifetime}

    def _refresh_grant(self, token: str) -> tuple[int, dict[str, Any]]:
        if self.refresh_delay:
            time.sleep(self.refresh_delay)  # lets concurrent callers pile up behind one refresh
        with self._tokens_lock:
            if self.refresh_failure:
                return 401, {"error": {"code": self.refresh_failure, "message": "Refresh token is not valid."}}
            if token in self._used_refresh:
                message = "Your refresh token has already been used to generate a new access token."
                return 401, {"error": {"code": "refresh_token_reused", "message": message}}
            login = self._refresh.pop(token, None)
            if login is None:
                return 401, {"error": {"code": "refresh_token_invalidated", "message": "Unknown refresh token."}}
            self._used_refresh.add(token)
            self.refresh_grants += 1
        return 200, {**self.issue(login), "token_type": "Bearer", "expires_in": self.token_lifetime}
