"""Fake Google Code Assist (`cloudcode-pa.googleapis.com/v1internal`) plus its OAuth token endpoint.

Speaks what the Gemini CLI's backend speaks (upstreams.md 1.4-1.10): project discovery
(loadCodeAssist, onboardUser as a long-running operation polled with GET), generation in the
`{model, project, request}` envelope answered as `{"response": ..., "traceId": ...}` per body and
per SSE event, countTokens, and Google's token endpoint (refresh_token and authorization_code
grants, PKCE S256). The inner GenerateContentRequest is validated and answered by the public
Gemini fake's own rules (subclass of FakeGemini), so schemas, turn order and Gemini 3 signatures
are checked exactly as there. Bearer tokens are the ones this fake issued, until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from auth.google_oauth import GEMINI_CLI_CLIENT_ID, GEMINI_CLI_CLIENT_SECRET, SCOPES
from tests.fakes import brain
from tests.fakes.gemini import REQUEST_FIELDS, FakeGemini, _check_fields
from tests.fakes.server import Exchange, HttpError, RecordedRequest, _Handler, _read_body, sse_event

METHOD = re.compile(r"/v1internal:(\w+)")
OPERATION = re.compile(r"/v1internal/(operations/[\w.-]+)")
# The envelope and its inner request: Code Assist's VertexGenerateContentRequest has no `model`.
ENVELOPE_FIELDS = {"model", "project", "request", "userPromptId", "enabledCreditTypes"}
INNER_FIELDS = (REQUEST_FIELDS - {"model"}) | {"labels", "sessionId"}
MODELS = frozenset(
    {
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-3.1-pro-preview",
    }
)
EMAIL = "fake.user@example.com"
VALIDATION_URL = "https://accounts.google.com/signin/continue?sarp=1&scc=1&plt=fake"
TIERS = [
    {
        "id": "free-tier",
        "name": "Gemini Code Assist for individuals",
        "isDefault": True,
        "userDefinedCloudaicompanionProject": False,
    },
    {
        "id": "standard-tier",
        "name": "Gemini Code Assist Standard",
        "userDefinedCloudaicompanionProject": True,
    },
]
_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY = "type.googleapis.com/google.rpc.RetryInfo"
DOMAIN = "cloudcode-pa.googleapis.com"


def rate_limit_error(delay: str = "2s") -> dict[str, Any]:
    """429 body of a short per-minute limit (ErrorInfo RATE_LIMIT_EXCEEDED + RetryInfo)."""
    return {
        "error": {
            "code": 429,
            "message": f"Resource has been exhausted (e.g. check quota). Please retry in {delay}.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": _INFO, "reason": "RATE_LIMIT_EXCEEDED", "domain": DOMAIN, "metadata": {"model": "gemini"}},
                {"@type": _RETRY, "retryDelay": delay},
            ],
        }
    }


def quota_exhausted_error(reset: str = "4h30m28.06s") -> dict[str, Any]:
    """429 body of a spent daily quota (ErrorInfo QUOTA_EXHAUSTED with quotaResetDelay)."""
    return {
        "error": {
            "code": 429,
            "message": f"You have exhausted your capacity on this model. Your quota will reset after {reset}.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": _INFO,
                    "reason": "QUOTA_EXHAUSTED",
                    "domain": DOMAIN,
                    "metadata": {"quotaResetDelay": reset, "model": "gemini-2.5-pro"},
                }
            ],
        }
    }


def validation_required_error() -> dict[str, Any]:
    """403 body of an account Google wants verified first."""
    return {
        "error": {
            "code": 403,
            "message": "Verify your account to continue.",
            "status": "PERMISSION_DENIED",
            "details": [
                {
                    "@type": _INFO,
                    "reason": "VALIDATION_REQUIRED",
                    "domain": DOMAIN,
                    "metadata": {"validation_link": VALIDATION_URL},
                },
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"url": VALIDATION_URL}]},
            ],
        }
    }


def id_token(email: str = EMAIL) -> str:
    """An unsigned-looking JWT with the claims Google's id_token carries (the gateway never verifies it)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {
        "iss": "https://accounts.google.com",
        "aud": GEMINI_CLI_CLIENT_ID,
        "sub": "1234567890",
        "email": email,
        "email_verified": True,
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeCodeAssist(FakeGemini):
    """Code Assist + token endpoint on one loopback server.

    mode: "current" (onboarded, loadCodeAssist names the project), "onboard" (only allowedTiers
    until onboardUser finishes), "ineligible" (VALIDATION_REQUIRED). crlf: SSE lines end in CRLF.
    strict_signatures: Gemini 3 functionCall signatures must be ones this fake issued (the real
    service also accepts Google's documented dummy; strictness proves the real one came back).
    """

    json_indent = 2

    def __init__(
        self,
        *,
        mode: str = "current",
        project_id: str = "fake-project-4242",
        token_lifetime: int = 3599,
        crlf: bool = False,
        strict_signatures: bool = False,
        onboard_polls: int = 1,
        split_writes: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(api_key="", split_writes=split_writes, seed=seed)
        self.mode = mode
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.crlf = crlf
        self.strict_signatures = strict_signatures
        self.onboard_polls = onboard_polls
        self.onboarded = mode == "current"
        # Scripted behaviour of the token endpoint.
        self.invalid_grant = False
        self.token_delay = 0.0
        self.refresh_grants = 0
        self.code_grants = 0
        self.issued_signatures: set[str] = set()
        self._state = threading.Lock()
        self._access: dict[str, float] = {}  # access token -> expiry (epoch s)
        self._refresh: set[str] = set()
        self._codes: dict[str, tuple[str, str]] = {}  # code -> (PKCE challenge, redirect_uri)
        self._operations: dict[str, int] = {}  # operation name -> polls left before done

    # -- test helpers ---------------------------------------------------------------------------
    def issue_login(self, *, expired: bool = False) -> dict[str, Any]:
        """A Gemini CLI token file for a fresh login (its access token already expired if asked)."""
        access, refresh = self._new_access(), self.new_id("1//fake-refresh-", 40)
        with self._state:
            self._refresh.add(refresh)
            if expired:
                self._access[access] = time.time() - 60
        lifetime = -60 if expired else self.token_lifetime
        return {
            "access_token": access,
            "refresh_token": refresh,
            "scope": " ".join(SCOPES),
            "token_type": "Bearer",
            "id_token": id_token(),
            "expiry_date": int((time.time() + lifetime) * 1000),
        }

    def revoke(self, access_token: str) -> None:
        """The access token stops working before its expiry (the upstream then answers 401)."""
        with self._state:
            self._access.pop(access_token, None)

    def approve(self, code_challenge: str, redirect_uri: str) -> str:
        """What Google's consent page does: an authorization code bound to the PKCE challenge."""
        code = self.new_id("4/fake-code-", 30)
        with self._state:
            self._codes[code] = (code_challenge, redirect_uri)
        return code

    def calls(self, method: str) -> list[Any]:
        """Recorded JSON bodies of one v1internal method (e.g. "generateContent")."""
        return [r.json for r in self.requests if r.path == f"/v1internal:{method}"]

    # -- routing ------------------------------------------------------------------------------------
    def _serve(self, handler: _Handler) -> None:
        """The token endpoint takes forms, which the base would refuse as invalid JSON (no faults here)."""
        split = urlsplit(handler.path)
        if split.path != "/token" or handler.command != "POST":
            super()._serve(handler)
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        request = RecordedRequest("POST", split.path, dict(parse_qsl(split.query)), headers, _read_body(handler))
        with self._lock:
            self.requests.append(request)
            ex = Exchange(self, handler, request, None)
        try:
            self._token(ex)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        if request.path == "/oauth2/v2/userinfo" and request.method == "GET":
            self._check_bearer(request.headers)
            ex.send_json({"id": "1234567890", "email": EMAIL, "verified_email": True})
            return
        self._check_bearer(request.headers)
        op = OPERATION.fullmatch(request.path)
        if op is not None and request.method == "GET":
            ex.send_json(self._poll(op.group(1)))
            return
        match = METHOD.fullmatch(request.path)
        if match is None or request.method != "POST":
            raise HttpError(404, "Requested entity was not found.")
        method = match.group(1)
        if method == "loadCodeAssist":
            ex.send_json(self._load(request.json))
        elif method == "onboardUser":
            ex.send_json(self._onboard(request.json))
        elif method in ("generateContent", "streamGenerateContent"):
            self._generate(ex, method)
        elif method == "countTokens":
            ex.send_json(self._count(request.json))
        else:
            raise HttpError(404, f"Method {method} not found.")

    def _check_bearer(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        with self._state:
            expiry = self._access.get(token)
        if expiry is None or expiry <= time.time():
            raise HttpError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )

    # -- token endpoint -------------------------------------------------------------------------------
    def _new_access(self) -> str:
        token = self.new_id("ya29.fake-", 40)
        with self._state:
            self._access[token] = time.time() + self.token_lifetime
        return token

    def _token(self, ex: Exchange) -> None:
        if ex.request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            ex.send_json({"error": "invalid_request", "error_description": "Bad Request"}, status=400)
            return
        form = dict(parse_qsl(ex.request.body.decode()))
        if form.get("client_id") != GEMINI_CLI_CLIENT_ID or form.get("client_secret") != GEMINI_CLI_CLIENT_SECRET:
            ex.send_json({"error": "invalid_client", "error_description": "The OAuth client was not found."}, 401)
            return
        if self.token_delay:
            time.sleep(self.token_delay)
        grant = form.get("grant_type")
        if grant == "refresh_token":
            with self._state:
                self.refresh_grants += 1
                known = form.get("refresh_token") in self._refresh
            if self.invalid_grant or not known:
                ex.send_json({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, 400)
                return
            # Google answers a refresh without a new refresh_token.
            ex.send_json(self._token_answer(with_refresh=False))
        elif grant == "authorization_code":
            self._code_grant(ex, form)
        else:
            ex.send_json({"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"}, 400)

    def _code_grant(self, ex: Exchange, form: dict[str, str]) -> None:
        with self._state:
            self.code_grants += 1
            bound = self._codes.pop(form.get("code", ""), None)  # codes are single use
        if bound is None:
            ex.send_json({"error": "invalid_grant", "error_description": "Malformed auth code."}, 400)
            return
        challenge, redirect_uri = bound
        if form.get("redirect_uri") != redirect_uri:
            ex.send_json({"error": "redirect_uri_mismatch", "error_description": "Bad Request"}, 400)
            return
        verifier = form.get("code_verifier", "")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if not verifier or computed != challenge:
            ex.send_json({"error": "invalid_grant", "error_description": "Invalid code verifier."}, 400)
            return
        ex.send_json(self._token_answer(with_refresh=True))

    def _token_answer(self, *, with_refresh: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "access_token": self._new_access(),
            "expires_in": self.token_lifetime,
            "scope": " ".join(SCOPES),
            "token_type": "Bearer",
            "id_token": id_token(),
        }
        if with_refresh:
            refresh = self.new_id("1//fake-refresh-", 40)
            with self._state:
                self._refresh.add(refresh)
            answer["refresh_token"] = refresh
        return answer

    # -- project discovery -------------------------------------------------------------------------------
    def _metadata(self, body: Any) -> dict[str, Any]:
        body = _check_fields(body, {"cloudaicompanionProject", "metadata", "mode", "tierId"}, "")
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("pluginType") != "GEMINI":
            raise HttpError(400, "Request contains an invalid argument.")
        return body

    def _load(self, body: Any) -> dict[str, Any]:
        self._metadata(body)
        if self.onboarded:
            return {
                "currentTier": TIERS[1] | {"hasOnboardedPreviously": True},
                "allowedTiers": TIERS,
                "cloudaicompanionProject": self.project_id,
                "gcpManaged": False,
                "manageSubscriptionUri": "https://codeassist.google.com/upgrade",
            }
        answer: dict[str, Any] = {"allowedTiers": TIERS, "gcpManaged": False}
        if self.mode == "ineligible":
            answer["ineligibleTiers"] = [
                {
                    "reasonCode": "VALIDATION_REQUIRED",
                    "reasonMessage": "Verify your account to continue.",
                    "tierId": "free-tier",
                    "tierName": TIERS[0]["name"],
                    "validationUrl": VALIDATION_URL,
                }
            ]
        return answer

    def _onboard(self, body: Any) -> dict[str, Any]:
        body = self._metadata(body)
        if self.mode != "onboard":
            raise HttpError(412, "Precondition check failed.")
        tier = body.get("tierId")
        if tier not in {t["id"] for t in TIERS}:
            raise HttpError(400, f"Invalid tier id: {tier}")
        if tier == "free-tier" and body.get("cloudaicompanionProject"):
            raise HttpError(400, "Project ID must not be set for the free tier.")
        name = f"operations/{self.new_id('onboard-', 12)}"
        with self._state:
            self._operations[name] = self.onboard_polls
        return self._poll(name) if self.onboard_polls == 0 else {"name": name, "done": False}

    def _poll(self, name: str) -> dict[str, Any]:
        with self._state:
            left = self._operations.get(name)
            if left is None:
                raise HttpError(404, "Operation not found.")
            self._operations[name] = left - 1
        if left > 0:
            return {"name": name, "done": False}
        self.onboarded = True
        return {
            "name": name,
            "done": True,
            "response": {
                "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
                "cloudaicompanionProject": {"id": self.project_id, "name": self.project_id},
            },
        }

    # -- generation ------------------------------------------------------------------------------------------
    def _envelope(self, body: Any) -> tuple[str, dict[str, Any]]:
        envelope = _check_fields(body, ENVELOPE_FIELDS, "")
        project = envelope.get("project")
        if not project:
            raise HttpError(400, "Request contains an invalid argument: project is required.")
        if not self.onboarded or project != self.project_id:
            raise HttpError(403, f"Permission denied on resource project {project}.")
        model = envelope.get("model")
        if not isinstance(model, str) or not model:
            raise HttpError(400, "Request contains an invalid argument: model is required.")
        if model not in MODELS:
            raise HttpError(404, f"Requested entity was not found: model {model}.")
        return model, _check_fields(envelope.get("request"), INNER_FIELDS, "request")

    def _generate(self, ex: Exchange, method: str) -> None:
        model, inner = self._envelope(ex.request.json)
        prompt = self._parse(inner, model)
        answer = brain.answer(prompt)
        signed = model.startswith("gemini-3") or prompt.thinking
        signature = answer.signature or brain.make_signature(f"{model}:{prompt.words}")
        with self._state:
            self.issued_signatures.add(signature)
        trace = self.new_id("", 16)
        response_id = self.new_id("", 22)
        if method == "generateContent":
            parts = self._thought_parts([answer.thinking] if answer.thinking else [], signature)
            parts += [{"text": answer.text}] if answer.text else []
            parts += self._call_parts(answer, signed, signature)
            ex.send_json({"response": self._chunk(parts, answer, model, response_id, final=True), "traceId": trace})
            return
        chunks = self._chunks(answer, model, response_id, signed, signature)
        wrapped = [{"response": chunk, "traceId": trace} for chunk in chunks]
        if ex.request.query.get("alt") == "sse":
            eol = "\r\n" if self.crlf else "\n"
            ex.send_sse(sse_event(chunk, eol=eol) for chunk in wrapped)
        else:
            ex.send_json(wrapped)

    def _check_signatures(self, turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        FakeGemini._check_signatures(turns)
        if not self.strict_signatures:
            return
        for role, parts in turns:
            for part in parts:
                signature = part.get("thoughtSignature")
                if role == "model" and "functionCall" in part and signature is not None:
                    with self._state:
                        issued = signature in self.issued_signatures
                    if not issued:
                        raise HttpError(400, "Corrupted thought signature.")

    def _count(self, body: Any) -> dict[str, Any]:
        wrapper = _check_fields(body, {"request"}, "")
        inner = _check_fields(wrapper.get("request"), {"model", "contents", "generateContentRequest"}, "request")
        model = str(inner.get("model") or "").removeprefix("models/")
        if model not in MODELS:
            raise HttpError(404, f"Requested entity was not found: model {model}.")
        texts: list[str] = []
        self._contents(inner.get("contents"), texts, model)
        return {"totalTokens": max(1, brain.count_words(texts))}
