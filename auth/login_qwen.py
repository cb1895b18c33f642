"""`python -m auth login qwen`: Qwen Code's OAuth device-code login (with PKCE), saved as a token file.

The same flow qwen-code runs: ask for a device code, show the verification URL and user code,
poll the token endpoint (authorization_pending -> keep polling, slow_down -> poll 1.5x slower,
at most every 10 s) until the user approves or the code expires, then save the file with mode
0600 in the format qwen-code reads, so the CLI and the gateway can share it.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from auth.pkce import pkce_pair
from auth.qwen_oauth import (
    DEFAULT_CREDENTIALS,
    DEFAULT_TOKEN_URL,
    QWEN_CLIENT_ID,
    QWEN_SCOPE,
    clear_refusal,
    device_code_url,
    oauth_error_text,
    user_agent,
    write_private_json,
)
from core.config import ConfigError, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
POLL_INTERVAL = 2.0
MAX_POLL_INTERVAL = 10.0
HTTP_TIMEOUT = 30.0
AVAILABILITY = "Note: Qwen discontinued the Qwen OAuth free tier on 2026-04-15; accounts without access are refused."


class LoginFailed(Exception):
    """The login cannot finish; the message is for the user."""


def _json(r: httpx2.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(r: httpx2.Response) -> str:
    return f"{r.status_code} {oauth_error_text(_json(r) or None, r.content)}"


class DeviceLogin:
    """One device-code login against a token endpoint (and the device endpoint beside it)."""

    def __init__(
        self,
        client: httpx2.Client,
        token_url: str,
        device_url: str,
        *,
        interval: float = POLL_INTERVAL,
        max_interval: float = MAX_POLL_INTERVAL,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.token_url = token_url
        self.device_url = device_url
        self.interval = interval
        self.max_interval = max_interval
        self._sleep = sleep
        self._clock = clock

    def request_device_code(self, challenge: str) -> dict[str, Any]:
        form = {
            "client_id": QWEN_CLIENT_ID,
            "scope": QWEN_SCOPE,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        headers = {"accept": "application/json", "x-request-id": str(uuid.uuid4()), "user-agent": user_agent()}
        r = self.client.post(self.device_url, data=form, headers=headers)
        data = _json(r)
        if r.status_code != 200 or not all(isinstance(data.get(k), str) for k in ("device_code", "user_code")):
            raise LoginFailed(f"Qwen refused the device authorization ({_describe(r)}). {AVAILABILITY}")
        return data

    def poll(self, device_code: str, verifier: str, expires_in: float) -> dict[str, Any]:
        """The token answer once the user approved; LoginFailed on expiry or refusal."""
        form = {
            "grant_type": DEVICE_GRANT,
            "client_id": QWEN_CLIENT_ID,
            "device_code": device_code,
            "code_verifier": verifier,
        }
        headers = {"accept": "application/json", "user-agent": user_agent()}
        deadline = self._clock() + expires_in
        interval = self.interval
        while self._clock() < deadline:
            self._sleep(min(interval, max(0.0, deadline - self._clock())))
            try:
                r = self.client.post(self.token_url, data=form, headers=headers)
            except httpx2.TransportError as e:
                print(f"  (token endpoint unreachable: {type(e).__name__}; still trying)", file=sys.stderr)
                continue
            data = _json(r)
            error = data.get("error")
            if r.status_code == 200 and isinstance(data.get("access_token"), str) and data["access_token"]:
                return data
            if r.status_code == 400 and error == "authorization_pending":
                continue
            if r.status_code == 429 and error == "slow_down":
                interval = min(interval * 1.5, self.max_interval)
                continue
            if r.status_code == 401:
                raise LoginFailed("the device code expired or is invalid; run the login again")
            if r.status_code == 429:
                raise LoginFailed("Qwen is rate limiting the login; try again later")
            raise LoginFailed(f"Qwen refused the login ({_describe(r)}). {AVAILABILITY}")
        raise LoginFailed("the device code expired before the login was approved; run the login again")


def token_file(answer: dict[str, Any], now: float) -> dict[str, Any]:
    """The token answer in qwen-code's file format (expiry_date in epoch milliseconds)."""
    lifetime = answer.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = 3600
    data: dict[str, Any] = {
        "access_token": answer["access_token"],
        "refresh_token": answer.get("refresh_token") or "",
        "token_type": answer.get("token_type") or "Bearer",
        "resource_url": answer.get("resource_url") or "",
        "expiry_date": int((now + float(lifetime)) * 1000),
    }
    if answer.get("id_token"):
        data["id_token"] = answer["id_token"]
    if not data["resource_url"]:
        del data["resource_url"]
    return data


def _endpoints(config_path: Path, explicit: bool) -> tuple[str, float]:
    """(token_url, connect timeout) from the config's openai-qwen-oauth provider, else the defaults."""
    if not explicit and not config_path.exists():
        return DEFAULT_TOKEN_URL, 10.0
    config = load_config(config_path)
    provider = config.providers.get("openai-qwen-oauth")
    if provider is None:
        return DEFAULT_TOKEN_URL, 10.0
    return str(provider.token_url or DEFAULT_TOKEN_URL), provider.connect_timeout


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m auth login qwen", description="Log in to Qwen Code (device code).")
    p.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_CREDENTIALS, help="token file (default ~/.qwen/oauth_creds.json)"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="gateway config (for providers.openai-qwen-oauth.token_url)"
    )
    # For tests against a fake server: the device endpoint and the first poll interval.
    p.add_argument("--device-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL, help=argparse.SUPPRESS)
    return p


def _authorize(login: DeviceLogin, open_browser: bool) -> dict[str, Any]:
    """Device code, the URL and user code for the user, then polling: the token answer."""
    verifier, challenge = pkce_pair()
    device = login.request_device_code(challenge)
    url = device.get("verification_uri_complete") or device.get("verification_uri") or ""
    print("To log in to Qwen Code, open this URL and approve the request:")
    print(f"  {url}")
    print(f"User code: {device['user_code']}")
    sys.stdout.flush()
    if open_browser and url:
        webbrowser.open(url)
    expires_in = device.get("expires_in")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = 600
    return login.poll(device["device_code"], verifier, float(expires_in))


def _save(out: Path, answer: dict[str, Any]) -> int:
    data = token_file(answer, time.time())
    if not data["refresh_token"]:
        print("warning: Qwen returned no refresh token; the login ends when the access token expires", file=sys.stderr)
    try:
        write_private_json(out, data)
        clear_refusal(out)  # a refusal recorded for the previous login no longer applies
    except OSError as e:
        print(f"login succeeded but {out} could not be written: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"Saved Qwen credentials to {out} (mode 0600).")
    if out != DEFAULT_CREDENTIALS.expanduser():
        print(f"Use it under providers.openai-qwen-oauth.accounts in config.yaml as: credentials: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        token_url, connect_timeout = _endpoints(args.config or DEFAULT_CONFIG, args.config is not None)
    except ConfigError as e:
        print(f"invalid configuration {args.config}: {e}", file=sys.stderr)
        return 1
    timeout = httpx2.Timeout(HTTP_TIMEOUT, connect=connect_timeout)
    device_url = args.device_url or device_code_url(token_url)
    try:
        with httpx2.Client(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            login = DeviceLogin(client, token_url, device_url, interval=args.poll_interval)
            answer = _authorize(login, open_browser=not args.no_browser)
    except LoginFailed as e:
        print(f"login failed: {e}", file=sys.stderr)
        return 1
    except httpx2.HTTPError as e:
        print(f"login failed: cannot reach Qwen ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    return _save(args.out.expanduser(), answer)
