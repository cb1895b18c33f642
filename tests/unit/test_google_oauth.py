"""The Gemini CLI credential against a real (fake) Google token endpoint on loopback.

Pins the token lifecycle: refresh ahead of expiry, single flight under concurrency, off the event
loop, atomic 0600 write-back keeping unknown fields, invalid_grant marking without retry loops,
base64 credentials never written, secrets never described.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth.credentials import CredentialError
from auth.google_oauth import (
    GoogleOAuthCredential,
    decode_token_base64,
    id_token_claims,
    read_token_file,
)
from tests.fakes.code_assist import EMAIL, FakeCodeAssist

PROJECT = "configured-project-1"


@pytest.fixture
def fake() -> Iterator[FakeCodeAssist]:
    with FakeCodeAssist() as f:
        yield f


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o644)  # the gateway must tighten it when it writes
    return path


def _credential(fake: FakeCodeAssist, path: Path | None, data: dict, **kw) -> GoogleOAuthCredential:
    kw.setdefault("project_id", PROJECT)
    return GoogleOAuthCredential("acct", data, path=path, token_url=f"{fake.url}/token", **kw)


def _token_requests(fake: FakeCodeAssist) -> int:
    return sum(1 for r in fake.requests if r.path == "/token")


def test_expired_token_refreshes_once_for_100_concurrent_callers(fake, tmp_path):
    data = fake.issue_login(expired=True) | {"gemini_cli_extra": {"keep": [1, 2]}, "zz_unknown": "x"}
    path = _write(tmp_path / "oauth_creds.json", data)
    inode = path.stat().st_ino
    fake.token_delay = 0.2  # every caller arrives while the one refresh is in flight
    cred = _credential(fake, path, data)

    async def run():
        return await asyncio.gather(*(cred.auth() for _ in range(100)))

    contexts = asyncio.run(run())
    assert fake.refresh_grants == 1
    tokens = {c.token for c in contexts}
    assert len(tokens) == 1 and data["access_token"] not in tokens
    assert all(c.extra == {"project_id": PROJECT} for c in contexts)
    saved = json.loads(path.read_text())
    assert saved["access_token"] == contexts[0].token
    assert saved["refresh_token"] == data["refresh_token"]  # Google sent none: the old one stays
    assert saved["gemini_cli_extra"] == {"keep": [1, 2]} and saved["zz_unknown"] == "x"
    assert saved["expiry_date"] > (time.time() + 3000) * 1000  # milliseconds, like the Gemini CLI
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["oauth_creds.json"]  # no temp file left behind
    assert cred.expires_at == pytest.approx(saved["expiry_date"] / 1000)


def test_a_valid_token_is_used_without_refresh(fake, tmp_path):
    data = fake.issue_login()
    cred = _credential(fake, _write(tmp_path / "c.json", data), data)
    ctx = asyncio.run(cred.auth())
    assert ctx.token == data["access_token"]
    assert _token_requests(fake) == 0


@pytest.mark.parametrize(("ahead", "refreshed"), [(900.0, True), (300.0, False)])
def test_refresh_ahead_window(fake, tmp_path, ahead, refreshed):
    data = fake.issue_login() | {"expiry_date": int((time.time() + 600) * 1000)}  # 10 minutes left
    cred = _credential(fake, _write(tmp_path / "c.json", data), data, refresh_ahead=ahead)
    ctx = asyncio.run(cred.auth())
    assert (ctx.token != data["access_token"]) is refreshed
    assert fake.refresh_grants == int(refreshed)


def test_short_lived_tokens_are_not_refreshed_on_every_request(fake, tmp_path):
    fake.token_lifetime = 600  # shorter than the 900 s window
    data = fake.issue_login(expired=True)
    cred = _credential(fake, _write(tmp_path / "c.json", data), data)

    async def run():
        first = await cred.auth()
        second = await cred.auth()
        return first, second

    first, second = asyncio.run(run())
    assert first.token == second.token
    assert fake.refresh_grants == 1


def test_refresh_runs_off_the_event_loop(fake, tmp_path):
    fake.token_delay = 0.4
    data = fake.issue_login(expired=True)
    cred = _credential(fake, _write(tmp_path / "c.json", data), data)

    async def run():
        ticks = 0
        task = asyncio.create_task(cred.auth())
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await task
        return ticks

    assert asyncio.run(run()) >= 20  # the loop kept running while google-auth waited on the network


def test_force_refresh_is_single_flight(fake, tmp_path):
    data = fake.issue_login()
    cred = _credential(fake, _write(tmp_path / "c.json", data), data)
    fake.revoke(data["access_token"])
    fake.token_delay = 0.1

    async def run():
        return await asyncio.gather(*(cred.force_refresh() for _ in range(10)))

    contexts = asyncio.run(run())
    assert fake.refresh_grants == 1
    assert len({c.token for c in contexts}) == 1 and contexts[0].token != data["access_token"]


def test_invalid_grant_marks_the_account_and_never_retries(fake, tmp_path):
    data = fake.issue_login(expired=True)
    path = _write(tmp_path / "work.json", data)
    before = path.read_bytes()
    fake.invalid_grant = True
    cred = _credential(fake, path, data)

    async def run():
        errors = []
        for _ in range(3):
            with pytest.raises(CredentialError) as e:
                await cred.auth()
            errors.append(str(e.value))
        with pytest.raises(CredentialError):
            await cred.force_refresh()
        return errors, await cred.describe()

    errors, described = asyncio.run(run())
    assert fake.refresh_grants == 1  # permanent: no retry loop
    assert "invalid_grant" in errors[0] and "Token has been expired or revoked" in errors[0]
    assert f"log in again: python -m auth login gemini --out {path}" in errors[0]
    assert errors[1] == errors[0]
    assert cred.login_required == errors[0]
    assert "NEEDS LOGIN" in described
    assert path.read_bytes() == before  # never deleted or rewritten


def test_a_new_login_in_the_file_clears_the_mark(fake, tmp_path):
    data = fake.issue_login(expired=True)
    path = _write(tmp_path / "c.json", data)
    fake.invalid_grant = True
    cred = _credential(fake, path, data)
    with pytest.raises(CredentialError):
        asyncio.run(cred.auth())
    fresh = fake.issue_login()
    _write(path, fresh)
    os.utime(path, (time.time() + 5, time.time() + 5))  # a distinct mtime even on coarse clocks
    assert asyncio.run(cred.auth()).token == fresh["access_token"]
    assert cred.login_required is None


def test_adopts_a_newer_token_the_gemini_cli_wrote(fake, tmp_path):
    data = fake.issue_login(expired=True)
    path = _write(tmp_path / "c.json", data)
    cred = _credential(fake, path, data)
    newer = data | {"access_token": fake.issue_login()["access_token"], "expiry_date": int((time.time() + 3000) * 1e3)}
    _write(path, newer)
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert asyncio.run(cred.auth()).token == newer["access_token"]
    assert _token_requests(fake) == 0


def test_transient_failure_is_not_marked(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    data = {"access_token": "ya29.old", "refresh_token": "1//r", "expiry_date": 0}
    cred = GoogleOAuthCredential("acct", data, path=None, token_url=f"http://127.0.0.1:{port}/token", project_id="p")
    with pytest.raises(CredentialError, match="will retry"):
        asyncio.run(cred.auth())
    assert cred.login_required is None


def test_no_refresh_token_means_log_in_again(fake):
    data = {"access_token": "ya29.expired", "expiry_date": 1000}
    cred = _credential(fake, None, data)
    with pytest.raises(CredentialError, match=r"log in again: python -m auth login gemini$"):
        asyncio.run(cred.auth())
    assert _token_requests(fake) == 0


def test_base64_credentials_are_never_written(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    data = fake.issue_login(expired=True) | {"x": 1}
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    cred = _credential(fake, None, decode_token_base64(encoded))
    ctx = asyncio.run(cred.auth())
    assert ctx.token != data["access_token"] and fake.refresh_grants == 1
    assert list(tmp_path.iterdir()) == []


def test_describe_names_email_expiry_and_project_but_no_secret(fake, tmp_path):
    data = fake.issue_login()
    cred = _credential(fake, _write(tmp_path / "c.json", data), data)
    text = asyncio.run(cred.describe())
    assert EMAIL in text and PROJECT in text and "token valid" in text and str(tmp_path) in text
    for secret in (data["access_token"], data["refresh_token"], data["id_token"]):
        assert secret not in text


def test_token_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(CredentialError, match=r"no credential file at .*missing.json; log in again: python -m auth"):
        read_token_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CredentialError, match="is not JSON"):
        read_token_file(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text('{"token_type": "Bearer"}')
    with pytest.raises(CredentialError, match="neither a refresh_token nor an access_token"):
        read_token_file(tmp_path / "empty.json")


def test_base64_accepts_both_alphabets_and_rejects_garbage():
    raw = json.dumps({"refresh_token": "1//r?>>", "access_token": "a"}).encode()
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert decode_token_base64(encoded)["refresh_token"] == "1//r?>>"
    with pytest.raises(CredentialError, match="credentials_base64"):
        decode_token_base64("%%%not base64%%%")


def test_id_token_claims_are_read_without_verification():
    data = FakeCodeAssist().issue_login()
    assert id_token_claims(data["id_token"])["email"] == EMAIL
    assert id_token_claims("garbage") == {} and id_token_claims(None) == {}
