"""Kiro credentials against the fake Kiro refresh endpoints: token files, refresh, write-back, login check."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth import login_kiro
from auth.credentials import CredentialError
from auth.kiro_oauth import (
    InlineTokenStore,
    KiroCredential,
    TokenStore,
    credential_store,
    format_time,
    parse_time,
)
from core.config import Account, Provider
from providers.kiro import Kiro
from tests.fakes.kiro_server import PROFILE_ARN, FakeKiro, token_file
from tests.fakes.server import Fault

CLIENT_ID, CLIENT_SECRET = "kiro-client-id-1", "kiro-client-secret-7d1e"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKiro]:
    with FakeKiro() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeKiro) -> None:
    fake.clear()


def iso_in(seconds: float) -> str:
    return format_time(time.time() + seconds)


def write(path: Path, data: dict, mode: int = 0o644) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(mode)
    return path


def cred(fake: FakeKiro, path: Path, **kw) -> KiroCredential:
    return KiroCredential(
        TokenStore(path),
        label="test",
        refresh_url=f"{fake.url}/refreshToken",
        refresh_idc_url=f"{fake.url}/token",
        **kw,
    )


def social_file(tmp_path: Path, fake: FakeKiro, expires_in: float, name: str = "tok") -> tuple[Path, str, str]:
    access, refresh = f"{name}-access", f"{name}-refresh"
    fake.add_social(access, refresh)
    path = write(
        tmp_path / "kiro-auth-token.json", token_file("social", access, refresh, expires_at=iso_in(expires_in))
    )
    return path, access, refresh


def idc_dir(tmp_path: Path, fake: FakeKiro, expires_in: float) -> tuple[Path, str, str]:
    """An IdC login as the IDE leaves it: token file, the registration named by clientIdHash, and a
    decoy registration of another client in the same folder."""
    access, refresh = "idc-access", "idc-refresh"
    fake.add_idc(access, refresh, CLIENT_ID, CLIENT_SECRET)
    data = token_file("idc", access, refresh, expires_at=iso_in(expires_in), client_id_hash="3f2a9c")
    path = write(tmp_path / "kiro-auth-token.json", data)
    write(tmp_path / "3f2a9c.json", {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "expiresAt": iso_in(9e6)})
    write(
        tmp_path / "aaaa-other.json", {"clientId": "decoy", "clientSecret": "decoy-secret", "profileArn": PROFILE_ARN}
    )
    return path, access, refresh


# ---------------------------------------------------------------------------------------------
# Reading token files


def test_social_token_carries_profile_arn_region_and_method(fake, tmp_path):
    path, access, _ = social_file(tmp_path, fake, 3600)
    c = cred(fake, path)
    ctx = asyncio.run(c.auth())
    assert ctx.token == access
    assert ctx.extra["profile_arn"] == PROFILE_ARN
    assert ctx.extra["region"] == "us-east-1"
    assert ctx.extra["auth_method"] == "social"
    assert c.expires_at == pytest.approx(time.time() + 3600, abs=5)
    assert c.machine_id == cred(fake, path).machine_id  # stable per account
    assert fake.refresh_requests() == []


def test_idc_uses_only_the_registration_named_by_client_id_hash(fake, tmp_path):
    path, _, _ = idc_dir(tmp_path, fake, -60)
    decoy_before = (tmp_path / "aaaa-other.json").read_bytes()
    c = cred(fake, path)
    ctx = asyncio.run(c.auth())
    (req,) = fake.refresh_requests("/token")
    assert req.json == {
        "clientId": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "grantType": "refresh_token",
        "refreshToken": "idc-refresh",
    }
    assert "profile_arn" not in ctx.extra and ctx.extra["auth_method"] == "idc"
    saved = json.loads(path.read_text())
    # The registration is not copied into the token file, and nothing of the decoy leaks in.
    assert "clientSecret" not in saved and "clientId" not in saved and "profileArn" not in saved
    assert saved["clientIdHash"] == "3f2a9c" and saved["x-ide-private"] == {"keep": "me"}
    assert saved["accessToken"] == ctx.token != "idc-access"
    assert (tmp_path / "aaaa-other.json").read_bytes() == decoy_before


def test_idc_profile_arn_in_the_file_is_never_used(fake, tmp_path):
    path, _, _ = idc_dir(tmp_path, fake, 3600)
    data = json.loads(path.read_text())
    data["profileArn"] = PROFILE_ARN
    write(path, data)
    assert "profile_arn" not in asyncio.run(cred(fake, path).auth()).extra


def test_idc_without_its_registration_file_is_refused(fake, tmp_path):
    path, _, _ = idc_dir(tmp_path, fake, 3600)
    (tmp_path / "3f2a9c.json").unlink()
    with pytest.raises(CredentialError, match=r"3f2a9c\.json does not exist"):
        cred(fake, path)


def test_idc_client_id_hash_must_be_a_plain_file_name(fake, tmp_path):
    path, _, _ = idc_dir(tmp_path, fake, 3600)
    data = json.loads(path.read_text())
    data["clientIdHash"] = "../aaaa-other"
    write(path, data)
    with pytest.raises(CredentialError, match="plain file name"):
        cred(fake, path)


def test_idc_inline_client_credentials_are_enough(fake, tmp_path):
    fake.add_idc(None, "r-inline", CLIENT_ID, CLIENT_SECRET)
    data = token_file(
        "idc", "gone", "r-inline", expires_at=iso_in(-5), client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    path = write(tmp_path / "inline.json", data)
    ctx = asyncio.run(cred(fake, path).auth())
    assert ctx.token.startswith("kiro-idc-access-")
    assert json.loads(path.read_text())["clientSecret"] == CLIENT_SECRET  # it was in the file: kept


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"authMethod": "social"}', "neither accessToken nor refreshToken"),
        ('{"accessToken": "a", "refreshToken": "r", "authMethod": "IdC"}', "clientIdHash"),
    ],
)
def test_unusable_token_files_say_why(fake, tmp_path, content, message):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CredentialError, match=message):
        cred(fake, path)


def test_parse_time_reads_what_the_ide_and_peers_write():
    assert parse_time("2026-01-02T03:04:05.678Z") == pytest.approx(1767323045.678)
    assert parse_time("2026-01-02T03:04:05+00:00") == pytest.approx(1767323045)
    assert parse_time("2026-01-02T04:04:05+01:00") == pytest.approx(1767323045)
    assert parse_time(1767323045678) == pytest.approx(1767323045.678)
    assert parse_time(1767323045) == 1767323045
    assert parse_time("soon") is None and parse_time(None) is None and parse_time(True) is None
    assert format_time(1767323045.678) == "2026-01-02T03:04:05.678Z"


# ---------------------------------------------------------------------------------------------
# Refresh


def test_refresh_ahead_of_expiry_rewrites_the_file_0600_keeping_unknown_fields(fake, tmp_path):
    path, access, refresh = social_file(tmp_path, fake, 600)  # inside refresh_ahead (900 s)
    c = cred(fake, path)
    ctx = asyncio.run(c.auth())
    (req,) = fake.refresh_requests("/refreshToken")
    assert req.json == {"refreshToken": refresh}
    assert req.headers["user-agent"] == f"KiroIDE-0.11.63-{c.machine_id}"
    assert ctx.token != access and ctx.extra["profile_arn"] == PROFILE_ARN
    saved = json.loads(path.read_text())
    assert saved["accessToken"] == ctx.token
    assert saved["refreshToken"] != refresh  # the rotated one was persisted
    assert parse_time(saved["expiresAt"]) == pytest.approx(time.time() + 3600, abs=5)
    assert saved["x-ide-private"] == {"keep": "me"} and saved["provider"] == "Github"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    # The rotated refresh token works for the next refresh.
    assert asyncio.run(c.force_refresh()).token != ctx.token


def test_no_refresh_while_the_token_is_fresh(fake, tmp_path):
    path, access, _ = social_file(tmp_path, fake, 3600)
    c = cred(fake, path, refresh_ahead=900)
    assert asyncio.run(c.auth()).token == access
    assert fake.refresh_requests() == []


def test_concurrent_callers_share_one_refresh(fake, tmp_path):
    path, _, _ = social_file(tmp_path, fake, -10)

    async def go():
        c = cred(fake, path)
        results = await asyncio.gather(*(c.auth() for _ in range(100)))
        forced = await asyncio.gather(*(c.force_refresh() for _ in range(20)))
        return results, forced

    results, forced = asyncio.run(go())
    assert len({r.token for r in results}) == 1
    assert len({r.token for r in forced}) == 1 and forced[0].token != results[0].token
    assert len(fake.refresh_requests()) == 2  # one for the 100 auth() calls, one for the 20 forced


def test_permanent_refusal_asks_for_a_new_login_and_is_not_retried(fake, tmp_path):
    path = write(tmp_path / "t.json", token_file("social", "dead", "unknown-refresh-token", expires_at=iso_in(-5)))
    c = cred(fake, path)

    async def go():
        with pytest.raises(CredentialError) as first:
            await c.auth()
        with pytest.raises(CredentialError):
            await c.auth()
        return str(first.value)

    message = asyncio.run(go())
    assert "Invalid refresh token provided" in message and "log in again in the Kiro IDE" in message
    assert "unknown-refresh-token" not in message
    assert len(fake.refresh_requests()) == 1
    assert "refresh refused" in asyncio.run(c.describe())
    # The user logs in again in the IDE: the rewritten file is picked up without a refresh call.
    fake.add_social("relogged-access", "relogged-refresh")
    write(path, token_file("social", "relogged-access", "relogged-refresh", expires_at=iso_in(3600)))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert asyncio.run(c.auth()).token == "relogged-access"
    assert len(fake.refresh_requests()) == 1


def test_idc_invalid_grant_is_permanent(fake, tmp_path):
    path, _, _ = idc_dir(tmp_path, fake, -5)
    data = json.loads(path.read_text())
    data["refreshToken"] = "revoked"
    write(path, data)
    with pytest.raises(CredentialError, match=r"invalid_grant.*log in again"):
        asyncio.run(cred(fake, path).auth())


def test_transient_failure_keeps_a_still_valid_token(fake, tmp_path, caplog):
    path, access, _ = social_file(tmp_path, fake, 300)
    fake.faults.append(Fault(503))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(cred(fake, path).auth()).token == access
    assert "refresh failed, using the current token" in caplog.text
    assert access not in caplog.text and "tok-refresh" not in caplog.text


def test_transient_failure_with_an_expired_token_fails_clearly(fake, tmp_path):
    path, _, _ = social_file(tmp_path, fake, -5)
    fake.faults.append(Fault(503))
    with pytest.raises(CredentialError, match="token refresh failed: HTTP 503"):
        asyncio.run(cred(fake, path).auth())


def test_a_connection_reset_is_retried_once(fake, tmp_path):
    path, access, _ = social_file(tmp_path, fake, -5)
    fake.faults.append(Fault(kind="reset_before_headers"))
    assert asyncio.run(cred(fake, path).auth()).token != access
    assert len(fake.refresh_requests()) == 2


def test_token_without_expiry_is_refreshed_at_first_use(fake, tmp_path):
    path, access, _ = social_file(tmp_path, fake, 3600)
    data = json.loads(path.read_text())
    del data["expiresAt"]
    write(path, data)
    c = cred(fake, path)
    assert c.expires_at is None
    assert asyncio.run(c.auth()).token != access


# ---------------------------------------------------------------------------------------------
# Accounts from config


def test_inline_token_is_refreshed_in_memory_only(fake, tmp_path):
    fake.add_social(None, "inline-refresh")
    raw = token_file("social", "old", "inline-refresh", expires_at=iso_in(-5))
    encoded = base64.b64encode(json.dumps(raw).encode()).decode()
    provider = Provider(refresh_url=f"{fake.url}/refreshToken")
    c = Kiro().credential(provider, Account(credentials_base64=encoded))
    before = sorted(tmp_path.rglob("*"))
    ctx = asyncio.run(c.auth())
    assert ctx.token.startswith("kiro-social-access-") and ctx.extra["profile_arn"] == PROFILE_ARN
    assert sorted(tmp_path.rglob("*")) == before
    assert "credentials_base64" in asyncio.run(c.describe())


def test_inline_idc_token_needs_its_client_inline():
    raw = token_file("idc", "a", "r", expires_at=iso_in(60), client_id_hash="3f2a9c")
    encoded = base64.b64encode(json.dumps(raw).encode()).decode()
    with pytest.raises(CredentialError, match="must carry clientId and clientSecret"):
        Kiro().credential(Provider(), Account(credentials_base64=encoded))


def test_credential_sources_are_exclusive_and_default_to_the_ide_file(tmp_path):
    with pytest.raises(CredentialError, match="not both"):
        credential_store(tmp_path / "x.json", "e30=")
    with pytest.raises(CredentialError, match="not base64 of a JSON"):
        credential_store(None, "!!!")
    store = credential_store(None, None)
    assert isinstance(store, TokenStore) and store.path == Path("~/.aws/sso/cache/kiro-auth-token.json").expanduser()
    assert isinstance(credential_store(None, "e30="), InlineTokenStore)


def test_describe_shows_the_login_but_no_secret(fake, tmp_path):
    path, access, refresh = social_file(tmp_path, fake, 3030)
    line = asyncio.run(cred(fake, path).describe())
    assert "social login (Github)" in line and "region us-east-1" in line and "valid for 50 min" in line
    assert access not in line and refresh not in line
    (tmp_path / "idc").mkdir()
    path, _, _ = idc_dir(tmp_path / "idc", fake, -150)
    line = asyncio.run(cred(fake, path).describe())
    assert "IdC login (BuilderId)" in line and "expired 2 min ago" in line
    assert CLIENT_SECRET not in line and "idc-refresh" not in line


# ---------------------------------------------------------------------------------------------
# python -m auth login kiro


def test_login_checks_the_file_refreshes_and_prints_the_config(fake, tmp_path, capsys):
    path, access, refresh = social_file(tmp_path, fake, 600)
    code = login_kiro.main(["--from", str(path), "--refresh-url", f"{fake.url}/refreshToken", "--label", "me"])
    out = capsys.readouterr().out
    assert code == 0
    assert "login:        social (Github)" in out and "region:       us-east-1" in out
    assert "refresh:      works" in out
    assert f"credentials: {path}" in out and "- label: me" in out and "claude-kiro-oauth:" in out
    assert access not in out and refresh not in out and "EHGA3GRVQMUK" not in out
    assert json.loads(path.read_text())["accessToken"] != access


def test_login_save_writes_a_self_contained_idc_copy(fake, tmp_path, capsys):
    path, _, _ = idc_dir(tmp_path, fake, 3600)
    target = tmp_path / "accounts" / "kiro-a.json"
    code = login_kiro.main(
        ["--from", str(path), "--refresh-idc-url", f"{fake.url}/token", "--save", str(target), "--label", "a"]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"credentials: {target}" in out
    saved = json.loads(target.read_text())
    assert saved["clientId"] == CLIENT_ID and saved["clientSecret"] == CLIENT_SECRET
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert CLIENT_SECRET not in out
    # The copy works on its own: no registration file beside it.
    assert asyncio.run(cred(fake, target).force_refresh()).token.startswith("kiro-idc-access-")


def test_login_reports_a_refused_refresh(fake, tmp_path, capsys):
    path = write(tmp_path / "t.json", token_file("social", "a", "not-known", expires_at=iso_in(60)))
    assert login_kiro.main(["--from", str(path), "--refresh-url", f"{fake.url}/refreshToken"]) == 1
    out = capsys.readouterr().out
    assert "refresh:      FAILED" in out and "log in again" in out and "not-known" not in out
    assert login_kiro.main(["--from", str(tmp_path / "missing.json")]) == 1
    assert "Log in with the Kiro IDE first" in capsys.readouterr().out
    assert login_kiro.main(["--from", str(path), "--no-refresh"]) == 0
