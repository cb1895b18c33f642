"""gemini-cli-oauth end to end: the real gateway (mitmdump), the official SDKs, a fake Code Assist.

The fake speaks Code Assist's envelope and Google's token endpoint on loopback and is strict: it
refuses tokens it did not issue (or that expired), a missing or wrong project, schema keywords
Gemini refuses, and -- for gemini-3 -- any functionCall whose thoughtSignature is not one it
issued, so a lost signature fails the tool round trips. The login command runs as a subprocess;
the test plays the browser.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from google.genai import types

from auth.login_gemini import account_email
from tests.conftest import CLIENT_KEY
from tests.drivers import DRIVERS, MODEL, PNG, WEATHER_SCHEMA, ChatDriver, ClaudeDriver, GeminiDriver
from tests.e2e.test_matrix import thinking_of
from tests.fakes.code_assist import (
    EMAIL,
    VALIDATION_URL,
    FakeCodeAssist,
    quota_exhausted_error,
    rate_limit_error,
)
from tests.fakes.server import Fault
from tests.gateway import REPO, GatewayProcess, start_gateway

PID = "gemini-cli-oauth"
GEMINI3 = "gemini-3-pro-preview"
CLIENTS = list(DRIVERS)


def write_login(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o644)
    return path


def gateway_config(fake: FakeCodeAssist, creds: Path, account: dict | None = None, **provider) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": PID,
        "providers": {
            PID: {
                "base_url": fake.url,
                "token_url": f"{fake.url}/token",
                "accounts": [{"label": "g1", "credentials": str(creds), **(account or {})}],
                **provider,
            }
        },
        "models": {MODEL: f"{PID}:{GEMINI3}"},
    }


def generate_calls(fake: FakeCodeAssist) -> list:
    return [r for r in fake.requests if r.path.startswith("/v1internal:") and "enerateContent" in r.path]


@pytest.fixture(scope="module")
def ca_fake() -> Iterator[FakeCodeAssist]:
    with FakeCodeAssist(strict_signatures=True, crlf=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def ca_gateway(ca_fake: FakeCodeAssist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("gemini-cli")
    creds = write_login(workdir / "home" / "oauth_creds.json", ca_fake.issue_login())
    gw = start_gateway(workdir / "gw", gateway_config(ca_fake, creds))
    yield gw
    gw.stop()


@pytest.fixture
def fake(ca_fake: FakeCodeAssist) -> FakeCodeAssist:
    ca_fake.clear()
    return ca_fake


def start(tmp_path: Path, fake: FakeCodeAssist, creds: Path, **provider) -> GatewayProcess:
    return start_gateway(tmp_path / "gw", gateway_config(fake, creds, **provider))


def configured_project(fake: FakeCodeAssist) -> dict:
    """An account whose project is in the config: no discovery, the first upstream call generates."""
    return {"project_id": fake.project_id}


# -- the four client dialects ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_text(ca_gateway, fake, client, stream):
    driver = DRIVERS[client](ca_gateway.url, PID)
    assert driver.text("unicode please", stream) == "héllo wörld — 你好 🌍"
    assert driver.text("hi there", stream) == "Hello! You said: hi there"
    sent = generate_calls(fake)[-1]
    assert sent.path == ("/v1internal:streamGenerateContent" if stream else "/v1internal:generateContent")
    assert sent.query == ({"alt": "sse"} if stream else {})
    assert sent.headers["user-agent"].startswith(f"GeminiCLI/0.31.0/{GEMINI3} (")
    assert (sent.json["model"], sent.json["project"]) == (GEMINI3, fake.project_id)
    assert "model" not in sent.json["request"]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_tool_round_trip_carries_the_signature(ca_gateway, fake, client, stream):
    driver = DRIVERS[client](ca_gateway.url, PID)
    calls, answer = driver.tool_round_trip(stream)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"
    replayed = generate_calls(fake)[-1].json["request"]["contents"][1]
    assert replayed["role"] == "model"
    assert replayed["parts"][0]["thoughtSignature"] in fake.issued_signatures


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_image(ca_gateway, fake, client, stream):
    driver = DRIVERS[client](ca_gateway.url, PID)
    assert driver.image(stream) == f"I see 1 image(s): image/png {len(PNG)} bytes"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_thinking_reaches_the_client(ca_gateway, fake, client, stream):
    thinking, text = thinking_of(client, ca_gateway.url, PID, stream)
    assert thinking == "Let me think about this."
    assert text == "Hello! You said: hi there"
    config = generate_calls(fake)[-1].json["request"]["generationConfig"]["thinkingConfig"]
    assert config["includeThoughts"] is True and "thinkingLevel" in config


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_claude_thinking_signature_round_trip(ca_gateway, fake, stream):
    client = ClaudeDriver(ca_gateway.url, PID).client
    kw = {
        "model": MODEL,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}],
    }
    messages: list = [{"role": "user", "content": "weather please"}]

    def ask():
        if not stream:
            return client.messages.create(**kw, messages=messages)
        with client.messages.stream(**kw, messages=messages) as s:
            return s.get_final_message()

    first = ask()
    thinking = [b for b in first.content if b.type == "thinking"]
    uses = [b for b in first.content if b.type == "tool_use"]
    assert thinking and thinking[0].thinking == "Let me think about this." and thinking[0].signature
    assert [u.input for u in uses] == [{"city": "Paris"}]
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    result = {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny"}
    messages.append({"role": "user", "content": [result]})
    final = ask()
    assert "".join(b.text for b in final.content if b.type == "text") == "Tool results: Sunny"
    model_turn = generate_calls(fake)[-1].json["request"]["contents"][1]
    call = next(p for p in model_turn["parts"] if "functionCall" in p)
    assert call["thoughtSignature"] in fake.issued_signatures


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_gemini_thinking_signature_round_trip(ca_gateway, fake, stream):
    driver = GeminiDriver(ca_gateway.url, PID)
    decl = types.FunctionDeclaration(name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[decl])],
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=2048),
    )
    contents = [types.Content(role="user", parts=[types.Part(text="weather please")])]
    _, calls, model_content = driver.ask(contents, stream, config)
    assert [dict(c.args) for c in calls] == [{"city": "Paris"}]
    assert any(p.thought and p.thought_signature for p in model_content.parts)
    contents += [
        model_content,
        types.Content(
            role="user", parts=[types.Part.from_function_response(name="get_weather", response={"result": "Sunny"})]
        ),
    ]
    assert driver.ask(contents, stream, config)[0] == "Tool results: Sunny"
    model_turn = generate_calls(fake)[-1].json["request"]["contents"][1]
    call = next(p for p in model_turn["parts"] if "functionCall" in p)
    assert call["thoughtSignature"] in fake.issued_signatures


def test_unknown_model_is_passed_through_not_replaced(ca_gateway, fake):
    client = ChatDriver(ca_gateway.url, PID).client
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gemini-9-ultra", messages=[{"role": "user", "content": "hi"}])
    assert "gemini-9-ultra" in str(e.value)
    assert generate_calls(fake)[-1].json["model"] == "gemini-9-ultra"


def test_array_wrapped_stream_error_keeps_the_upstream_message(ca_gateway, fake):
    message = "Request contains an invalid argument: oops."
    body = [{"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}]
    fake.faults.append(Fault(status=400, body=json.dumps(body).encode()))
    client = ClaudeDriver(ca_gateway.url, PID).client
    with pytest.raises(anthropic.BadRequestError) as e:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    assert message in str(e.value)


def test_models_are_listed(ca_gateway):
    listed = {m.id for m in ChatDriver(ca_gateway.url, PID).client.models.list()}
    assert {"gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview", "gemini-3-flash-preview"} <= listed


# -- tokens -------------------------------------------------------------------------------------------------


def test_expired_token_is_refreshed_once_under_20_concurrent_requests(tmp_path):
    with FakeCodeAssist() as fake:
        data = fake.issue_login(expired=True) | {"gemini_cli_field": {"kept": True}}
        creds = write_login(tmp_path / "home" / "oauth_creds.json", data)
        inode = creds.stat().st_ino
        fake.token_delay = 0.3
        gw = start(tmp_path, fake, creds)
        try:
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda i: ChatDriver(gw.url, PID).text(f"hi {i}", False), range(20)))
        finally:
            gw.stop()
        assert answers == [f"Hello! You said: hi {i}" for i in range(20)]
        assert fake.refresh_grants == 1
        used = {r.headers["authorization"] for r in generate_calls(fake)}
        saved = json.loads(creds.read_text())
        assert used == {f"Bearer {saved['access_token']}"} and saved["access_token"] != data["access_token"]
        assert saved["refresh_token"] == data["refresh_token"] and saved["gemini_cli_field"] == {"kept": True}
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and creds.stat().st_ino != inode
        assert [p.name for p in creds.parent.iterdir()] == ["oauth_creds.json"]


def test_refused_refresh_is_a_clear_error_and_marks_the_account(tmp_path):
    with FakeCodeAssist() as fake:
        creds = write_login(tmp_path / "home" / "work.json", fake.issue_login(expired=True))
        before = creds.read_bytes()
        fake.invalid_grant = True
        gw = start(tmp_path, fake, creds)
        try:
            client = ClaudeDriver(gw.url, PID).client
            for _ in range(2):
                with pytest.raises(anthropic.APIStatusError) as e:
                    client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
                assert e.value.status_code == 503
                assert f"log in again: python -m auth login gemini --out {creds}" in str(e.value)
                assert "invalid_grant" in str(e.value)
            r = httpx2.post(
                f"{gw.url}/{PID}/v1beta/models/{MODEL}:generateContent",
                headers={"x-goog-api-key": CLIENT_KEY},
                json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                timeout=30,
            )
            assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"
            assert "log in again" in r.json()["error"]["message"]
            assert httpx2.get(f"{gw.url}/health", timeout=10).json()["status"] == "ok"
            assert gw.proc.poll() is None
        finally:
            gw.stop()
        assert fake.refresh_grants == 1  # marked: never retried in a loop
        assert generate_calls(fake) == []
        assert creds.read_bytes() == before


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_upstream_401_refreshes_once_and_succeeds(tmp_path, stream):
    with FakeCodeAssist() as fake:
        data = fake.issue_login()
        creds = write_login(tmp_path / "home" / "oauth_creds.json", data)
        gw = start(tmp_path, fake, creds, account=configured_project(fake))
        try:
            fake.revoke(data["access_token"])
            assert ChatDriver(gw.url, PID).text("hi there", stream) == "Hello! You said: hi there"
        finally:
            gw.stop()
        assert fake.refresh_grants == 1
        tokens = [r.headers["authorization"] for r in generate_calls(fake)]
        new = json.loads(creds.read_text())["access_token"]
        assert tokens == [f"Bearer {data['access_token']}", f"Bearer {new}"]


# -- project discovery ----------------------------------------------------------------------------------------


def test_project_is_discovered_by_onboarding(tmp_path):
    with FakeCodeAssist(mode="onboard", onboard_polls=2) as fake:
        creds = write_login(tmp_path / "home" / "oauth_creds.json", fake.issue_login())
        gw = start(tmp_path, fake, creds, options={"onboard_poll_interval": 0.05})
        try:
            driver = ChatDriver(gw.url, PID)
            assert driver.text("hi there", True) == "Hello! You said: hi there"
            assert driver.text("again", False) == "Hello! You said: again"
        finally:
            gw.stop()
        steps = [r.path.split("/operations/")[0] for r in fake.requests]
        assert steps == [
            "/v1internal:loadCodeAssist",
            "/v1internal:onboardUser",
            "/v1internal",
            "/v1internal",
            "/v1internal",
            "/v1internal:streamGenerateContent",
            "/v1internal:generateContent",
        ]
        assert {r.json["project"] for r in generate_calls(fake)} == {fake.project_id}


def test_an_account_google_wants_verified_gets_the_link(tmp_path):
    with FakeCodeAssist(mode="ineligible") as fake:
        creds = write_login(tmp_path / "home" / "oauth_creds.json", fake.issue_login())
        gw = start(tmp_path, fake, creds)
        try:
            with pytest.raises(openai.APIStatusError) as e:
                ChatDriver(gw.url, PID).text("hi", False)
        finally:
            gw.stop()
    assert e.value.status_code == 503
    assert VALIDATION_URL in str(e.value) and "VALIDATION_REQUIRED" in str(e.value)


# -- rate limits and quota ------------------------------------------------------------------------------------


def test_rate_limit_delay_and_spent_quota_reach_the_pool(tmp_path):
    with FakeCodeAssist() as fake:
        creds = write_login(tmp_path / "home" / "oauth_creds.json", fake.issue_login())
        gw = start(tmp_path, fake, creds, account=configured_project(fake))
        try:
            driver = ChatDriver(gw.url, PID)
            fake.faults.append(Fault(status=429, body=rate_limit_error("1s")))
            started = time.monotonic()
            assert driver.text("hi there", False) == "Hello! You said: hi there"
            assert time.monotonic() - started >= 0.9  # the gateway waited out RetryInfo's delay, then resent
            assert len(generate_calls(fake)) == 2
            fake.faults.append(Fault(status=429, body=quota_exhausted_error("4h30m")))
            with pytest.raises(openai.RateLimitError) as e:
                driver.text("hi there", False)
            assert "Your quota will reset after 4h30m" in str(e.value)
            with pytest.raises(openai.RateLimitError) as e:
                driver.text("hi there", False)
            assert int(e.value.response.headers["retry-after"]) > 4 * 3600  # cooling until the quota resets
            assert len(generate_calls(fake)) == 3  # the exhausted account was not asked again
        finally:
            gw.stop()


def test_first_answer_when_every_account_is_rate_limited_has_retry_after(tmp_path):
    """Each account answers 429 with its delay only in the body (RetryInfo 37 s): the very first
    answer already tells the client when to come back."""
    with FakeCodeAssist() as fake:
        creds = write_login(tmp_path / "home" / "oauth_creds.json", fake.issue_login())
        config = gateway_config(fake, creds, configured_project(fake))
        first = config["providers"][PID]["accounts"][0]
        config["providers"][PID]["accounts"].append({**first, "label": "g2"})
        config["retry"] = {"max_attempts": 3, "max_wait": 5}
        gw = start_gateway(tmp_path / "gw", config)
        try:
            fake.faults.extend(Fault(status=429, body=rate_limit_error("37s")) for _ in range(2))
            with pytest.raises(openai.RateLimitError) as e:
                ChatDriver(gw.url, PID).text("hi there", False)
            assert 36 <= int(e.value.response.headers["retry-after"]) <= 38
            assert len(generate_calls(fake)) == 2
        finally:
            gw.stop()


# -- login ----------------------------------------------------------------------------------------------------


class Login:
    """`python -m auth login gemini ...` as a subprocess whose stdout lines the test reads as they come."""

    def __init__(self, args: list[str], home: Path) -> None:
        env = {**os.environ, "HOME": str(home), "BROWSER": "true", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auth", "login", "gemini", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def authorize_url(self) -> dict[str, str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith("https://accounts.google.com/o/oauth2/v2/auth?"):
                return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(line).query))
        self.proc.kill()
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        raise AssertionError(f"no authorize URL printed: {self.seen} {stderr}")

    def finish(self) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=30)
        time.sleep(0.05)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return rc, "\n".join(self.seen), err


def login_config(tmp_path: Path, fake: FakeCodeAssist) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "providers": {
                    PID: {
                        "base_url": fake.url,
                        "token_url": f"{fake.url}/token",
                        "accounts": [{"label": "work", "credentials": "creds/work.json"}],
                    }
                }
            }
        )
    )
    return config


def test_login_with_the_loopback_redirect(tmp_path):
    with FakeCodeAssist() as fake:
        config = login_config(tmp_path, fake)
        out = tmp_path / "creds" / "work.json"
        login = Login(["--config", str(config), "--out", str(out)], tmp_path)
        query = login.authorize_url()
        assert query["client_id"].startswith("681255809395-") and query["access_type"] == "offline"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        redirect = query["redirect_uri"]
        assert redirect.startswith("http://127.0.0.1:") and redirect.endswith("/oauth2callback")
        code = fake.approve(query["code_challenge"], redirect)
        forged = httpx2.get(redirect, params={"code": code, "state": "forged"}, timeout=10)
        assert forged.status_code == 400  # not this login's state: ignored, still waiting
        done = httpx2.get(redirect, params={"code": code, "state": query["state"]}, timeout=10)
        assert done.status_code == 200 and "Login complete" in done.text
        rc, stdout, stderr = login.finish()
        assert rc == 0, stderr
        assert f"Account: {EMAIL}" in stdout and f"Project: {fake.project_id}" in stdout
        saved = json.loads(out.read_text())
        assert set(saved) >= {"access_token", "refresh_token", "expiry_date", "token_type", "scope", "id_token"}
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        for secret in (saved["access_token"], saved["refresh_token"], code):
            assert secret not in stdout and secret not in stderr
        state = json.loads((tmp_path / "state" / "gemini-cli-projects.json").read_text())
        assert state["work"]["project"] == fake.project_id
        assert fake.code_grants == 1 and len(fake.calls("loadCodeAssist")) == 1


def test_login_without_a_browser_takes_the_pasted_code(tmp_path):
    with FakeCodeAssist(mode="onboard", onboard_polls=0) as fake:
        config = login_config(tmp_path, fake)
        out = tmp_path / "elsewhere.json"
        login = Login(["--no-browser", "--config", str(config), "--out", str(out)], tmp_path)
        query = login.authorize_url()
        assert query["redirect_uri"] == "https://codeassist.google.com/authcode"
        code = fake.approve(query["code_challenge"], query["redirect_uri"])
        assert login.proc.stdin is not None
        login.proc.stdin.write(f"{code}\n")
        login.proc.stdin.flush()
        rc, stdout, stderr = login.finish()
        assert rc == 0, stderr
        assert f"Project: {fake.project_id}" in stdout
        assert json.loads(out.read_text())["refresh_token"]
        assert fake.calls("onboardUser")  # discovery ran once, onboarding included


def test_login_refuses_a_pasted_url_of_another_login(tmp_path):
    with FakeCodeAssist() as fake:
        login = Login(
            ["--no-browser", "--config", str(login_config(tmp_path, fake)), "--out", str(tmp_path / "x.json")], tmp_path
        )
        query = login.authorize_url()
        code = fake.approve(query["code_challenge"], query["redirect_uri"])
        assert login.proc.stdin is not None
        login.proc.stdin.write(f"https://codeassist.google.com/authcode?code={code}&state=someone-else\n")
        login.proc.stdin.flush()
        rc, _, stderr = login.finish()
    assert rc == 1 and "state mismatch" in stderr
    assert not (tmp_path / "x.json").exists() and fake.code_grants == 0


def test_login_names_the_account_from_userinfo_without_an_id_token():
    with FakeCodeAssist() as fake:
        tokens = {"access_token": fake.issue_login()["access_token"]}
        assert account_email(tokens, f"{fake.url}/oauth2/v2/userinfo") == EMAIL
        assert account_email({"access_token": "ya29.wrong"}, f"{fake.url}/oauth2/v2/userinfo") is None
