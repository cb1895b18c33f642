"""gemini-custom and vertex-ai adapters: error vectors, Vertex URLs per location and model family,
request bodies, and the service-account credential against the fake token endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from auth.credentials import AuthContext, CredentialError
from auth.google_service_account import ServiceAccountCredential, read_service_account
from core.config import Account, Provider
from providers import ADAPTERS, upstream_dialect
from providers.google import GeminiCustom, VertexAI, vertex_host
from tests.fakes.google_api import FakeVertex, service_account_key
from translators import ir

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "google" / "errors.json").read_text("utf-8"))
SA_EMAIL = "unit@vertex-test-project.iam.gserviceaccount.com"
PROJECT = "vertex-test-project"


def _cases():
    for case in VECTORS:
        for provider in case["providers"]:
            yield pytest.param(provider, case, id=f"{provider}: {case['name']}")


@pytest.mark.parametrize(("provider", "case"), list(_cases()))
def test_error_vectors(provider, case):
    failure = ADAPTERS[provider].classify_error(case["status"], json.dumps(case["body"]).encode(), {})
    assert failure.kind == case["kind"]
    if case["retry_after"] is None:
        assert failure.retry_after is None
    else:
        assert failure.retry_after == pytest.approx(case["retry_after"])
    for needle in case.get("message_has", []):
        assert needle in failure.message


def _request(text: str = "hi", stream: bool = False) -> ir.Request:
    return ir.Request(model="m", messages=[ir.Message("user", [ir.TextPart(text)])], max_tokens=64, stream=stream)


VERTEX_AUTH = AuthContext("ya29.token", {"project_id": "p-1", "location": "us-central1"})


@pytest.mark.parametrize(
    ("location", "model", "stream", "url"),
    [
        (
            "us-central1",
            "gemini-2.5-pro",
            False,
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p-1/locations/us-central1/publishers/google/"
            "models/gemini-2.5-pro:generateContent",
        ),
        (
            "europe-west4",
            "gemini-2.5-flash",
            True,
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p-1/locations/europe-west4/publishers/google/"
            "models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            "global",
            "gemini-3-pro-preview",
            False,
            "https://aiplatform.googleapis.com/v1/projects/p-1/locations/global/publishers/google/"
            "models/gemini-3-pro-preview:generateContent",
        ),
        (
            "us-east5",
            "claude-sonnet-4-5@20250929",
            False,
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p-1/locations/us-east5/publishers/anthropic/"
            "models/claude-sonnet-4-5@20250929:rawPredict",
        ),
        (
            "global",
            "claude-haiku-4-5@20251001",
            True,
            "https://aiplatform.googleapis.com/v1/projects/p-1/locations/global/publishers/anthropic/"
            "models/claude-haiku-4-5@20251001:streamRawPredict",
        ),
    ],
)
def test_vertex_url_per_location_and_model_family(location, model, stream, url):
    adapter = VertexAI()
    auth = AuthContext("ya29.token", {"project_id": "p-1", "location": location})
    body = adapter.render(Provider(), _request(stream=stream), model)
    up = adapter.build(Provider(), auth, body, request=_request(), model=model, stream=stream, client_headers={})
    assert up.url == url
    assert up.headers["authorization"] == "Bearer ya29.token"


def test_vertex_host():
    assert vertex_host("global") == "https://aiplatform.googleapis.com"
    assert vertex_host("asia-northeast1") == "https://asia-northeast1-aiplatform.googleapis.com"


def test_vertex_claude_body_rules():
    adapter = VertexAI()
    model = "claude-sonnet-4-5@20250929"
    assert upstream_dialect(adapter, model) == "claude" and upstream_dialect(adapter, "gemini-2.5-pro") == "gemini"
    for stream in (False, True):
        body = adapter.render(Provider(), _request(stream=stream), model)
        assert body["model"] == model  # the Claude codec names it; build() moves it to the path
        headers = {"anthropic-beta": "context-1m-2025-08-07"}
        up = adapter.build(
            Provider(), VERTEX_AUTH, body, request=_request(), model=model, stream=stream, client_headers=headers
        )
        sent = json.loads(up.body)
        assert "model" not in sent and sent["anthropic_version"] == "vertex-2023-10-16"
        assert sent.get("stream", False) is stream
        assert up.headers["anthropic-beta"] == "context-1m-2025-08-07"


def test_gemini_custom_request_key_in_header_model_in_path():
    adapter = GeminiCustom()
    provider = Provider(base_url="https://generativelanguage.googleapis.com/")
    body = {"model": "models/x", "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    up = adapter.build(
        provider, AuthContext("AIza-key-1234"), body, request=_request(), model="models/gemini-2.5-pro",
        stream=True, client_headers={},
    )  # fmt: skip
    assert up.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    assert up.headers["x-goog-api-key"] == "AIza-key-1234" and "AIza" not in up.url
    assert json.loads(up.body) == {"contents": body["contents"]}


def test_gemini_custom_models_request_and_page():
    url, headers = GeminiCustom().models_request(Provider(), AuthContext("AIza-key-1234"))
    assert url == "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1000"
    assert headers["x-goog-api-key"] == "AIza-key-1234" and "AIza" not in url
    names = GeminiCustom.parse_models(
        {
            "models": [
                {"name": "models/gemini-2.5-pro", "supportedGenerationMethods": ["generateContent", "countTokens"]},
                {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]},
            ],
            "nextPageToken": "abc",
        }
    )
    assert names == ["gemini-2.5-pro"]
    assert GeminiCustom.parse_models({"models": []}) == [] and GeminiCustom.parse_models([]) == []


# -- service account -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sa_fake():
    info, public_key = service_account_key(SA_EMAIL, PROJECT)
    with FakeVertex(public_key, client_email=SA_EMAIL, project_id=PROJECT, token_lifetime=3600) as fake:
        yield fake, info


def test_service_account_token_single_flight_and_reused(sa_fake):
    fake, info = sa_fake
    cred = ServiceAccountCredential("sa", info, token_url=fake.token_url, location="global")

    async def many():
        return await asyncio.gather(*(cred.auth() for _ in range(8)))

    before = fake.token_grants
    contexts = asyncio.run(many())
    assert fake.token_grants == before + 1
    assert len({c.token for c in contexts}) == 1
    assert contexts[0].extra == {"project_id": PROJECT, "location": "global"}
    assert cred.expires_at is not None and cred.expires_at > 0


def test_service_account_refreshes_ahead_of_expiry(sa_fake):
    fake, info = sa_fake
    fake.token_lifetime = 60  # shorter than refresh_ahead: refreshed at half its life, not every request
    try:
        cred = ServiceAccountCredential("sa", info, token_url=fake.token_url, refresh_ahead=300)

        async def twice():
            first = await cred.auth()
            second = await cred.auth()
            return first, second

        before = fake.token_grants
        first, second = asyncio.run(twice())
        assert first.token == second.token and fake.token_grants == before + 1
    finally:
        fake.token_lifetime = 3600


def test_service_account_refused_by_the_token_endpoint(sa_fake):
    fake, _ = sa_fake
    other, _ = service_account_key(SA_EMAIL, PROJECT)  # another key pair: the signature does not verify
    cred = ServiceAccountCredential("sa", other, token_url=fake.token_url)
    with pytest.raises(CredentialError, match="Invalid JWT Signature"):
        asyncio.run(cred.auth())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ('{"type": "authorized_user"}', "is not a service-account key"),
        ('{"type": "service_account", "client_email": "a@b"}', "lacks private_key, project_id"),
    ],
)
def test_service_account_file_errors(tmp_path, content, message):
    path = tmp_path / "sa.json"
    path.write_text(content)
    with pytest.raises(CredentialError, match=message):
        read_service_account(path)
    with pytest.raises(CredentialError, match="no service-account key file"):
        read_service_account(tmp_path / "missing.json")


def test_vertex_account_needs_a_key_file():
    with pytest.raises(CredentialError, match="needs credentials"):
        VertexAI().credential(Provider(), Account(label="x"), label="x")
