"""gemini-custom (AI Studio key) and vertex-ai (service account; Gemini and Claude models) end to end:
the real gateway (mitmdump), the official SDKs, strict fake Google upstreams on loopback.

The Gemini API fake refuses a key in the URL, a `model` in the body and Gemini 3 calls whose thought
signature it did not issue; the Vertex fake only takes bearer tokens from its token endpoint, which
verifies the service account's JWT with the public half of a key generated for this run, and checks
the path (project, location, publisher) and the rawPredict body rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from tests.conftest import CLIENT_KEY
from tests.drivers import DRIVERS, ChatDriver, ClaudeDriver, GeminiDriver
from tests.fakes.google_api import (
    FakeGeminiApi,
    FakeVertex,
    daily_quota_error,
    permission_denied_error,
    rate_limit_error,
    service_account_key,
)
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

GEMINI_KEY = "AIzaSy-fake-gemini-key-0001"
GEMINI_KEY_2 = "AIzaSy-fake-gemini-key-0002"
SA_EMAIL = "gateway@vertex-test-project.iam.gserviceaccount.com"
PROJECT = "vertex-test-project"
CLAUDE_ON_VERTEX = "claude-sonnet-4-5@20250929"
CLIENTS = list(DRIVERS)
# (provider, upstream model): Gemini 3 on AI Studio proves thought signatures round-trip.
TARGETS = {
    "aistudio-gemini3": ("gemini-custom", "gemini-3-pro-preview"),
    "vertex-gemini": ("vertex-ai", "gemini-2.5-flash"),
    "vertex-claude": ("vertex-ai", CLAUDE_ON_VERTEX),
}


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: pytest.TempPathFactory):
    # The key file keeps Google's real token_uri: the provider's token_url must take precedence.
    info, public_key = service_account_key(SA_EMAIL, PROJECT, "https://oauth2.googleapis.com/token")
    path = tmp_path_factory.mktemp("sa") / "service-account.json"
    path.write_text(json.dumps(info), encoding="utf-8")
    return path, public_key


@pytest.fixture(scope="module")
def api_fake() -> Iterator[FakeGeminiApi]:
    with FakeGeminiApi(GEMINI_KEY, GEMINI_KEY_2, split_writes=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def vertex_fake(service_account) -> Iterator[FakeVertex]:
    with FakeVertex(service_account[1], client_email=SA_EMAIL, project_id=PROJECT, split_writes=True) as fake:
        yield fake


def google_config(api_fake: FakeGeminiApi, vertex_fake: FakeVertex, sa_path: Path, **extra) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": "gemini-custom",
        "providers": {
            "gemini-custom": {
                "base_url": api_fake.url,
                "accounts": [{"label": "k1", "api_key": GEMINI_KEY}],
            },
            "vertex-ai": {
                "base_url": vertex_fake.url,
                "token_url": vertex_fake.token_url,
                "accounts": [{"label": "sa1", "credentials": str(sa_path), "location": "us-central1"}],
            },
        },
        "models": {"gem-alias": "gemini-custom:gemini-2.5-flash", "vtx-claude": f"vertex-ai:{CLAUDE_ON_VERTEX}"},
        "images": {"allow_private_addresses": True},
        **extra,
    }


@pytest.fixture(scope="module")
def gw(api_fake, vertex_fake, service_account, tmp_path_factory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("google-gw"), google_config(api_fake, vertex_fake, service_account[0])
    )
    listed_gemini_models(gateway)
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def _fresh_fakes(request: pytest.FixtureRequest) -> None:
    for name in ("api_fake", "vertex_fake"):
        if name in request.fixturenames:
            fake = request.getfixturevalue(name)
            fake.requests.clear()
            fake.faults.clear()


def generate_requests(fake) -> list:
    return [r for r in fake.requests if r.method == "POST" and r.path != "/token" and "countTokens" not in r.path]


# -- every client dialect x stream/unary x text / tools / images, per target ----------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_text(gw, api_fake, vertex_fake, target, client, stream):
    provider, model = TARGETS[target]
    driver = DRIVERS[client](gw.url, provider, model)
    assert driver.text("unicode please", stream) == "héllo wörld — 你好 🌍"
    assert driver.text("hi there", stream) == "Hello! You said: hi there"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_tool_round_trip(gw, api_fake, vertex_fake, target, client, stream):
    provider, model = TARGETS[target]
    calls, answer = DRIVERS[client](gw.url, provider, model).tool_round_trip(stream)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_image(gw, api_fake, vertex_fake, target, client, stream):
    from tests.drivers import PNG

    provider, model = TARGETS[target]
    assert DRIVERS[client](gw.url, provider, model).image(stream) == f"I see 1 image(s): image/png {len(PNG)} bytes"


# -- wire facts -----------------------------------------------------------------------------------


def test_gemini_client_body_passes_through_with_the_key_only_in_the_header(gw, api_fake):
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 77, "seed": 5},
    }
    for path in (":generateContent", ":streamGenerateContent?alt=sse"):
        r = httpx2.post(
            f"{gw.url}/gemini-custom/v1beta/models/gemini-2.5-flash{path}",
            json=body,
            headers={"x-goog-api-key": CLIENT_KEY},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        sent = generate_requests(api_fake)[-1]
        assert sent.json == body  # nothing added, dropped or reordered in meaning
        assert sent.headers["x-goog-api-key"] == GEMINI_KEY
        assert "key" not in sent.query and GEMINI_KEY not in sent.path
        if "sse" in path:
            assert sent.query == {"alt": "sse"}
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.text.startswith("data: {")


def test_gemini_client_json_array_stream_mode_is_kept(gw, api_fake):
    """Without ?alt=sse a Gemini client gets the JSON-array stream it asked for."""
    r = httpx2.post(
        f"{gw.url}/gemini-custom/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]},
        headers={"x-goog-api-key": CLIENT_KEY},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    chunks = json.loads(r.text)
    assert isinstance(chunks, list) and len(chunks) > 1
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == "Hello! You said: hi there"


def test_vertex_claude_body_has_anthropic_version_and_no_model(gw, vertex_fake):
    driver = ClaudeDriver(gw.url, "vertex-ai", CLAUDE_ON_VERTEX)
    for stream in (False, True):
        assert driver.text("hi there", stream) == "Hello! You said: hi there"
        sent = generate_requests(vertex_fake)[-1]
        method = "streamRawPredict" if stream else "rawPredict"
        assert sent.path == (
            f"/v1/projects/{PROJECT}/locations/us-central1/publishers/anthropic/models/{CLAUDE_ON_VERTEX}:{method}"
        )
        assert sent.json["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.json
        assert sent.headers["authorization"].startswith("Bearer ya29.c.fake-")


def test_vertex_gemini_path_names_project_and_location(gw, vertex_fake):
    ChatDriver(gw.url, "vertex-ai", "gemini-2.5-flash").text("hi there", True)
    sent = generate_requests(vertex_fake)[-1]
    assert sent.path == (
        f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    )
    assert sent.query == {"alt": "sse"}


def test_aliases_route_to_both_providers(gw, api_fake, vertex_fake):
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    for alias, fake in (("gem-alias", api_fake), ("vtx-claude", vertex_fake)):
        r = client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "hi there"}])
        assert r.choices[0].message.content == "Hello! You said: hi there"
        assert r.model == alias
        assert generate_requests(fake), alias


def test_service_account_token_is_fetched_once_and_reused(gw, vertex_fake):
    driver = ChatDriver(gw.url, "vertex-ai", "gemini-2.5-flash")
    grants = vertex_fake.token_grants
    for _ in range(3):
        driver.text("hi there", False)
    assert vertex_fake.token_grants == grants
    assert grants >= 1


def test_google_genai_vertex_mode_through_the_gateway(gw, api_fake, vertex_fake):
    """google-genai in Vertex mode (project, location, OAuth credentials) pointed at the gateway: its
    bearer token is the client key; the path's project/location are the SDK's, the account's are used."""
    for provider, fake in (("vertex-ai", vertex_fake), ("gemini-custom", api_fake)):
        client = genai.Client(
            vertexai=True,
            project="client-side-project",
            location="europe-west4",
            credentials=Credentials(token=CLIENT_KEY),
            http_options=types.HttpOptions(base_url=f"{gw.url}/{provider}/", retry_options=None),
        )
        r = client.models.generate_content(model="gemini-2.5-flash", contents="hi there")
        assert r.text == "Hello! You said: hi there"
        text = "".join(
            c.text or "" for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        )
        assert text == "Hello! You said: hi"
        assert generate_requests(fake)


# -- countTokens and models --------------------------------------------------------------------------


def test_count_tokens_is_the_upstream_count(gw, api_fake, vertex_fake):
    gemini = GeminiDriver(gw.url, "gemini-custom", "gemini-2.5-flash").client
    words = "one two three four five six seven eight nine ten eleven twelve"
    result = gemini.models.count_tokens(model="gemini-2.5-flash", contents=words)
    calls = [r for r in api_fake.requests if r.path.endswith(":countTokens")]
    assert len(calls) == 1 and calls[0].headers["x-goog-api-key"] == GEMINI_KEY
    assert result.total_tokens == 12  # the fake counts words; the local estimate would not say 12

    claude = ClaudeDriver(gw.url, "vertex-ai", "gemini-2.5-flash").client
    counted = claude.messages.count_tokens(model="gemini-2.5-flash", messages=[{"role": "user", "content": words}])
    assert counted.input_tokens == 12
    assert any(r.path.endswith("/models/gemini-2.5-flash:countTokens") for r in vertex_fake.requests)


def listed_gemini_models(gateway: GatewayProcess) -> list[str]:
    """The gateway's gemini-custom list once it has read the API's (its discovery runs after start)."""
    deadline = time.monotonic() + 10
    while True:
        r = httpx2.get(f"{gateway.url}/gemini-custom/v1beta/models", headers={"x-goog-api-key": CLIENT_KEY}, timeout=10)
        names = [m["name"] for m in r.json()["models"]]
        if "models/gemini-2.0-flash-001" in names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def test_models_are_listed_from_the_api_and_the_builtin_vertex_list(gw, api_fake):
    names = listed_gemini_models(gw)
    assert "models/gemini-2.0-flash-001" in names  # only in the fake's list, on its last page
    assert "models/text-embedding-004" not in names  # cannot generate content
    assert "models/gemini-3.5-flash" not in names  # built-in default, replaced by the real list
    client = openai.OpenAI(base_url=f"{gw.url}/vertex-ai/v1", api_key=CLIENT_KEY, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert CLAUDE_ON_VERTEX in ids and "gemini-2.5-pro" in ids


# -- errors, cooldowns, account state, failover (a gateway of their own) -----------------------------


@pytest.fixture(scope="module")
def err_gw(api_fake, vertex_fake, service_account, tmp_path_factory) -> Iterator[GatewayProcess]:
    config = google_config(
        api_fake,
        vertex_fake,
        service_account[0],
        retry={"max_wait": 0},
        fallback={"providers": {"gemini-custom": ["vertex-ai"]}},
    )
    config["providers"]["gemini-custom"]["accounts"].append({"label": "k2", "api_key": GEMINI_KEY_2})
    config["providers"]["gemini-custom"]["strategy"] = "fill-first"
    gateway = start_gateway(tmp_path_factory.mktemp("google-err"), config)
    listed_gemini_models(gateway)  # model discovery done: it must not meet the tests' scripted faults
    yield gateway
    gateway.stop()


def pool_of(gateway: GatewayProcess, provider: str) -> dict:
    r = httpx2.get(f"{gateway.url}/pool", headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
    return {a["label"]: a for a in r.json()["providers"][provider]}


INVALID = {
    "error": {
        "code": 400,
        "message": "Unable to submit request because it has an empty text parameter.",
        "status": "INVALID_ARGUMENT",
    }
}


@pytest.mark.parametrize("client", CLIENTS)
def test_invalid_argument_passes_through_in_the_callers_dialect(err_gw, api_fake, client):
    api_fake.faults.append(Fault(400, INVALID))
    driver = DRIVERS[client](err_gw.url, "gemini-custom", "gemini-2.5-flash")
    with pytest.raises(Exception) as caught:
        driver.text("hi there", False)
    err = caught.value
    status = getattr(err, "status_code", None) or getattr(err, "code", None)
    assert status == 400
    assert "Unable to submit request because it has an empty text parameter." in str(err)
    assert isinstance(err, openai.BadRequestError | anthropic.BadRequestError | genai_errors.ClientError)
    assert len(generate_requests(api_fake)) == 1  # the request's fault: no other account tried


def test_a_key_echoed_by_google_never_reaches_the_client(err_gw, api_fake):
    """Google echoing the key it got (k1: fill-first) is scrubbed from what the client sees."""
    echo = {
        "error": {
            "code": 400,
            "message": f"bad request for {GEMINI_KEY}",
            "status": "INVALID_ARGUMENT",
        }
    }
    gemini = GeminiDriver(err_gw.url, "gemini-custom", "gemini-2.5-flash").client
    api_fake.faults.append(Fault(400, echo))
    with pytest.raises(genai_errors.ClientError) as generating:
        gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
    api_fake.faults.append(Fault(400, echo))
    with pytest.raises(genai_errors.ClientError) as counting:
        gemini.models.count_tokens(model="gemini-2.5-flash", contents="hi")
    for caught in (generating, counting):
        text = str(caught.value)
        assert "bad request for" in text and "[REDACTED]" in text
        assert GEMINI_KEY not in text
    assert {r.headers["x-goog-api-key"] for r in api_fake.requests if r.method == "POST"} == {GEMINI_KEY}


@pytest.mark.parametrize(
    ("provider", "model", "needle"),
    [
        ("gemini-custom", "gemini-9-ultra", "models/gemini-9-ultra is not found"),
        ("vertex-ai", "gemini-9-ultra", "publishers/google/models/gemini-9-ultra"),
        ("vertex-ai", "claude-nonexistent-1", "publishers/anthropic/models/claude-nonexistent-1"),
    ],
)
def test_unknown_model_is_a_404_naming_it(err_gw, provider, model, needle):
    client = anthropic.Anthropic(base_url=f"{err_gw.url}/{provider}", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert needle in str(caught.value)


def test_rate_limit_retry_info_cools_the_account_for_that_long(err_gw, api_fake, vertex_fake):
    """Both keys answer 429 with RetryInfo 7s: each is cooled for that model for 7 s, and the
    fallback provider (Vertex) serves the request meanwhile."""
    model = "gemini-2.5-pro"
    api_fake.faults.extend([Fault(429, rate_limit_error("7s")), Fault(429, rate_limit_error("7s"))])
    assert ChatDriver(err_gw.url, "gemini-custom", model).text("hi there", False) == "Hello! You said: hi there"
    assert len(generate_requests(api_fake)) == 2 and len(generate_requests(vertex_fake)) == 1
    accounts = pool_of(err_gw, "gemini-custom")
    for label in ("k1", "k2"):
        left = accounts[label]["cooldown_seconds"][model]
        assert 5 <= left <= 7.5, accounts[label]
    # While they cool, the model goes straight to the fallback; another model is not cooled.
    ChatDriver(err_gw.url, "gemini-custom", model).text("hi there", False)
    assert len(generate_requests(api_fake)) == 2
    ChatDriver(err_gw.url, "gemini-custom", "gemini-2.5-flash").text("hi there", False)
    assert len(generate_requests(api_fake)) == 3


def test_daily_quota_reset_delay_is_the_cooldown(err_gw, api_fake):
    model = "gemini-2.5-flash-lite"
    api_fake.faults.extend([Fault(429, daily_quota_error("3h2m1s"))] * 2)
    ChatDriver(err_gw.url, "gemini-custom", model).text("hi there", False)  # served by the fallback
    for label in ("k1", "k2"):
        left = pool_of(err_gw, "gemini-custom")[label]["cooldown_seconds"][model]
        assert 3 * 3600 < left <= 3 * 3600 + 121 + 5


def test_permission_denied_disables_the_account_and_fails_over(err_gw, api_fake):
    api_fake.faults.append(Fault(403, permission_denied_error()))
    assert ChatDriver(err_gw.url, "gemini-custom", "gemini-3-flash-preview").text("hi there", False)
    sent = generate_requests(api_fake)
    assert [r.headers["x-goog-api-key"] for r in sent] == [GEMINI_KEY, GEMINI_KEY_2]
    k1 = pool_of(err_gw, "gemini-custom")["k1"]
    assert k1["state"] == "disabled"
    disabled = k1["reason"]
    assert "SERVICE_DISABLED" in disabled and "has not been used in project" in disabled
    assert GEMINI_KEY not in disabled


def test_fallback_from_the_api_key_to_vertex(err_gw, api_fake, vertex_fake):
    """k1 is disabled by now (the 403 test); k2 fails with a 503: Vertex serves the same model."""
    api_fake.faults.append(Fault(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}))
    driver = GeminiDriver(err_gw.url, "gemini-custom", "gemini-2.5-flash")
    for stream in (False, True):
        assert driver.text("hi there", stream) == "Hello! You said: hi there"
    assert [r.headers["x-goog-api-key"] for r in generate_requests(api_fake)] == [GEMINI_KEY_2]
    assert len(generate_requests(vertex_fake)) == 2


def test_vertex_refused_token_is_refreshed_once(err_gw, vertex_fake):
    driver = ChatDriver(err_gw.url, "vertex-ai", "gemini-2.5-flash")
    driver.text("hi there", False)
    grants = vertex_fake.token_grants
    vertex_fake.revoke_all()
    for stream in (False, True):
        assert driver.text("hi there", stream) == "Hello! You said: hi there"
        vertex_fake.revoke_all()
    assert vertex_fake.token_grants == grants + 2
