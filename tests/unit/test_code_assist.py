"""Project discovery (loadCodeAssist -> onboardUser) against the fake Code Assist, and the fake itself.

The fake's own rules are pinned here with plain httpx, since the e2e tests trust it to refuse
what the real service refuses (wrong token, wrong project, schema keywords, lost signatures).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from auth.code_assist import STATE_FILE, ProjectDiscovery, ProjectStore, request_headers
from auth.credentials import CredentialError
from auth.google_oauth import GEMINI_CLI_CLIENT_ID, GEMINI_CLI_CLIENT_SECRET, GoogleOAuthCredential, TokenRejected
from core.config import Account, Provider
from providers.gemini_cli import GeminiCli
from tests.fakes.code_assist import VALIDATION_URL, FakeCodeAssist


@pytest.fixture
def fake() -> Iterator[FakeCodeAssist]:
    with FakeCodeAssist() as f:
        yield f


def _discovery(fake: FakeCodeAssist, tmp_path: Path, **kw) -> ProjectDiscovery:
    kw.setdefault("poll_interval", 0.01)
    return ProjectDiscovery(fake.url, "acct", ProjectStore(tmp_path / "state"), **kw)


def _paths(fake: FakeCodeAssist) -> list[str]:
    return [f"{r.method} {r.path.split('/operations/')[0]}" for r in fake.requests]


# -- discovery ----------------------------------------------------------------------------------------


def test_onboarded_account_gets_its_project_from_load_code_assist(fake, tmp_path):
    token = fake.issue_login()["access_token"]
    assert asyncio.run(_discovery(fake, tmp_path)(token)) == fake.project_id
    load = fake.requests[0]
    assert _paths(fake) == ["POST /v1internal:loadCodeAssist"]
    assert load.json == {
        "metadata": {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}
    }
    assert load.headers["user-agent"].startswith("GeminiCLI/") and "x-goog-api-client" in load.headers


def test_onboarding_is_polled_until_done_and_persisted(tmp_path):
    with FakeCodeAssist(mode="onboard", onboard_polls=3) as fake:
        token = fake.issue_login()["access_token"]
        project = asyncio.run(_discovery(fake, tmp_path)(token))
        assert project == fake.project_id
        assert _paths(fake) == [
            "POST /v1internal:loadCodeAssist",
            "POST /v1internal:onboardUser",
            *["GET /v1internal"] * 4,
        ]
        onboard = fake.calls("onboardUser")[0]
        assert onboard["tierId"] == "free-tier" and "cloudaicompanionProject" not in onboard
    state = tmp_path / "state" / STATE_FILE
    assert json.loads(state.read_text())["acct"]["project"] == project
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert ProjectStore(tmp_path / "state").get("acct") == project


def test_onboarding_gives_up_after_its_limit_saying_what_to_do(tmp_path):
    with FakeCodeAssist(mode="onboard", onboard_polls=10**6) as fake:
        token = fake.issue_login()["access_token"]
        started = time.monotonic()
        with pytest.raises(CredentialError) as e:
            asyncio.run(_discovery(fake, tmp_path, poll_interval=0.02, onboard_timeout=0.3)(token))
    assert time.monotonic() - started < 3
    message = str(e.value)
    assert "did not finish within 0.3 s" in message and "acct" in message
    assert "run the Gemini CLI (`gemini`) once" in message and "accounts[].project_id" in message


def test_validation_required_names_the_link(tmp_path):
    with FakeCodeAssist(mode="ineligible") as fake:
        token = fake.issue_login()["access_token"]
        with pytest.raises(CredentialError) as e:
            asyncio.run(_discovery(fake, tmp_path)(token))
        assert fake.calls("onboardUser") == []
    assert "VALIDATION_REQUIRED: Verify your account to continue." in str(e.value)
    assert VALIDATION_URL in str(e.value) and "acct" in str(e.value)


def test_a_refused_token_is_reported_for_refresh(fake, tmp_path):
    with pytest.raises(TokenRejected):
        asyncio.run(_discovery(fake, tmp_path)("ya29.not-issued"))


def test_the_credential_refreshes_once_when_discovery_is_refused(fake, tmp_path):
    data = fake.issue_login()
    fake.revoke(data["access_token"])
    cred = GoogleOAuthCredential(
        "acct", data, path=None, token_url=f"{fake.url}/token", resolve_project=_discovery(fake, tmp_path)
    )
    ctx = asyncio.run(cred.auth())
    assert ctx.extra["project_id"] == fake.project_id and ctx.token != data["access_token"]
    assert fake.refresh_grants == 1 and len(fake.calls("loadCodeAssist")) == 2


def test_the_credential_discovers_once_and_remembers_failures(tmp_path):
    with FakeCodeAssist(mode="ineligible") as fake:
        data = fake.issue_login()
        cred = GoogleOAuthCredential("acct", data, path=None, resolve_project=_discovery(fake, tmp_path))

        async def run():
            for _ in range(3):
                with pytest.raises(CredentialError, match="VALIDATION_REQUIRED"):
                    await cred.auth()
            return await cred.describe()

        described = asyncio.run(run())
        assert len(fake.calls("loadCodeAssist")) == 1  # retried only after a pause, not per request
        assert "VALIDATION_REQUIRED" in described
    with FakeCodeAssist() as fake:
        data = fake.issue_login()
        cred = GoogleOAuthCredential("acct", data, path=None, resolve_project=_discovery(fake, tmp_path))

        async def twice():
            return [await cred.auth() for _ in range(2)]

        assert {c.extra["project_id"] for c in asyncio.run(twice())} == {fake.project_id}
        assert len(fake.calls("loadCodeAssist")) == 1


def test_project_store_is_keyed_by_label_and_tolerates_damage(tmp_path):
    store = ProjectStore(tmp_path)
    store.put("a", "proj-a")
    store.put("b", "proj-b")
    assert (store.get("a"), store.get("b"), store.get("c")) == ("proj-a", "proj-b", None)
    (tmp_path / STATE_FILE).write_text("{broken")
    assert store.get("a") is None
    memory_only = ProjectStore(None)
    memory_only.put("a", "x")
    assert memory_only.get("a") is None


def test_adapter_uses_a_persisted_project_without_discovery(fake, tmp_path):
    ProjectStore(tmp_path).put("g1", "persisted-project")
    creds = tmp_path / "c.json"
    creds.write_text(json.dumps(fake.issue_login()))
    provider = Provider(
        base_url=fake.url, token_url=f"{fake.url}/token", accounts=[Account(label="g1", credentials=creds)]
    )
    cred = GeminiCli().credential(provider, provider.accounts[0], label="g1", state_dir=tmp_path)
    assert asyncio.run(cred.auth()).extra == {"project_id": "persisted-project"}
    assert fake.requests == []


# -- the fake itself -----------------------------------------------------------------------------------


def _generate(
    fake: FakeCodeAssist, token: str, body: dict, method: str = "generateContent", **params: str
) -> httpx2.Response:
    return httpx2.post(
        f"{fake.url}/v1internal:{method}", params=params, json=body, headers=request_headers(token), timeout=5
    )


def _body(fake: FakeCodeAssist, request: dict | None = None, **envelope) -> dict:
    request = request or {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
    return {"model": "gemini-2.5-flash", "project": fake.project_id, "request": request} | envelope


def test_fake_refuses_wrong_tokens_projects_and_fields(fake):
    token = fake.issue_login()["access_token"]
    assert _generate(fake, "ya29.wrong", _body(fake)).status_code == 401
    assert _generate(fake, token, _body(fake, project="")).status_code == 400
    wrong = _generate(fake, token, _body(fake, project="someone-elses"))
    assert wrong.status_code == 403 and wrong.json()["error"]["status"] == "PERMISSION_DENIED"
    inner_model = _body(fake, {"model": "gemini-2.5-flash", "contents": [{"parts": [{"text": "x"}]}]})
    assert "Unknown name \"model\" at 'request'" in _generate(fake, token, inner_model).json()["error"]["message"]
    assert _generate(fake, token, _body(fake, model="gemini-9-ultra")).status_code == 404
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    tools = [{"functionDeclarations": [{"name": "f", "parameters": schema}]}]
    refused = _generate(fake, token, _body(fake, {"contents": [{"parts": [{"text": "x"}]}], "tools": tools}))
    assert refused.status_code == 400 and "additionalProperties" in refused.json()["error"]["message"]


def test_fake_answers_in_the_envelope_and_streams_it_per_event(fake):
    token = fake.issue_login()["access_token"]
    unary = _generate(fake, token, _body(fake)).json()
    assert set(unary) == {"response", "traceId"}
    assert unary["response"]["candidates"][0]["content"]["parts"] == [{"text": "Hello! You said: hi there"}]
    for crlf in (False, True):
        fake.crlf = crlf
        r = _generate(fake, token, _body(fake), "streamGenerateContent", alt="sse")
        assert r.headers["content-type"] == "text/event-stream"
        assert (b"\r\n\r\n" in r.content) is crlf
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert len(events) > 1 and all(set(e) == {"response", "traceId"} for e in events)
        assert events[-1]["response"]["candidates"][0]["finishReason"] == "STOP"


def test_fake_checks_gemini3_signatures_strictly(fake):
    token = fake.issue_login()["access_token"]
    tools = [
        {
            "functionDeclarations": [
                {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
            ]
        }
    ]
    ask = {"contents": [{"role": "user", "parts": [{"text": "weather please"}]}], "tools": tools}
    answer = _generate(fake, token, _body(fake, ask, model="gemini-3-pro-preview")).json()["response"]
    call = answer["candidates"][0]["content"]["parts"][0]
    assert call["thoughtSignature"] in fake.issued_signatures

    def replay(part: dict) -> httpx2.Response:
        contents = [
            *ask["contents"],
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
        ]
        return _generate(fake, token, _body(fake, {"contents": contents, "tools": tools}, model="gemini-3-pro-preview"))

    assert replay(call).status_code == 200
    unsigned = {"functionCall": call["functionCall"]}
    assert "thought_signature" in replay(unsigned).json()["error"]["message"]
    fake.strict_signatures = True
    dummy = unsigned | {"thoughtSignature": "skip_thought_signature_validator"}
    assert replay(dummy).json()["error"]["message"] == "Corrupted thought signature."
    assert replay(call).status_code == 200


def test_fake_token_endpoint(fake):
    data = fake.issue_login()
    form = {"client_id": GEMINI_CLI_CLIENT_ID, "client_secret": GEMINI_CLI_CLIENT_SECRET}
    refreshed = httpx2.post(
        f"{fake.url}/token",
        data=form | {"grant_type": "refresh_token", "refresh_token": data["refresh_token"]},
        timeout=5,
    )
    assert refreshed.status_code == 200 and "refresh_token" not in refreshed.json()
    fake.invalid_grant = True
    refused = httpx2.post(
        f"{fake.url}/token",
        data=form | {"grant_type": "refresh_token", "refresh_token": data["refresh_token"]},
        timeout=5,
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    code = fake.approve(challenge, "http://127.0.0.1:9/oauth2callback")
    grant = form | {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/oauth2callback",
    }
    wrong = httpx2.post(f"{fake.url}/token", data=grant | {"code_verifier": "w" * 50}, timeout=5)
    assert wrong.json()["error"] == "invalid_grant"
    code = fake.approve(challenge, "http://127.0.0.1:9/oauth2callback")
    ok = httpx2.post(f"{fake.url}/token", data=grant | {"code": code, "code_verifier": verifier}, timeout=5)
    assert ok.status_code == 200 and ok.json()["refresh_token"]
    assert (
        httpx2.post(f"{fake.url}/token", data=grant | {"code": code, "code_verifier": verifier}, timeout=5).status_code
        == 400
    )  # single use


def test_fake_counts_tokens(fake):
    token = fake.issue_login()["access_token"]
    body = {
        "request": {
            "model": "models/gemini-2.5-flash",
            "contents": [{"role": "user", "parts": [{"text": "one two three"}]}],
        }
    }
    r = httpx2.post(f"{fake.url}/v1internal:countTokens", json=body, headers=request_headers(token), timeout=5)
    assert r.json() == {"totalTokens": 3}
