"""`python -m auth login codex`: the ChatGPT sign-in of the Codex CLI, saved as a Codex auth.json.

Browser login (default): PKCE S256 with a loopback redirect on 127.0.0.1:1455, or 1457 when 1455 is
busy -- the only two redirect URIs OpenAI registered for this client. `--device`: the device-code
login (a code to enter at auth.openai.com/codex/device; the server makes the PKCE pair). Either way
the file is written atomically with mode 0600 in the Codex CLI's own format, so the CLI and the
gateway can share it.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import urllib.parse
import webbrowser
from pathlib import Path
from typing import Any

import httpx2

from auth.codex_oauth import (
    CODEX_CLIENT_ID,
    DEFAULT_CREDENTIALS,
    DEFAULT_TOKEN_URL,
    CodexTokens,
    jwt_claims,
    write_auth_file,
)
from auth.credentials import CredentialError
from auth.oauth_callback import OAuthCallbackServer
from auth.pkce import pkce_pair
from auth.qwen_oauth import clear_refusal, oauth_error_text
from core.config import ConfigError, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
PROVIDER = "openai-codex-oauth"
PORTS = (1455, 1457)
CALLBACK_PATH = "/auth/callback"
SCOPE = "openid profile email offline_access"
ORIGINATOR = "aiclient_mitm"
HTTP_TIMEOUT = 30.0
LOGIN_TIMEOUT = 600.0
DEVICE_LIFETIME = 900.0


class LoginFailed(Exception):
    """The login cannot finish; the message is for the user."""


def issuer_of(token_url: str) -> str:
    """`https://auth.openai.com/oauth/token` -> `https://auth.openai.com`."""
    split = urllib.parse.urlsplit(token_url)
    return f"{split.scheme}://{split.netloc}"


def authorize_url(issuer: str, redirect_uri: str, challenge: str, state: str) -> str:
    query = {
        "response_type": "code",
        "client_id": CODEX_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "state": state,
        "originator": ORIGINATOR,
    }
    return f"{issuer}/oauth/authorize?{urllib.parse.urlencode(query)}"


def bind_callback(state: str, ports: tuple[int, ...] = PORTS) -> OAuthCallbackServer:
    """The loopback listener on the first free registered port; the redirect names `localhost`,
    exactly as OpenAI's client registered it."""
    for port in ports:
        try:
            return OAuthCallbackServer(
                port, state, path=CALLBACK_PATH, vendor="OpenAI", error=LoginFailed, redirect_host="localhost"
            )
        except OSError:
            continue
    raise LoginFailed(
        f"ports {' and '.join(map(str, ports))} on 127.0.0.1 are busy (another login running?); "
        "close it or use: python -m auth login codex --device"
    )


def exchange_code(client: httpx2.Client, token_url: str, code: str, verifier: str, redirect_uri: str) -> dict:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CODEX_CLIENT_ID,
        "code_verifier": verifier,
    }
    r = client.post(token_url, data=form, headers={"accept": "application/json"})
    data = _json(r)
    if r.status_code != 200 or not isinstance(data.get("access_token"), str):
        raise LoginFailed(f"OpenAI refused the code exchange ({r.status_code} {oauth_error_text(data, r.content)})")
    return data


def browser_login(client: httpx2.Client, token_url: str, open_browser: bool) -> dict:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    server = bind_callback(state)
    try:
        url = authorize_url(issuer_of(token_url), server.redirect_uri, challenge, state)
        print("To sign in with ChatGPT, open this URL in a browser on this machine:")
        print(f"  {url}", flush=True)
        if open_browser:
            webbrowser.open(url)
        code = server.wait(LOGIN_TIMEOUT)
        return exchange_code(client, token_url, code, verifier, server.redirect_uri)
    finally:
        server.server_close()


def device_login(client: httpx2.Client, token_url: str, *, poll_floor: float = 0.0) -> dict:
    issuer = issuer_of(token_url)
    r = client.post(f"{issuer}/api/accounts/deviceauth/usercode", json={"client_id": CODEX_CLIENT_ID})
    if r.status_code == 404:
        raise LoginFailed("device login is not enabled for this server; use the browser login")
    data = _json(r)
    device_id = data.get("device_auth_id")
    user_code = data.get("user_code") or data.get("usercode")
    if r.status_code != 200 or not isinstance(device_id, str) or not isinstance(user_code, str):
        raise LoginFailed(f"OpenAI refused the device login ({r.status_code} {oauth_error_text(data, r.content)})")
    try:
        interval = max(poll_floor, float(data.get("interval") or 5))
    except (TypeError, ValueError):
        interval = 5.0
    print(f"To sign in with ChatGPT, open {issuer}/codex/device and enter the code: {user_code}")
    print("(the code is valid for 15 minutes)", flush=True)
    deadline = time.monotonic() + DEVICE_LIFETIME
    while time.monotonic() < deadline:
        time.sleep(interval)
        poll = client.post(
            f"{issuer}/api/accounts/deviceauth/token", json={"device_auth_id": device_id, "user_code": user_code}
        )
        if poll.status_code in (403, 404):
            continue  # not approved yet
        answer = _json(poll)
        if poll.status_code != 200 or not isinstance(answer.get("authorization_code"), str):
            raise LoginFailed(f"device login failed ({poll.status_code} {oauth_error_text(answer, poll.content)})")
        return exchange_code(
            client,
            token_url,
            answer["authorization_code"],
            str(answer.get("code_verifier") or ""),
            f"{issuer}/deviceauth/callback",
        )
    raise LoginFailed("the device code expired before the login was approved; run the login again")


def auth_file(answer: dict[str, Any], now: float) -> dict[str, Any]:
    """The token answer in the Codex CLI's auth.json format."""
    tokens = {k: answer.get(k) for k in ("id_token", "access_token", "refresh_token")}
    claims = jwt_claims(answer.get("id_token")) or jwt_claims(answer.get("access_token"))
    auth = claims.get("https://api.openai.com/auth") if isinstance(claims, dict) else None
    tokens["account_id"] = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": tokens,
        "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now)),
    }


def _json(r: httpx2.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _token_url(config_path: Path, explicit: bool) -> str:
    if not explicit and not config_path.exists():
        return DEFAULT_TOKEN_URL
    provider = load_config(config_path).providers.get(PROVIDER)
    return str(provider.token_url or DEFAULT_TOKEN_URL) if provider is not None else DEFAULT_TOKEN_URL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m auth login codex", description="Sign in with ChatGPT for Codex.")
    p.add_argument("--device", action="store_true", help="device-code login (no browser on this machine)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    p.add_argument("--out", type=Path, default=DEFAULT_CREDENTIALS, help="auth file (default ~/.codex/auth.json)")
    p.add_argument("--config", type=Path, default=None, help="gateway config (for providers.openai-codex-oauth)")
    p.add_argument("--poll-interval", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: a floor
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        token_url = _token_url(args.config or DEFAULT_CONFIG, args.config is not None)
    except ConfigError as e:
        print(f"invalid configuration {args.config}: {e}", file=sys.stderr)
        return 1
    try:
        with httpx2.Client(timeout=HTTP_TIMEOUT, trust_env=False, follow_redirects=False) as client:
            if args.device:
                answer = device_login(client, token_url, poll_floor=args.poll_interval)
            else:
                answer = browser_login(client, token_url, open_browser=not args.no_browser)
    except LoginFailed as e:
        print(f"login failed: {e}", file=sys.stderr)
        return 1
    except httpx2.HTTPError as e:
        print(f"login failed: cannot reach OpenAI ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    out = args.out.expanduser()
    data = auth_file(answer, time.time())
    try:
        tokens = CodexTokens.parse(data, out)
    except CredentialError as e:
        print(f"login failed: the answer is not a usable ChatGPT login ({e})", file=sys.stderr)
        return 1
    try:
        write_auth_file(out, tokens)
        clear_refusal(out)  # a refusal recorded for the previous login no longer applies
    except OSError as e:
        print(f"login succeeded but {out} could not be written: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"Signed in (ChatGPT {tokens.plan_type or 'plan unknown'}). Saved to {out} (mode 0600).")
    if out != DEFAULT_CREDENTIALS.expanduser():
        print(f"Use it under providers.{PROVIDER}.accounts in config.yaml as: credentials: {out}")
    return 0
