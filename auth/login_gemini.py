"""`python -m auth login gemini`: a Google login with the Gemini CLI's OAuth client, saved as its token file.

Installed-app flow (RFC 8252) with PKCE S256 and a checked `state`: by default the browser comes
back to a one-shot listener on 127.0.0.1; with --no-browser the URL is printed, Google shows the
code on codeassist.google.com (the Gemini CLI's headless redirect) and the user pastes it (or the
whole redirect URL) here. The file is written atomically with mode 0600 in the Gemini CLI's
format, project discovery runs once, and the email and project are printed -- never a token.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import urllib.parse
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from auth.code_assist import OPTIONS, ProjectDiscovery, ProjectStore, provider_options
from auth.credentials import CredentialError
from auth.google_oauth import (
    DEFAULT_CREDENTIALS_PATH,
    DEFAULT_TOKEN_URL,
    GEMINI_CLI_CLIENT_ID,
    GEMINI_CLI_CLIENT_SECRET,
    SCOPES,
    TokenRejected,
    id_token_claims,
)
from auth.oauth_callback import OAuthCallbackServer
from auth.pkce import pkce_pair
from core.config import Config, ConfigError, load_config
from core.files import write_json_atomic

AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
HEADLESS_REDIRECT = "https://codeassist.google.com/authcode"
USERINFO_URL = "https://www.googleapis.com/oauth2/v2/userinfo"
CALLBACK_PATH = "/oauth2callback"
PROVIDER_ID = "gemini-cli-oauth"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
HTTP_TIMEOUT = 30.0


class LoginError(Exception):
    """The login cannot go on; the message says why (never with a token in it)."""


@dataclass(slots=True)
class Pkce:
    verifier: str
    challenge: str
    state: str

    @classmethod
    def new(cls) -> Pkce:
        verifier, challenge = pkce_pair()
        return cls(verifier, challenge, secrets.token_urlsafe(24))


def authorize_url(pkce: Pkce, redirect_uri: str) -> str:
    query = {
        "client_id": GEMINI_CLI_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(SCOPES),
        "access_type": "offline",
        "prompt": "consent",
        "state": pkce.state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    return f"{AUTHORIZE_URL}?{urllib.parse.urlencode(query)}"


# ---------------------------------------------------------------------------------------------
# Getting the code


def code_from_paste(text: str, state: str) -> str:
    """The code from a pasted redirect URL or query (state checked when present), or a bare code."""
    text = text.strip()
    if not text:
        raise LoginError("nothing was pasted")
    if "code=" not in text:
        return text
    query = urllib.parse.urlsplit(text).query if "://" in text else text.lstrip("?")
    params = dict(urllib.parse.parse_qsl(query))
    if "state" in params and params["state"] != state:
        raise LoginError("the pasted URL belongs to another login (state mismatch); start again")
    if "error" in params:
        raise LoginError(f"Google refused the login: {params['error']}")
    if not params.get("code"):
        raise LoginError("the pasted URL carries no code")
    return params["code"]


# ---------------------------------------------------------------------------------------------
# Tokens, account, project


def exchange_code(token_url: str, code: str, pkce: Pkce, redirect_uri: str) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": pkce.verifier,
        "redirect_uri": redirect_uri,
        "client_id": GEMINI_CLI_CLIENT_ID,
        "client_secret": GEMINI_CLI_CLIENT_SECRET,
    }
    try:
        r = httpx2.post(token_url, data=form, timeout=HTTP_TIMEOUT, trust_env=False)
    except httpx2.HTTPError as e:
        raise LoginError(f"token endpoint {token_url} unreachable: {type(e).__name__}") from None
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code != 200 or not isinstance(data, dict) or not data.get("access_token"):
        error = data.get("error") if isinstance(data, dict) else None
        detail = data.get("error_description") if isinstance(data, dict) else None
        raise LoginError(f"the code was refused ({r.status_code} {error or ''}{': ' + detail if detail else ''})")
    if not data.get("refresh_token"):
        raise LoginError("Google sent no refresh token; revoke the app's access in your Google account and retry")
    return data


def token_file(tokens: dict[str, Any]) -> dict[str, Any]:
    """The Gemini CLI's oauth_creds.json layout (google-auth-library's token JSON)."""
    expires_in = tokens.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3599.0
    data: dict[str, Any] = {
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "scope": tokens.get("scope") or " ".join(SCOPES),
        "token_type": tokens.get("token_type") or "Bearer",
        "expiry_date": int((time.time() + lifetime) * 1000),
    }
    if tokens.get("id_token"):
        data["id_token"] = tokens["id_token"]
    return data


def account_email(tokens: dict[str, Any], userinfo_url: str) -> str | None:
    email = id_token_claims(tokens.get("id_token")).get("email")
    if isinstance(email, str) and email:
        return email
    try:
        r = httpx2.get(
            userinfo_url,
            headers={"authorization": f"Bearer {tokens['access_token']}"},
            timeout=HTTP_TIMEOUT,
            trust_env=False,
        )
        email = r.json().get("email") if r.status_code == 200 else None
    except (httpx2.HTTPError, ValueError, AttributeError):
        return None
    return email if isinstance(email, str) and email else None


@dataclass(slots=True)
class Target:
    """Where the login goes and what the config says about that account."""

    out: Path
    label: str
    project_id: str | None
    base_url: str | None
    token_url: str
    state_dir: Path | None
    options: dict[str, float]


def _target(args: argparse.Namespace) -> Target:
    config = Config()
    config_dir = args.config.resolve().parent
    if args.config.exists():
        config = load_config(args.config)
    provider = config.providers.get(PROVIDER_ID)
    out = (args.out or DEFAULT_CREDENTIALS_PATH).expanduser()
    out = out if out.is_absolute() else Path.cwd() / out
    label, project = out.name, None
    for i, account in enumerate(provider.accounts if provider else []):
        configured = (account.credentials or DEFAULT_CREDENTIALS_PATH).expanduser()
        configured = configured if configured.is_absolute() else config_dir / configured
        if account.credentials_base64 is None and configured.resolve() == out.resolve():
            label, project = account.display_label(i), account.project_id
            break
    state_dir = config.state_dir if config.state_dir.is_absolute() else config_dir / config.state_dir
    token_url = args.token_url or (str(provider.token_url) if provider and provider.token_url else DEFAULT_TOKEN_URL)
    return Target(
        out,
        label,
        project,
        str(provider.base_url) if provider and provider.base_url else None,
        token_url,
        state_dir if args.config.exists() else None,
        provider_options(provider) if provider else dict(OPTIONS),
    )


def discover_project(target: Target, token: str) -> str:
    discovery = ProjectDiscovery(
        target.base_url,
        target.label,
        ProjectStore(target.state_dir),
        poll_interval=target.options["onboard_poll_interval"],
        onboard_timeout=target.options["onboard_timeout"],
    )
    return asyncio.run(discovery(token))


# ---------------------------------------------------------------------------------------------
# The command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m auth login gemini",
        description="Log in with Google for the gemini-cli-oauth provider (Gemini Code Assist).",
    )
    p.add_argument("--no-browser", action="store_true", help="print the URL and paste the code shown by Google")
    p.add_argument("--port", type=int, default=0, help="loopback port for the browser's redirect (0: any free port)")
    p.add_argument("--out", type=Path, help=f"credential file to write (default {DEFAULT_CREDENTIALS_PATH})")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="gateway config (token URL, project, state)")
    p.add_argument("--timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    p.add_argument("--token-url", help=argparse.SUPPRESS)
    p.add_argument("--userinfo-url", default=USERINFO_URL, help=argparse.SUPPRESS)
    return p


def _get_code(args: argparse.Namespace, pkce: Pkce) -> tuple[str, str]:
    """(code, redirect_uri) from the browser's redirect or from what the user pastes."""
    if args.no_browser:
        url = authorize_url(pkce, HEADLESS_REDIRECT)
        print("Open this URL in a browser and sign in with Google:", flush=True)
        print(url, flush=True)
        print("Then paste the code Google shows (or the whole URL you were sent to) and press Enter:", flush=True)
        line = sys.stdin.readline()
        return code_from_paste(line, pkce.state), HEADLESS_REDIRECT
    try:
        server = OAuthCallbackServer(args.port, pkce.state, path=CALLBACK_PATH, vendor="Google", error=LoginError)
    except OSError as e:
        raise LoginError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None
    with server:
        url = authorize_url(pkce, server.redirect_uri)
        print("Open this URL in a browser and sign in with Google:", flush=True)
        print(url, flush=True)
        print(f"Waiting for the browser to come back to {server.redirect_uri} ...", flush=True)
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass
        return server.wait(args.timeout), server.redirect_uri


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        target = _target(args)
    except (ConfigError, CredentialError) as e:
        print(f"invalid configuration {args.config}: {e}", file=sys.stderr)
        return 2
    pkce = Pkce.new()
    try:
        code, redirect_uri = _get_code(args, pkce)
        tokens = exchange_code(target.token_url, code, pkce, redirect_uri)
        write_json_atomic(target.out, token_file(tokens))
    except LoginError as e:
        print(f"login failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"login failed: cannot write {target.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"Saved the login to {target.out} (mode 0600).", flush=True)
    email = account_email(tokens, args.userinfo_url)
    print(f"Account: {email or 'email unknown'}", flush=True)
    if target.project_id:
        print(f"Project: {target.project_id} (from the config)", flush=True)
        return 0
    try:
        project = discover_project(target, tokens["access_token"])
    except (TokenRejected, CredentialError) as e:
        print(f"Project: not found -- {e}", file=sys.stderr)
        return 1
    print(f"Project: {project} (discovered, saved for account {target.label})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
