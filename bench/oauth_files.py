"""Credential files for the OAuth providers, valid and far from expiry, so no refresh ever runs.

The formats are the ones the providers' own tools write (shared/reference/upstreams.md): the
google-auth-library token JSON of gemini-cli (`~/.gemini/oauth_creds.json`) and Kiro IDE's
`kiro-auth-token.json` (social login). Tokens are random bench values; every URL a provider could
call to refresh or discover points at the loopback fake, which answers 404.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

TOKEN_LIFETIME_S = 6 * 3600  # far beyond any refresh_ahead, and beyond the whole bench


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def gemini_creds(directory: Path) -> Path:
    return _write(
        directory / "oauth_creds.json",
        {
            "access_token": "ya29.bench-" + secrets.token_urlsafe(24),
            "refresh_token": "1//bench-" + secrets.token_urlsafe(24),
            "scope": "https://www.googleapis.com/auth/cloud-platform openid",
            "token_type": "Bearer",
            "id_token": "bench.id.token",
            "expiry_date": int((time.time() + TOKEN_LIFETIME_S) * 1000),
        },
    )


def kiro_creds(directory: Path) -> Path:
    expires = datetime.fromtimestamp(time.time() + TOKEN_LIFETIME_S, UTC)
    return _write(
        directory / "kiro-auth-token.json",
        {
            "accessToken": "aoa-bench-" + secrets.token_urlsafe(24),
            "refreshToken": "aor-bench-" + secrets.token_urlsafe(24),
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
            "authMethod": "social",
            "provider": "Google",
            "region": "us-east-1",
            "profileArn": "arn:aws:codewhisperer:us-east-1:123456789012:profile/BENCHPROFILE",
        },
    )
