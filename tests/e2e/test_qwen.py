"""Qwen Code (`openai-qwen-oauth`) through the real gateway against the fake portal + OAuth server.

Every client SDK, streamed and not (text, tool round trip, image); the token refresh under
concurrency; a refused refresh; the device-code login as a subprocess; local request limits;
the portal's quota and throttling answers.
"""

from __future__ import annotations

import itertools
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

from providers.qwen import next_quota_reset
from tests.conftest import CLIENT_KEY
from tests.drivers import DRIVERS, MODEL, PNG
from tests.fakes.qwen import QUOTA_ERROR, THROTTLE_ERROR, FakeQwen
from tests.fakes.server import Fault
from tests.gateway import REPO, GatewayProcess, start_gateway

PROVIDER = "openai-qwen-oauth"
CLIENTS = ["openai_chat", "openai_responses", "claude", "gemini"]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
LOGIN = [sys.executable, "-m", "auth", "login", "qwen"]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}


def qwen_config(fake: FakeQwen, creds: Path, **provider: object) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": PROVIDER,
        "providers": {
            PROVIDER: {
                "token_url": f"{fake.url}/api/v1/oauth2/token",
                "accounts": [{"label": "q1", "credentials": str(creds)}],
                **provider,
            }
        },
        "models": {MODEL: f"{PROVIDER}:coder-model"},
        "retry": {"max_attempts": 3, "max_wait": 5},
    }


def write_creds(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def chat(gw: GatewayProcess, body: dict | None = None, path: str = "/v1/chat/completions") -> httpx2.Response:
    return httpx2.post(f"{gw.url}/{PROVIDER}{path}", headers=AUTH, json=body or CHAT, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeQwen]:
    with FakeQwen(split_writes=True) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeQwen, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("qwen-gateway")
    # No base_url: the portal address comes from the token's resource_url, as with a real login.
    creds = write_creds(workdir / "oauth_creds.json", fake.token_file())
    gw = start_gateway(workdir, qwen_config(fake, creds))
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


def test_requests_look_like_qwen_codes_and_no_token_is_logged(gateway, fake):
    fake.clear()
    DRIVERS["claude"](gateway.url, PROVIDER).text("hi there", stream=True)
    DRIVERS["openai_chat"](gateway.url, PROVIDER).text("hi there", stream=True)
    sent = fake.chat_requests()
    assert len(sent) == 2
    for request in sent:
        assert request.headers["x-dashscope-authtype"] == "qwen-oauth"
        assert request.headers["user-agent"].startswith("QwenCode/")
        assert request.json["model"] == "coder-model"
        assert request.json["stream_options"] == {"include_usage": True}
        assert [t for t in request.json.get("tools", [])] == []  # nothing injected by default
        assert request.json["messages"][0]["role"] == "user"
    token = sent[0].headers["authorization"].removeprefix("Bearer ")
    creds = json.loads((gateway.config_path.parent / "oauth_creds.json").read_text())
    log = gateway.log()
    for secret in (token, creds["refresh_token"]):
        assert secret not in log


def test_thinking_is_relayed_as_reasoning(gateway, fake):
    body = {**CHAT, "reasoning_effort": "medium", "stream": True}
    with httpx2.stream(
        "POST", f"{gateway.url}/{PROVIDER}/v1/chat/completions", headers=AUTH, json=body, timeout=30
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines if json.loads(line[6:])["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me think about this."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello! You said: hi there"


# -- tokens ------------------------------------------------------------------------------------------


def test_one_refresh_for_twenty_concurrent_401s(fake, tmp_path):
    """The portal refuses the file's access token: every request gets 401, all share one refresh."""
    data = fake.token_file()
    data["access_token"] = "revoked-" + data["access_token"]  # unknown to the fake, expiry still ahead
    creds = write_creds(tmp_path / "oauth_creds.json", data)
    fake.clear()
    fake.refresh_grants = 0
    fake.refresh_delay = 0.3
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, creds, base_url=f"{fake.url}/v1"))
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: chat(gw, {**CHAT, "stream": i % 2 == 1}), range(20)))
    finally:
        fake.refresh_delay = 0.0
        gw.stop()
    assert [a.status_code for a in answers] == [200] * 20
    assert fake.refresh_grants == 1
    assert len(fake.oauth_requests("refresh_token")) == 1
    saved = json.loads(creds.read_text())
    assert mode(creds) == 0o600
    assert saved["refresh_token"] != data["refresh_token"] and fake.refresh_token_valid(saved["refresh_token"])
    used = {r.headers["authorization"] for r in fake.chat_requests()}
    assert used == {f"Bearer {data['access_token']}", f"Bearer {saved['access_token']}"}


def test_refused_refresh_keeps_the_file_and_disables_the_account(fake, tmp_path):
    creds = write_creds(tmp_path / "oauth_creds.json", fake.token_file(lifetime=-60))
    before = creds.read_bytes()
    fake.clear()
    fake.refuse_refresh = True
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, creds, base_url=f"{fake.url}/v1"))
    try:
        first = chat(gw)
        second = httpx2.post(
            f"{gw.url}/{PROVIDER}/v1/messages",
            headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
    finally:
        fake.refuse_refresh = False
        gw.stop()
    assert first.status_code == 503
    assert "log in again: python -m auth login qwen" in first.json()["error"]["message"]
    assert second.status_code == 503 and second.json()["type"] == "error"
    assert creds.read_bytes() == before and mode(creds) == 0o600
    assert len(fake.oauth_requests("refresh_token")) == 1  # disabled, not retried in a loop
    assert fake.chat_requests() == []
    status = subprocess.run(
        [sys.executable, "-m", "auth", "status", "--config", str(gw.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0
    line = next(line for line in status.stdout.splitlines() if line.startswith(PROVIDER))
    assert "q1" in line and "log in again: python -m auth login qwen" in line
    assert json.loads(before)["refresh_token"] not in status.stdout


# -- login ----------------------------------------------------------------------------------------


def test_device_login_then_use(fake, tmp_path):
    fake.clear()
    fake.devices.clear()
    config = _login_config(fake, tmp_path)
    out = tmp_path / "qwen" / "oauth_creds.json"
    started = time.monotonic()
    login = subprocess.run(
        [*LOGIN, "--no-browser", "--config", str(config), "--out", str(out), "--poll-interval", "0.2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    assert time.monotonic() - started < 30
    assert list(fake.device_steps()) == ["authorization_pending", "authorization_pending", "slow_down", "success"]
    (device,) = fake.devices.values()
    times = [t for t, _ in device.polls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps[:2]) >= 0.19 and gaps[2] >= 0.29  # slow_down made polling 1.5x slower
    assert f"{fake.url}/authorize?user_code=" in login.stdout and "User code: " in login.stdout
    saved = json.loads(out.read_text())
    assert mode(out) == 0o600
    assert set(saved) == {"access_token", "refresh_token", "token_type", "resource_url", "expiry_date"}
    assert saved["resource_url"] == fake.url and fake.refresh_token_valid(saved["refresh_token"])
    assert saved["expiry_date"] / 1000 == pytest.approx(time.time() + fake.token_lifetime, abs=60)
    # The new file works as is: the portal address comes from its resource_url.
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, out))
    try:
        answer = chat(gw)
    finally:
        gw.stop()
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Hello! You said: hi there"


def test_device_login_gives_up_on_an_expired_code(fake, tmp_path):
    fake.device_script = ["authorization_pending", "expired"]
    out = tmp_path / "oauth_creds.json"
    try:
        login = subprocess.run(
            [
                *LOGIN,
                "--no-browser",
                "--out",
                str(out),
                "--device-url",
                f"{fake.url}/api/v1/oauth2/device/code",
                "--poll-interval",
                "0.05",
                "--config",
                str(_login_config(fake, tmp_path)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        fake.device_script = ["authorization_pending", "authorization_pending", "slow_down", "success"]
    assert login.returncode == 1
    assert "device code expired" in login.stderr
    assert not out.exists()


def _login_config(fake: FakeQwen, tmp_path: Path) -> Path:
    config = tmp_path / "login.yaml"
    config.write_text(yaml.safe_dump({"providers": {PROVIDER: {"token_url": f"{fake.url}/api/v1/oauth2/token"}}}))
    return config


# -- limits and quota -----------------------------------------------------------------------------


def test_requests_per_minute_answers_429_before_sending(fake, tmp_path):
    creds = write_creds(tmp_path / "oauth_creds.json", fake.token_file())
    fake.clear()
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, creds, base_url=f"{fake.url}/v1", requests_per_minute=2))
    try:
        answers = [chat(gw) for _ in range(3)]
        claude = httpx2.post(
            f"{gw.url}/{PROVIDER}/v1/messages",
            headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
    finally:
        gw.stop()
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "requests_per_minute=2" in refused.json()["error"]["message"]
    assert claude.status_code == 429 and claude.json()["error"]["type"] == "rate_limit_error"
    assert len(fake.chat_requests()) == 2


def test_throttling_backs_off_and_quota_cools_the_account_until_the_reset(fake, tmp_path):
    creds = write_creds(tmp_path / "oauth_creds.json", fake.token_file())
    fake.clear()
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, creds, base_url=f"{fake.url}/v1"))
    try:
        fake.faults.append(Fault(status=429, body=THROTTLE_ERROR, headers={"retry-after": "1"}))
        started = time.monotonic()
        after = chat(gw)  # the only account cools 1 s: the gateway waits for it instead of failing
        assert after.status_code == 200 and len(fake.chat_requests()) == 2
        assert time.monotonic() - started >= 0.9
        fake.faults.append(Fault(status=429, body=QUOTA_ERROR))
        quota = chat(gw)
        later = chat(gw)
    finally:
        fake.faults.clear()
        gw.stop()
    assert quota.status_code == 429
    assert "Free allocated quota exceeded." in quota.json()["error"]["message"]
    assert later.status_code == 429 and len(fake.chat_requests()) == 3  # not sent: cooling until the reset
    wait = int(later.headers["retry-after"])
    assert wait == pytest.approx(next_quota_reset(time.time()) - time.time(), abs=10)


def test_an_idle_gateway_refreshes_tokens_before_they_expire(fake, tmp_path):
    """No request at all: the pool's background work refreshes a token inside refresh_ahead, so an
    idle gateway never wakes up with every token expired."""
    data = fake.token_file(lifetime=120)  # expires in 2 min, refresh_ahead is 15 min
    creds = write_creds(tmp_path / "oauth_creds.json", data)
    fake.clear()
    fake.refresh_grants = 0
    gw = start_gateway(tmp_path / "gw", qwen_config(fake, creds, base_url=f"{fake.url}/v1"))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and json.loads(creds.read_text())["access_token"] == data["access_token"]:
            time.sleep(0.2)
    finally:
        gw.stop()
    saved = json.loads(creds.read_text())
    assert saved["access_token"] != data["access_token"]
    assert saved["expiry_date"] > data["expiry_date"]
    assert fake.refresh_grants == 1
    assert fake.chat_requests() == []
