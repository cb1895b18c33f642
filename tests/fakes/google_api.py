"""Fake Google upstreams reached the ways Google allows: the Generative Language API with an API key
(AI Studio) and Vertex AI with a service account (Gemini and Claude models), plus Google's token
endpoint for the service account's JWT-bearer grant (wave2 reference 4 and 6.4-6.5).

Strict where the real services are: the API key only in `x-goog-api-key` (this fake refuses `?key=`,
which the real API takes but which puts the key in URLs and logs), no `model` in a Gemini body, unknown
models 404 naming the model, Gemini 3 function calls must carry a signature this fake issued. Vertex:
bearer tokens only from the token endpoint, whose assertion is verified with the service account's
public key (signature, iss, aud, scope, exp); project and location in the path must be the configured
ones; `contents[].role` required; Claude bodies need `anthropic_version: vertex-2023-10-16` and must
not name the model. Bodies are validated and answered by the Gemini and Claude fakes' own rules.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes import brain
from tests.fakes.claude import FakeClaude
from tests.fakes.gemini import FakeGemini, _check_fields
from tests.fakes.server import Exchange, HttpError, RecordedRequest, _Handler, _read_body, sse_event

GEMINI_MODELS = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
    "gemini-3.1-pro-preview",
)
CLAUDE_MODELS = ("claude-sonnet-4-5@20250929", "claude-haiku-4-5@20251001", "claude-opus-4-1@20250805")
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
API_PATH = re.compile(r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)")
VERTEX_PATH = re.compile(r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/(google|anthropic)/models/([^/:]+):(\w+)")
_TYPE = "type.googleapis.com/google.rpc."


def rate_limit_error(delay: str = "7s") -> dict[str, Any]:
    """429 RESOURCE_EXHAUSTED of a per-minute quota with RetryInfo (wave2 6.4)."""
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": _TYPE + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        }
                    ],
                },
                {"@type": _TYPE + "RetryInfo", "retryDelay": delay},
            ],
        }
    }


def daily_quota_error(reset: str = "3h2m1s") -> dict[str, Any]:
    """429 of a spent daily quota, its reset in ErrorInfo.metadata.quotaResetDelay."""
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": _TYPE + "ErrorInfo",
                    "reason": "QUOTA_EXHAUSTED",
                    "domain": "googleapis.com",
                    "metadata": {"quotaResetDelay": reset},
                },
                {
                    "@type": _TYPE + "QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
                },
            ],
        }
    }


def permission_denied_error(service: str = "generativelanguage.googleapis.com") -> dict[str, Any]:
    """403 of an API not enabled in the key's project."""
    return {
        "error": {
            "code": 403,
            "message": f"{service} API has not been used in project 123456 before or it is disabled.",
            "status": "PERMISSION_DENIED",
            "details": [
                {
                    "@type": _TYPE + "ErrorInfo",
                    "reason": "SERVICE_DISABLED",
                    "domain": "googleapis.com",
                    "metadata": {"service": service, "consumer": "projects/123456"},
                }
            ],
        }
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _SignedGemini(FakeGemini):
    """Gemini answers that remember their thought signatures: a call replayed with another is refused."""

    def __init__(self, api_key: str = "", **kw: Any) -> None:
        super().__init__(api_key, **kw)
        self.issued_signatures: set[str] = set()
        self._state = threading.Lock()

    def generate(self, ex: Exchange, model: str, body: dict[str, Any], stream: bool) -> None:
        prompt = self._parse(body, model)
        answer = brain.answer(prompt)
        signed = model.startswith("gemini-3") or prompt.thinking
        signature = answer.signature or brain.make_signature(f"{model}:{prompt.words}")
        with self._state:
            self.issued_signatures.add(signature)
        response_id = self.new_id("", 22)
        if not stream:
            parts = self._thought_parts([answer.thinking] if answer.thinking else [], signature)
            parts += [{"text": answer.text}] if answer.text else []
            parts += self._call_parts(answer, signed, signature)
            ex.send_json(self._chunk(parts, answer, model, response_id, final=True))
            return
        chunks = self._chunks(answer, model, response_id, signed, signature)
        if ex.request.query.get("alt") == "sse":
            ex.send_sse(sse_event(chunk, eol="\r\n") for chunk in chunks)
        else:
            ex.send_json(chunks)

    def _check_signatures(self, turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        FakeGemini._check_signatures(turns)
        for role, parts in turns:
            for part in parts:
                signature = part.get("thoughtSignature")
                if role == "model" and "functionCall" in part and signature is not None:
                    with self._state:
                        issued = signature in self.issued_signatures
                    if not issued:
                        raise HttpError(400, "Corrupted thought signature.")

    def count(self, texts_from: Any, model: str) -> dict[str, Any]:
        texts: list[str] = []
        self._contents(texts_from, texts, model)
        return {"totalTokens": max(1, brain.count_words(texts))}


class FakeGeminiApi(_SignedGemini):
    """generativelanguage.googleapis.com with an API key; `models_page_size` pages GET /v1beta/models."""

    def __init__(self, *api_keys: str, models_page_size: int = 1000, **kw: Any) -> None:
        super().__init__(api_keys[0] if api_keys else "gemini-test-key", **kw)
        self.api_keys = set(api_keys) or {self.api_key}
        self.models_page_size = models_page_size

    def _check_auth(self, key: str | None) -> None:
        # FakeGemini's checks (missing key 403, wrong key 400 API_KEY_INVALID) for any of the keys.
        if key in self.api_keys:
            return
        super()._check_auth(key)

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        if "key" in request.query:
            raise HttpError(400, "This fake refuses API keys in the URL (?key=); send the x-goog-api-key header.")
        self._check_auth(request.headers.get("x-goog-api-key"))
        if request.method == "GET" and request.path == "/v1beta/models":
            ex.send_json(self._models_page(request.query))
            return
        match = API_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            raise HttpError(404, "Requested entity was not found.")
        model, method = match.groups()
        if model not in GEMINI_MODELS:
            raise HttpError(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported for {method}. "
                "Call ListModels to see the list of available models and their supported methods.",
            )
        if not isinstance(request.json, dict):
            raise HttpError(400, "Invalid JSON payload received. Expected an object.")
        if method == "countTokens":
            ex.send_json(self._count_tokens(request.json, model))
            return
        if "model" in request.json:
            raise HttpError(400, "Invalid JSON payload received. The model is named in the URL, not the body.")
        body = _check_fields(
            request.json,
            {
                "contents",
                "tools",
                "toolConfig",
                "safetySettings",
                "systemInstruction",
                "generationConfig",
                "cachedContent",
            },
            "",
        )
        self.generate(ex, model, body, method == "streamGenerateContent")

    def _count_tokens(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        body = _check_fields(body, {"contents", "generateContentRequest"}, "")
        inner = body.get("generateContentRequest")
        if inner is None:
            return self.count(body.get("contents"), model)
        if inner.get("model") != f"models/{model}":
            raise HttpError(400, "generateContentRequest.model must be the model of the URL (models/...).")
        texts = [p.get("text", "") for p in (inner.get("systemInstruction") or {}).get("parts") or []]
        counted = self.count(inner.get("contents"), model)["totalTokens"]
        tools = json.dumps(inner.get("tools") or [])
        return {"totalTokens": counted + brain.count_words(texts) + (len(tools) // 16 if inner.get("tools") else 0)}

    def _models_page(self, query: dict[str, str]) -> dict[str, Any]:
        size = min(int(query.get("pageSize") or 50), self.models_page_size)
        start = int(query.get("pageToken") or 0)
        listed = [*GEMINI_MODELS, "text-embedding-004", "gemini-2.0-flash-001"]
        page = listed[start : start + size]
        methods = {True: ["embedContent"], False: ["generateContent", "countTokens"]}
        models = [
            {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": methods["embedding" in m]}
            for m in page
        ]
        out: dict[str, Any] = {"models": models}
        if start + size < len(listed):
            out["nextPageToken"] = str(start + size)
        return out


class FakeVertex(_SignedGemini):
    """Vertex AI (`…/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{m}:{method}`) and the
    OAuth token endpoint at /token; `public_key` verifies the service account's JWT assertions."""

    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        *,
        client_email: str,
        project_id: str = "vertex-test-project",
        locations: tuple[str, ...] = ("us-central1", "global"),
        token_lifetime: int = 3600,
        **kw: Any,
    ) -> None:
        super().__init__("", **kw)
        self.public_key = public_key
        self.client_email = client_email
        self.project_id = project_id
        self.locations = locations
        self.token_lifetime = token_lifetime
        self.token_grants = 0
        self.claude = FakeClaude(api_key="")  # not started: only its body rules and answers are used
        self._access: dict[str, float] = {}

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def revoke_all(self) -> None:
        with self._state:
            self._access.clear()

    # -- token endpoint ------------------------------------------------------------------------
    def _serve(self, handler: _Handler) -> None:
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
            status, payload = self._token(request)
            ex.send_json(payload, status=status)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True

    def _token(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        def refuse(description: str) -> tuple[int, dict[str, Any]]:
            return 400, {"error": "invalid_grant", "error_description": description}

        if request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return 400, {"error": "invalid_request", "error_description": "Bad Request"}
        form = dict(parse_qsl(request.body.decode()))
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        try:
            head, payload, signature = form.get("assertion", "").split(".")
            header = json.loads(_unb64url(head))
            claims = json.loads(_unb64url(payload))
            self.public_key.verify(
                _unb64url(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (ValueError, InvalidSignature):
            return refuse("Invalid JWT Signature.")
        now = time.time()
        if header.get("alg") != "RS256":
            return refuse("Invalid JWT: algorithm must be RS256.")
        if claims.get("iss") != self.client_email:
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        # Google's token endpoint is the audience whichever URL the grant is posted to (google-auth sets it so).
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return refuse("Invalid JWT: Failed audience check.")
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope."}
        if not isinstance(claims.get("exp"), int) or claims["exp"] < now or claims["exp"] - claims.get("iat", 0) > 3600:
            return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
        token = self.new_id("ya29.c.fake-", 48)
        with self._state:
            self.token_grants += 1
            self._access[token] = now + self.token_lifetime
        return 200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    # -- API ---------------------------------------------------------------------------------------
    def handle(self, ex: Exchange) -> None:
        request = ex.request
        auth = request.headers.get("authorization", "")
        with self._state:
            expiry = self._access.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if expiry is None or expiry <= time.time():
            raise HttpError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
            )
        match = VERTEX_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            raise HttpError(404, f"The requested URL {request.path} was not found on this server.")
        project, location, publisher, model, method = match.groups()
        if project != self.project_id:
            raise HttpError(403, f"Permission denied on resource project {project}.")
        if location not in self.locations:
            raise HttpError(404, f"Location {location} is not supported.")
        known = GEMINI_MODELS if publisher == "google" else CLAUDE_MODELS
        if model not in known:
            raise HttpError(
                404,
                f"Publisher Model `projects/{project}/locations/{location}/publishers/{publisher}/models/{model}` "
                "was not found or your project does not have access to it.",
            )
        if not isinstance(request.json, dict):
            raise HttpError(400, "Invalid JSON payload received.")
        if publisher == "anthropic":
            self._raw_predict(ex, model, method)
            return
        if method not in ("generateContent", "streamGenerateContent", "countTokens"):
            raise HttpError(400, f"Method {method} is not supported for {model}.")
        if "model" in request.json and method != "countTokens":
            raise HttpError(400, 'Invalid JSON payload received. Unknown name "model": Cannot find field.')
        for i, content in enumerate(request.json.get("contents") or []):
            if isinstance(content, dict) and not content.get("role"):
                raise HttpError(400, f"Please use a valid role: user, model. (contents[{i}].role is empty)")
        if method == "countTokens":
            body = _check_fields(request.json, {"contents", "systemInstruction", "tools", "generationConfig"}, "")
            ex.send_json(self.count(body.get("contents"), model))
            return
        self.generate(ex, model, request.json, method == "streamGenerateContent")

    def _raw_predict(self, ex: Exchange, model: str, method: str) -> None:
        body = dict(ex.request.json)
        if method not in ("rawPredict", "streamRawPredict"):
            raise HttpError(400, f"Method {method} is not supported for Anthropic models.")
        if "model" in body:
            raise HttpError(400, "model: Extra inputs are not permitted (the model is named in the URL)")
        if body.pop("anthropic_version", None) != VERTEX_ANTHROPIC_VERSION:
            raise HttpError(400, f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")
        if bool(body.get("stream")) != (method == "streamRawPredict"):
            raise HttpError(400, f"stream must be {'true' if method == 'streamRawPredict' else 'false'} for {method}")
        request = dataclasses.replace(ex.request, json={**body, "model": model})
        # The Claude fake answers (its body rules, thinking signatures, SSE); errors stay Google-shaped.
        inner = Exchange(self, ex._handler, request, ex.fault)
        self.claude._messages(inner)


def service_account_key(client_email: str, project_id: str, token_uri: str = "") -> tuple[dict[str, Any], Any]:
    """A throwaway service-account key JSON and its public key (RSA 2048, generated per test run)."""
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": _b64url(b"fake-key-id")[:16],
        "private_key": pem,
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
    return info, key.public_key()
