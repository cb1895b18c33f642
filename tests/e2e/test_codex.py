"""Codex (`openai-codex-oauth`) through the real gateway against the strict fake ChatGPT backend.

Every client SDK, streamed and not (text, tool round trip, image, reasoning); the backend's body
rules and identity headers; the token refresh under 20 concurrent requests; a reused refresh token;
usage limits (HTTP and in-stream) with failover; usage windows in /pool; models from the backend;
both logins as subprocesses.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.conftest import CLIENT_KEY
from tests.drivers import DRIVERS, MODEL, PNG
from tests.e2e.test_matrix import thinking_of
from tests.fakes.codex import AUTH_CLAIM, BASE_PATH, FakeCodex, Login, make_jwt
from tests.fakes.server import Fault
from tests.gateway import REPO, GatewayProcess, start_gateway

PROVIDER = "openai-codex-oauth"
CLIENTS = ["openai_chat", "openai_responses", "claude", "gemini"]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}


def codex_config(fake: FakeCodex, *creds: Path, **provider: object) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": PROVIDER,
        "providers": {
            PROVIDER: {
                "base_url": f"{fake.url}{BASE_PATH}",
                "token_url": f"{fake.url}/oauth/token",
                "accounts": [{"label": f"c{i + 1}", "credentials": str(c)} for i, c in enumerate(creds)],
                **provider,
            }
        },
        "models": {MODEL: f"{PROVIDER}:gpt-5.5"},
        "retry": {"max_attempts": 3, "max_wait": 2},
    }


def write_creds(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def chat(gw: GatewayProcess, body: dict | None = None) -> httpx2.Response:
    return httpx2.post(f"{gw.url}/{PROVIDER}/v1/chat/completions", headers=AUTH, json=body or CHAT, timeout=30)


def pool_accounts(gw: GatewayProcess) -> dict[str, dict]:
    r = httpx2.get(f"{gw.url}/pool", headers=AUTH, timeout=10)
    return {a["label"]: a for a in r.json()["providers"][PROVIDER]}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCodex]:
    with FakeCodex() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeCodex, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("codex-gateway")
    creds = write_creds(workdir / "auth.json", fake.auth_file("acct-1"))
    gw = start_gateway(workdir, codex_config(fake, creds))
    yield gw
    gw.stop()


@pytest.fixture(params=CLIENTS)
def client_dialect(request) -> str:
    return request.param


# -- every client ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_text(gateway, fake, client_dialect, stream):
    driver = DRIVERS[client_dialect](gateway.url, PROVIDER)
    assert driver.text("unicode please", stream) == "héllo wörld — 你好 🌍"
    assert driver.text("hi there", stream) == "Hello! You said: hi there"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_tool_round_trip(gateway, fake, client_dialect, stream):
    driver = DRIVERS[client_dialect](gateway.url, PROVIDER)
    calls, answer = driver.tool_round_trip(stream)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_image(gateway, fake, client_dialect, stream):
    driver = DRIVERS[client_dialect](gateway.url, PROVIDER)
    assert driver.image(stream) == f"I see 1 image(s): image/png {len(PNG)} bytes"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_reasoning(gateway, fake, client_dialect, stream):
    thinking, text = thinking_of(client_dialect, gateway.url, PROVIDER, stream)
    assert thinking == "Let me think about this."
    assert text == "Hello! You said: hi there"


def test_completed_without_output_is_rebuilt_from_the_items(gateway, fake):
    fake.empty_completed_output = True
    try:
        answers = [DRIVERS[c](gateway.url, PROVIDER).text("hi there", s) for c in CLIENTS for s in (False, True)]
    finally:
        fake.empty_completed_output = False
    assert answers == ["Hello! You said: hi there"] * 8


# -- the backend's rules ----------------------------------------------------------------------------


def test_requests_follow_the_backends_rules_and_no_secret_is_logged(gateway, fake):
    fake.clear()
    claude = DRIVERS["claude"](gateway.url, PROVIDER)  # sends max_tokens, refused by the backend
    claude.text("unicode please", stream=False)
    first = [{"role": "user", "content": "hi there"}]
    r1 = chat(gateway, {**CHAT, "messages": first, "temperature": 0.2, "seed": 7, "max_tokens": 99})
    turn2 = [*first, {"role": "assistant", "content": r1.json()["choices"][0]["message"]["content"]}]
    chat(gateway, {**CHAT, "messages": [*turn2, {"role": "user", "content": "again"}], "stream": True})
    sent = fake.responses_requests()
    assert len(sent) == 3
    for request in sent:
        body = request.json
        assert body["store"] is False and body["stream"] is True
        assert body["include"] == ["reasoning.encrypted_content"]
        assert isinstance(body["instructions"], str) and body["instructions"]
        assert set(body) <= {
            "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
            "store", "stream", "include", "prompt_cache_key", "text",
        }  # fmt: skip
        assert body["model"] == "gpt-5.5"
        h = request.headers
        assert h["chatgpt-account-id"] == "acct-1" and h["originator"] == "aiclient_mitm"
        assert h["user-agent"].startswith("aiclient_mitm/") and h["accept"] == "text/event-stream"
        assert h["session_id"] == body["prompt_cache_key"]
    # Two turns of one conversation share the prompt cache key; another conversation does not.
    assert sent[1].json["prompt_cache_key"] == sent[2].json["prompt_cache_key"]
    assert sent[0].json["prompt_cache_key"] != sent[1].json["prompt_cache_key"]  # another first message
    token = sent[0].headers["authorization"].removeprefix("Bearer ")
    creds = json.loads((gateway.config_path.parent / "auth.json").read_text())
    log = gateway.log()
    for secret in (token, creds["tokens"]["refresh_token"], creds["tokens"]["id_token"]):
        assert secret not in log


@pytest.mark.parametrize(
    ("change", "status", "detail"),
    [
        ({"store": True}, 400, "Store must be set to false"),
        ({"stream": False}, 400, "Stream must be set to true"),
        ({"instructions": None}, 400, "Instructions are required"),
        ({"temperature": 0.5}, 400, "Unsupported parameter: temperature"),
        ({"max_output_tokens": 10}, 400, "Unsupported parameter: max_output_tokens"),
        ({"previous_response_id": "resp_1"}, 400, "Unsupported parameter: previous_response_id"),
    ],
)
def test_the_fake_refuses_what_the_backend_refuses(fake, change, status, detail):
    tokens = fake.issue(Login("acct-9", "plus", "x@example.com"))
    body = {"model": "gpt-5.5", "instructions": "be brief", "input": "hi", "store": False, "stream": True, **change}
    body = {k: v for k, v in body.items() if v is not None}
    headers = {
        "authorization": f"Bearer {tokens['access_token']}",
        "chatgpt-account-id": "acct-9",
        "originator": "test",
        "user-agent": "test/1.0 (Linux 6; x86_64) pytest",
    }
    r = httpx2.post(f"{fake.url}{BASE_PATH}/responses", json=body, headers=headers, timeout=10)
    assert r.status_code == status and r.json() == {"detail": detail}
    assert (
        httpx2.post(
            f"{fake.url}{BASE_PATH}/responses",
            json=body,
            headers={**headers, "chatgpt-account-id": "other"},
            timeout=10,
        ).status_code
        == 403
    )


def test_models_come_from_the_backend(gateway, fake):
    deadline = time.monotonic() + 15
    ids: list[str] = []
    while time.monotonic() < deadline:
        r = httpx2.get(f"{gateway.url}/{PROVIDER}/v1/models", headers=AUTH, timeout=10)
        ids = [m["id"] for m in r.json()["data"]]
        if "gpt-5.4-mini" in ids:
            break
        time.sleep(0.3)
    assert ids[:3] == ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini"]
    assert "codex-auto-review" not in ids  # hidden by the backend
    assert MODEL in ids  # the alias


def test_pool_shows_the_usage_windows(gateway, fake):
    fake.used_percent["acct-1"] = 42.0
    try:
        DRIVERS["openai_chat"](gateway.url, PROVIDER).text("hi there", stream=True)
        DRIVERS["openai_chat"](gateway.url, PROVIDER).text("hi there", stream=False)
    finally:
        fake.used_percent.clear()
    windows = pool_accounts(gateway)["c1"]["usage_windows"]
    assert windows["primary"]["used_percent"] == 42.0 and windows["primary"]["window_minutes"] == 300
    assert windows["secondary"]["window_minutes"] == 10080
    assert windows["primary"]["resets_at"] == pytest.approx(time.time() + 3600, abs=60)


# -- tokens ------------------------------------------------------------------------------------------


def test_one_refresh_for_twenty_concurrent_401s(fake, tmp_path):
    """The backend refuses the file's access token: every request gets 401, all share one refresh,
    and the rotated tokens are written back in the Codex CLI's format, unknown fields kept."""
    data = fake.auth_file("acct-1")
    claims = {"exp": int(time.time()) + 3600, AUTH_CLAIM: {"chatgpt_account_id": "acct-1"}}
    data["tokens"]["access_token"] = make_jwt(claims)  # unknown to the fake, expiry still ahead
    data["custom_field"] = {"kept": True}
    creds = write_creds(tmp_path / "auth.json", data)
    fake.clear()
    fake.refresh_grants = 0
    fake.refresh_delay = 0.3
    gw = start_gateway(tmp_path / "gw", codex_config(fake, creds))
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: chat(gw, {**CHAT, "stream": i % 2 == 1}), range(20)))
    finally:
        fake.refresh_delay = 0.0
        gw.stop()
    assert [a.status_code for a in answers] == [200] * 20
    assert fake.refresh_grants == 1 and len(fake.oauth_requests()) == 1
    assert json.loads(fake.oauth_requests()[0].body) == {
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "grant_type": "refresh_token",
        "refresh_token": data["tokens"]["refresh_token"],
    }
    saved = json.loads(creds.read_text())
    assert mode(creds) == 0o600
    assert set(saved) == {"auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh", "custom_field"}
    assert saved["custom_field"] == {"kept": True} and saved["OPENAI_API_KEY"] is None
    assert set(saved["tokens"]) == {"id_token", "access_token", "refresh_token", "account_id"}
    assert saved["tokens"]["account_id"] == "acct-1"
    assert saved["tokens"]["refresh_token"] != data["tokens"]["refresh_token"]
    assert fake.refresh_token_valid(saved["tokens"]["refresh_token"])
    assert saved["last_refresh"] != data["last_refresh"] and saved["last_refresh"].endswith("Z")
    assert creds.read_text().startswith('{\n  "auth_mode"')  # pretty JSON, as the CLI writes it


def test_reused_refresh_token_disables_the_account_and_keeps_the_file(fake, tmp_path):
    data = fake.auth_file("acct-1", lifetime=-60)
    # Another program (the Codex CLI) refreshed with this token already; the file still holds the old one.
    used = httpx2.post(
        f"{fake.url}/oauth/token",
        json={"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token",
              "refresh_token": data["tokens"]["refresh_token"]},
        timeout=10,
    )  # fmt: skip
    assert used.status_code == 200
    creds = write_creds(tmp_path / "auth.json", data)
    before = creds.read_bytes()
    fake.clear()
    gw = start_gateway(tmp_path / "gw", codex_config(fake, creds))
    try:
        first = chat(gw)
        second = chat(gw)
        state = pool_accounts(gw)["c1"]
    finally:
        gw.stop()
    assert first.status_code == 503
    assert "log in again: python -m auth login codex" in first.json()["error"]["message"]
    assert "already used" in first.json()["error"]["message"]
    assert second.status_code == 503
    assert state["state"] == "disabled"
    assert creds.read_bytes() == before and mode(creds) == 0o600
    assert len(fake.oauth_requests()) == 1  # disabled, not retried in a loop
    assert fake.responses_requests() == []
    status = subprocess.run(
        [sys.executable, "-m", "auth", "status", "--config", str(gw.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0
    line = next(line for line in status.stdout.splitlines() if line.startswith(PROVIDER))
    assert "log in again: python -m auth login codex" in line
    assert data["tokens"]["refresh_token"] not in status.stdout


def test_status_shows_plan_and_expiry_never_secrets(fake, tmp_path):
    data = fake.auth_file("acct-1", plan="pro", flat=True)
    creds = write_creds(tmp_path / "codex-me.json", data)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(codex_config(fake, creds)))
    status = subprocess.run(
        [sys.executable, "-m", "auth", "status", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith(PROVIDER))
    assert "ChatGPT pro" in line and "access token valid until" in line
    for secret in (data["access_token"], data["refresh_token"], data["id_token"]):
        assert secret not in status.stdout


# -- limits ------------------------------------------------------------------------------------------


def test_usage_limit_fails_over_then_answers_429_with_retry_after(fake, tmp_path):
    one = write_creds(tmp_path / "a" / "auth.json", fake.auth_file("acct-1"))
    two = write_creds(tmp_path / "b" / "auth.json", fake.auth_file("acct-2"))
    fake.clear()
    resets_at = int(time.time()) + 3600
    fake.usage_limited["acct-1"] = resets_at
    gw = start_gateway(tmp_path / "gw", codex_config(fake, one, two, strategy="fill-first"))
    try:
        served = [chat(gw, {**CHAT, "stream": s}) for s in (False, True)]
        accounts = [r.headers["chatgpt-account-id"] for r in fake.responses_requests()]
        fake.usage_limited["acct-2"] = resets_at
        limited = chat(gw)
        cooling = chat(gw, {**CHAT, "stream": True})
        state = pool_accounts(gw)
    finally:
        fake.usage_limited.clear()
        gw.stop()
    assert [r.status_code for r in served] == [200, 200]
    assert accounts == ["acct-1", "acct-2", "acct-2"]  # acct-1 cools account-wide: not asked again
    for answer in (limited, cooling):
        assert answer.status_code == 429
        assert int(answer.headers["retry-after"]) == pytest.approx(3600, abs=30)
    assert "usage limit" in limited.json()["error"]["message"].lower()
    assert len(fake.responses_requests()) == 4  # the last request was answered without calling upstream
    assert state["c1"]["state"] == "cooling" and state["c1"]["usage_windows"]["primary"]["used_percent"] == 100.0


def test_plan_without_codex_disables_the_account(fake, tmp_path):
    one = write_creds(tmp_path / "a" / "auth.json", fake.auth_file("acct-1"))
    two = write_creds(tmp_path / "b" / "auth.json", fake.auth_file("acct-2"))
    fake.not_included.add("acct-1")
    gw = start_gateway(tmp_path / "gw", codex_config(fake, one, two, strategy="fill-first"))
    try:
        answer = chat(gw)
        state = pool_accounts(gw)
    finally:
        fake.not_included.clear()
        gw.stop()
    assert answer.status_code == 200
    assert state["c1"]["state"] == "disabled" and "does not include Codex" in state["c1"]["reason"]


@pytest.mark.parametrize("code", ["insufficient_quota", "rate_limit_exceeded"])
def test_in_stream_failure_fails_over_before_the_first_byte(fake, tmp_path, code):
    one = write_creds(tmp_path / "a" / "auth.json", fake.auth_file("acct-1"))
    two = write_creds(tmp_path / "b" / "auth.json", fake.auth_file("acct-2"))
    fake.clear()
    message = "You exceeded your current quota." if code == "insufficient_quota" else "Please try again in 1.5s."
    fake.stream_failures.append({"code": code, "message": message})
    gw = start_gateway(tmp_path / "gw", codex_config(fake, one, two, strategy="fill-first"))
    try:
        answer = chat(gw)
        state = pool_accounts(gw)
    finally:
        fake.stream_failures.clear()
        gw.stop()
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Hello! You said: hi there"
    assert [r.headers["chatgpt-account-id"] for r in fake.responses_requests()] == ["acct-1", "acct-2"]
    assert state["c1"]["state"] == "cooling" and code in state["c1"]["last_error"]


def test_stream_failure_after_start_ends_with_the_clients_error_event(fake, tmp_path):
    creds = write_creds(tmp_path / "auth.json", fake.auth_file("acct-1"))
    fake.stream_failures.append({"code": "rate_limit_exceeded", "message": "Please try again in 20s."})
    gw = start_gateway(tmp_path / "gw", codex_config(fake, creds))
    try:
        with httpx2.stream(
            "POST",
            f"{gw.url}/{PROVIDER}/v1/messages",
            headers={"x-api-key": CLIENT_KEY},
            json={"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        ) as r:
            body = r.read().decode()
        state = pool_accounts(gw)["c1"]
    finally:
        fake.stream_failures.clear()
        gw.stop()
    assert r.status_code == 200
    assert "event: error" in body and "rate_limit_exceeded" in body
    assert state["state"] == "cooling" and 15 <= state["cooldown_seconds"]["gpt-5.5"] <= 20


def test_cut_stream_fails_over_and_bad_reasoning_blob_is_the_requests_fault(fake, tmp_path):
    one = write_creds(tmp_path / "a" / "auth.json", fake.auth_file("acct-1"))
    two = write_creds(tmp_path / "b" / "auth.json", fake.auth_file("acct-2"))
    fake.clear()
    fake.faults.append(Fault(kind="reset_mid_stream", after_events=4))
    gw = start_gateway(tmp_path / "gw", codex_config(fake, one, two, strategy="fill-first"))
    try:
        cut = chat(gw)
        items = [
            {"type": "reasoning", "summary": [], "encrypted_content": "not-a-blob-we-issued"},
            {"role": "user", "content": "hi"},
        ]
        bad = httpx2.post(
            f"{gw.url}/{PROVIDER}/v1/responses", headers=AUTH, json={"model": MODEL, "input": items}, timeout=30
        )
        state = pool_accounts(gw)
    finally:
        fake.faults.clear()
        gw.stop()
    assert cut.status_code == 200
    assert cut.json()["choices"][0]["message"]["content"] == "Hello! You said: hi there"
    assert bad.status_code == 400 and "invalid_encrypted_content" in bad.json()["error"]["message"]
    assert state["c2"]["state"] == "ready" and state["c2"]["errors"] == 0  # not the account's fault


# -- login ----------------------------------------------------------------------------------------


def _login_config(fake: FakeCodex, tmp_path: Path) -> Path:
    config = tmp_path / "login.yaml"
    config.write_text(yaml.safe_dump({"providers": {PROVIDER: {"token_url": f"{fake.url}/oauth/token"}}}))
    return config


def test_device_login_writes_a_codex_auth_file(fake, tmp_path):
    out = tmp_path / "codex" / "auth.json"
    login = subprocess.run(
        [sys.executable, "-m", "auth", "login", "codex", "--device", "--config", str(_login_config(fake, tmp_path)),
         "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert f"{fake.url}/codex/device" in login.stdout and "ChatGPT plus" in login.stdout
    saved = json.loads(out.read_text())
    assert mode(out) == 0o600
    assert set(saved) == {"auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"}
    assert saved["tokens"]["account_id"] == "acct-device"
    assert fake.refresh_token_valid(saved["tokens"]["refresh_token"])


def test_browser_login_uses_the_registered_loopback_redirect(fake, tmp_path):
    out = tmp_path / "auth.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auth", "login", "codex", "--no-browser", "--config",
         str(_login_config(fake, tmp_path)), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.strip().startswith("http"):
                url = line.strip()
        assert "redirect_uri=http%3A%2F%2Flocalhost%3A145" in url and "code_challenge_method=S256" in url
        # The "browser": the fake approves at once and redirects to the loopback listener.
        r = httpx2.get(url, follow_redirects=True, timeout=10, trust_env=False)
        assert r.status_code == 200 and "Login complete" in r.text
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    saved = json.loads(out.read_text())
    assert saved["auth_mode"] == "chatgpt" and saved["tokens"]["account_id"] == "acct-login"
    assert mode(out) == 0o600
