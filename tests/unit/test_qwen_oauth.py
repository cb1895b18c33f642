"""The Qwen token file as a credential: reading, refresh (ahead, on 401, single-flight), rotation
write-back, refusal handling. Refreshes go to the fake Qwen OAuth server over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import httpx2
import pytest

from auth.credentials import CredentialError
from auth.login_qwen import DeviceLogin, LoginFailed, token_file
from auth.pkce import pkce_pair
from auth.qwen_oauth import (
    QwenOAuthCredential,
    TokenFileLock,
    device_code_url,
    read_refusal,
    refusal_marker_path,
    write_private_json,
)
from tests.fakes.qwen import FakeQwen, s256


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeQwen]:
    with FakeQwen() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeQwen) -> FakeQwen:
    fake_server.clear()
    fake_server.refuse_refresh = False
    fake_server.rotate = True
    fake_server.refresh_grants = 0
    fake_server.refresh_delay = 0.0
    fake_server.resource_url = None
    return fake_server


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def credential(path: Path, fake: FakeQwen, **kw) -> QwenOAuthCredential:
    return QwenOAuthCredential(path, token_url=f"{fake.url}/api/v1/oauth2/token", **kw)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- reading ------------------------------------------------------------------------------------


def test_missing_file_says_how_to_log_in(tmp_path):
    with pytest.raises(CredentialError, match="python -m auth login qwen"):
        QwenOAuthCredential(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"access_token": "a", "token_type": "Bearer", "expiry_date": 1}), "refresh_token is missing"),
        (json.dumps({"access_token": "a", "refresh_token": "r", "token_type": "Bearer"}), "expiry_date is missing"),
        (
            json.dumps({"access_token": "a", "refresh_token": "r", "token_type": "Bearer", "expiry_date": "soon"}),
            "expiry_date is missing",
        ),
    ],
)
def test_unusable_files_are_refused_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "creds.json"
    path.write_text(content)
    with pytest.raises(CredentialError, match=reason):
        QwenOAuthCredential(path)


def test_valid_token_is_used_without_network(tmp_path, fake):
    data = fake.token_file(resource_url="portal.example")
    cred = credential(write(tmp_path / "c.json", data), fake)
    ctx = asyncio.run(cred.auth())
    assert ctx.token == data["access_token"]
    assert ctx.extra == {"resource_url": "portal.example"}
    assert cred.expires_at == data["expiry_date"] / 1000
    assert fake.requests == []


# -- refresh ------------------------------------------------------------------------------------


def test_refresh_ahead_of_expiry_rotates_and_persists_before_use(tmp_path, fake):
    data = fake.token_file(lifetime=600, id_token="idt", custom_field={"kept": True})
    path = write(tmp_path / "c.json", data)
    cred = credential(path, fake, refresh_ahead=900)
    ctx = asyncio.run(cred.auth())
    assert fake.refresh_grants == 1
    saved = json.loads(path.read_text())
    assert ctx.token == saved["access_token"] != data["access_token"]
    assert saved["refresh_token"] != data["refresh_token"]
    assert fake.refresh_token_valid(saved["refresh_token"]) and not fake.refresh_token_valid(data["refresh_token"])
    assert saved["id_token"] == "idt" and saved["custom_field"] == {"kept": True}  # unknown fields kept
    assert saved["expiry_date"] / 1000 == pytest.approx(time.time() + fake.token_lifetime, abs=5)
    assert cred.expires_at == saved["expiry_date"] / 1000
    assert mode(path) == 0o600
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "c.lock").exists()
    form = dict(parse_qsl(fake.oauth_requests()[0].body.decode()))
    assert form["grant_type"] == "refresh_token" and form["client_id"] == "f0304373b74a44d2b584a3fb70ca9e56"
    # the new token is far from expiry: no second refresh
    asyncio.run(cred.auth())
    assert fake.refresh_grants == 1


def test_old_refresh_token_is_kept_when_none_is_returned(tmp_path, fake):
    fake.rotate = False
    data = fake.token_file(lifetime=-10)
    path = write(tmp_path / "c.json", data)
    asyncio.run(credential(path, fake).auth())
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] == data["refresh_token"]
    assert saved["access_token"] != data["access_token"]


def test_a_short_lived_token_is_not_refreshed_on_every_request(tmp_path, fake):
    fake.token_lifetime = 600  # shorter than refresh_ahead (900)
    try:
        cred = credential(write(tmp_path / "c.json", fake.token_file(lifetime=-1)), fake)
        asyncio.run(cred.auth())
        asyncio.run(cred.auth())
        assert fake.refresh_grants == 1
    finally:
        fake.token_lifetime = 21_600


def test_concurrent_callers_share_one_refresh(tmp_path, fake):
    fake.refresh_delay = 0.2
    cred = credential(write(tmp_path / "c.json", fake.token_file(lifetime=-60)), fake)

    async def many() -> set[str]:
        return {ctx.token for ctx in await asyncio.gather(*(cred.auth() for _ in range(100)))}

    tokens = asyncio.run(many())
    assert fake.refresh_grants == 1
    assert len(tokens) == 1


def test_force_refresh_after_401_refreshes_once_for_all_waiters(tmp_path, fake):
    fake.refresh_delay = 0.1
    data = fake.token_file()
    cred = credential(write(tmp_path / "c.json", data), fake)

    async def run() -> set[str]:
        await cred.auth()
        return {ctx.token for ctx in await asyncio.gather(*(cred.force_refresh() for _ in range(10)))}

    tokens = asyncio.run(run())
    assert fake.refresh_grants == 1
    assert tokens != {data["access_token"]} and len(tokens) == 1


def test_a_late_401_for_the_old_token_does_not_refresh_again(tmp_path, fake):
    offset = [0.0]
    cred = credential(write(tmp_path / "c.json", fake.token_file()), fake, clock=lambda: time.time() + offset[0])
    first = asyncio.run(cred.force_refresh())
    second = asyncio.run(cred.force_refresh())  # a request that sent the old token, answered 401 late
    assert fake.refresh_grants == 1 and second.token == first.token
    offset[0] = 60  # later 401s are about the new token: refresh again
    assert asyncio.run(cred.force_refresh()).token != first.token
    assert fake.refresh_grants == 2


def test_a_token_refreshed_by_another_process_is_adopted_without_a_refresh(tmp_path, fake):
    path = write(tmp_path / "c.json", fake.token_file())
    cred = credential(path, fake)
    newer = fake.token_file()
    write(path, newer)  # e.g. the qwen-code CLI refreshed meanwhile
    ctx = asyncio.run(cred.force_refresh())
    assert ctx.token == newer["access_token"]
    assert fake.refresh_grants == 0 and fake.requests == []


def test_refresh_waits_for_a_held_lock_and_removes_a_stale_one(tmp_path, fake):
    path = write(tmp_path / "c.json", fake.token_file(lifetime=-1))
    lock = tmp_path / "c.lock"
    lock.write_text("someone")
    old = time.time() - 60
    os.utime(lock, (old, old))
    asyncio.run(credential(path, fake).auth())
    assert fake.refresh_grants == 1
    assert not lock.exists()


def test_lock_is_exclusive_until_released(tmp_path):
    first, second = TokenFileLock(tmp_path / "c.json"), TokenFileLock(tmp_path / "c.json")
    first.acquire()
    assert first.path.name == "c.lock"  # qwen-code's oauth_creds.json -> oauth_creds.lock
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    second.acquire()
    assert time.monotonic() - started >= 0.45
    second.release()
    assert not first.path.exists()


def test_unreachable_token_endpoint_keeps_a_still_valid_token(tmp_path, fake):
    data = fake.token_file(lifetime=300)  # inside refresh_ahead, still valid
    path = write(tmp_path / "c.json", data)
    cred = QwenOAuthCredential(path, token_url="http://127.0.0.1:9/token", refresh_ahead=900, connect_timeout=2)
    assert asyncio.run(cred.auth()).token == data["access_token"]
    assert cred.disabled is None


def test_unreachable_token_endpoint_with_an_expired_token_is_an_error_not_a_refusal(tmp_path, fake):
    path = write(tmp_path / "c.json", fake.token_file(lifetime=-1))
    before = path.read_bytes()
    cred = QwenOAuthCredential(path, token_url="http://127.0.0.1:9/token", connect_timeout=2)
    with pytest.raises(CredentialError, match="token refresh failed: ConnectError"):
        asyncio.run(cred.auth())
    assert cred.disabled is None and path.read_bytes() == before
    assert not refusal_marker_path(path).exists()


# -- refusal ------------------------------------------------------------------------------------


def test_refused_refresh_keeps_the_file_and_disables_the_account(tmp_path, fake):
    fake.refuse_refresh = True
    data = fake.token_file(lifetime=-1)
    path = write(tmp_path / "c.json", data)
    before = path.read_bytes()
    cred = credential(path, fake)
    with pytest.raises(CredentialError, match=r"refused the refresh token \(400 invalid_grant.*auth login qwen"):
        asyncio.run(cred.auth())
    assert path.read_bytes() == before and mode(path) == 0o600
    assert cred.disabled and "python -m auth login qwen" in cred.disabled
    assert "disabled" in asyncio.run(cred.describe())
    # no second attempt, neither from auth() nor after a 401
    with pytest.raises(CredentialError):
        asyncio.run(cred.auth())
    with pytest.raises(CredentialError):
        asyncio.run(cred.force_refresh())
    assert len(fake.oauth_requests("refresh_token")) == 1
    # a restart (or `python -m auth status`) still knows
    assert read_refusal(path, data["refresh_token"])
    with pytest.raises(CredentialError, match=r"disabled: .*log in again"):
        credential(path, fake)
    # a new login brings a new refresh token: the old refusal no longer applies
    write(path, fake.token_file())
    assert credential(path, fake).disabled is None


def test_a_token_rotated_by_another_process_is_adopted_before_refreshing(tmp_path, fake):
    path = write(tmp_path / "c.json", fake.token_file(lifetime=-1))
    cred = credential(path, fake)
    first = json.loads(path.read_text())
    newer = fake.token_file(lifetime=-1)  # another process refreshed; its access token expired too
    fake._refresh.discard(first["refresh_token"])
    write(path, newer)
    ctx = asyncio.run(cred.auth())
    assert cred.disabled is None and fake.refresh_grants == 1
    assert dict(parse_qsl(fake.oauth_requests()[0].body.decode()))["refresh_token"] == newer["refresh_token"]
    assert ctx.token == json.loads(path.read_text())["access_token"]


def test_a_refusal_caused_by_a_concurrent_rotation_retries_with_the_rotated_token(tmp_path, fake):
    path = write(tmp_path / "c.json", fake.token_file(lifetime=-1))
    first = json.loads(path.read_text())
    cred = credential(path, fake)
    fake.refresh_delay = 0.4
    newer = fake.token_file(lifetime=-1)

    def other_process() -> None:  # rotates while our refresh is in flight
        fake._refresh.discard(first["refresh_token"])
        write(path, newer)

    threading.Timer(0.1, other_process).start()
    ctx = asyncio.run(cred.auth())
    sent = [dict(parse_qsl(r.body.decode()))["refresh_token"] for r in fake.oauth_requests()]
    assert sent == [first["refresh_token"], newer["refresh_token"]]
    assert cred.disabled is None and fake.refresh_grants == 1
    assert not refusal_marker_path(path).exists()
    assert ctx.token == json.loads(path.read_text())["access_token"]


# -- describe, helpers -------------------------------------------------------------------------------


def test_describe_never_shows_a_secret(tmp_path, fake):
    data = fake.token_file(lifetime=3 * 3600)
    cred = credential(write(tmp_path / "c.json", data), fake)
    line = asyncio.run(cred.describe())
    assert "valid until" in line and "2h59m left" in line and str(tmp_path / "c.json") in line
    for secret in (data["access_token"], data["refresh_token"], data["access_token"][-6:]):
        assert secret not in line
    expired = credential(write(tmp_path / "d.json", fake.token_file(lifetime=-10)), fake)
    assert "expired" in asyncio.run(expired.describe())


def test_write_is_atomic_private_and_follows_symlinks(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    real.chmod(0o644)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_private_json(link, {"a": 1})
    assert link.is_symlink()
    assert json.loads(real.read_text()) == {"a": 1}
    assert mode(real) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_device_code_url_replaces_the_last_segment():
    assert (
        device_code_url("https://chat.qwen.ai/api/v1/oauth2/token") == "https://chat.qwen.ai/api/v1/oauth2/device/code"
    )
    assert device_code_url("http://127.0.0.1:5/api/v1/oauth2/token/") == "http://127.0.0.1:5/api/v1/oauth2/device/code"


# -- login pieces -----------------------------------------------------------------------------------


def test_pkce_pair_is_s256_of_a_32_byte_verifier():
    verifier, challenge = pkce_pair()
    assert len(verifier) == 43 and "=" not in verifier
    assert challenge == s256(verifier)
    assert pkce_pair()[0] != verifier


def test_device_login_polls_until_success_and_the_file_has_qwen_codes_format(fake):
    fake.device_script = ["authorization_pending", "success"]
    slept: list[float] = []
    try:
        with httpx2.Client(timeout=10) as client:
            login = DeviceLogin(
                client, f"{fake.url}/api/v1/oauth2/token", device_code_url(f"{fake.url}/api/v1/oauth2/token")
            )
            login._sleep = slept.append
            verifier, challenge = pkce_pair()
            device = login.request_device_code(challenge)
            answer = login.poll(device["device_code"], verifier, 900)
    finally:
        fake.device_script = ["authorization_pending", "authorization_pending", "slow_down", "success"]
    assert slept == [2.0, 2.0]  # qwen-code's interval
    data = token_file(answer, 1000.0)
    assert data["expiry_date"] == (1000 + fake.token_lifetime) * 1000
    assert data["resource_url"] == fake.url and data["token_type"] == "Bearer"


def test_device_login_slow_down_is_capped_at_ten_seconds(fake):
    fake.device_script = ["slow_down"] * 8 + ["success"]
    slept: list[float] = []
    try:
        with httpx2.Client(timeout=10) as client:
            login = DeviceLogin(client, f"{fake.url}/api/v1/oauth2/token", f"{fake.url}/api/v1/oauth2/device/code")
            login._sleep = slept.append
            verifier, challenge = pkce_pair()
            device = login.request_device_code(challenge)
            login.poll(device["device_code"], verifier, 900)
    finally:
        fake.device_script = ["authorization_pending", "authorization_pending", "slow_down", "success"]
    assert slept[:4] == [2.0, 3.0, 4.5, 6.75] and slept[-1] == 10.0


def test_device_login_refused_mentions_the_availability(fake):
    with httpx2.Client(timeout=10) as client:
        login = DeviceLogin(client, f"{fake.url}/api/v1/oauth2/token", f"{fake.url}/api/v1/oauth2/gone")
        with pytest.raises(LoginFailed, match=r"refused the device authorization \(404 not_found.*discontinued"):
            login.request_device_code(pkce_pair()[1])


def test_device_login_expires_with_the_code(fake):
    fake.device_script = ["authorization_pending"] * 50
    now = [0.0]
    try:
        with httpx2.Client(timeout=10) as client:
            login = DeviceLogin(
                client,
                f"{fake.url}/api/v1/oauth2/token",
                f"{fake.url}/api/v1/oauth2/device/code",
                sleep=lambda s: now.__setitem__(0, now[0] + s),
                clock=lambda: now[0],
            )
            verifier, challenge = pkce_pair()
            device = login.request_device_code(challenge)
            with pytest.raises(LoginFailed, match="expired before the login was approved"):
                login.poll(device["device_code"], verifier, 7)
    finally:
        fake.device_script = ["authorization_pending", "authorization_pending", "slow_down", "success"]
