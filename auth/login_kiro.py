"""`python -m auth login kiro`: check a Kiro login and print the config that uses it.

Kiro logins happen in the Kiro IDE (Google/GitHub, Builder ID or IAM Identity Center); the IDE
writes `~/.aws/sso/cache/kiro-auth-token.json`. This command reads that file (or --from PATH),
shows the kind of login, region and expiry, tries one token refresh (the file is written back,
as the IDE would), optionally saves a self-contained copy for a multi-account pool, and prints
the config snippet.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from auth.credentials import CredentialError
from auth.kiro_oauth import (
    DEFAULT_TOKEN_FILE,
    RELOGIN_HINT,
    KiroCredential,
    TokenStore,
    format_time,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m auth login kiro",
        description="Check a Kiro IDE login (token file) and print the aiclient-mitm config for it.",
    )
    p.add_argument("--from", dest="source", type=Path, default=DEFAULT_TOKEN_FILE, help="token file to import")
    p.add_argument("--save", type=Path, help="write a self-contained copy (mode 0600) and use it in the config")
    p.add_argument("--label", default="kiro", help="account label for the config snippet")
    p.add_argument("--no-refresh", action="store_true", help="do not try a token refresh")
    p.add_argument("--refresh-url", help="social refresh endpoint ({region} allowed)")
    p.add_argument("--refresh-idc-url", help="Builder ID / IdC refresh endpoint ({region} allowed)")
    return p


def _mask_arn(arn: str) -> str:
    """arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK -> account and profile shortened."""
    parts = arn.split(":")
    if len(parts) >= 6:
        parts[4] = parts[4][:3] + "…" if parts[4] else parts[4]
        kind, _, pid = parts[5].partition("/")
        parts[5] = f"{kind}/{pid[:4]}…" if pid else parts[5]
    return ":".join(parts)


def _expiry(epoch: float | None) -> str:
    if epoch is None:
        return "unknown"
    left = epoch - time.time()
    when = format_time(epoch)
    return f"{when} (in {int(left // 60)} min)" if left > 0 else f"{when} (expired {int(-left // 60)} min ago)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = args.source.expanduser()
    try:
        cred = KiroCredential(
            TokenStore(source),
            label=args.label,
            refresh_url=args.refresh_url,
            refresh_idc_url=args.refresh_idc_url,
        )
    except CredentialError as e:
        print(f"cannot use {source}: {e}")
        print("Log in with the Kiro IDE first (it writes ~/.aws/sso/cache/kiro-auth-token.json).")
        return 1
    t = cred.token
    print(f"token file:   {source}")
    print(f"login:        {t.auth_method}" + (f" ({t.login_provider})" if t.login_provider else ""))
    print(
        f"region:       {t.region}" + (f" (OIDC {t.idc_region})" if not t.social and t.idc_region != t.region else "")
    )
    if t.social:
        print(f"profile:      {_mask_arn(t.profile_arn) if t.profile_arn else 'none (requests will fail)'}")
    else:
        reg = f", expires {_expiry(t.client_expires_at)}" if t.client_expires_at else ""
        print(f"client:       registration found{reg}")
    print(f"access token: expires {_expiry(t.expires_at)}")
    if not args.no_refresh:
        try:
            asyncio.run(cred.force_refresh())
        except CredentialError as e:
            print(f"refresh:      FAILED: {e}")
            if RELOGIN_HINT not in str(e):
                print("              (a network problem? try again, or use --no-refresh to skip the check)")
            return 1
        print(f"refresh:      works; new access token until {_expiry(cred.expires_at)}, written back to {source}")
    target = source
    if args.save is not None:
        target = args.save.expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        TokenStore(target).save(cred.portable_record())
        print(f"saved:        {target} (mode 0600)")
        print("              note: the copy shares the IDE's refresh token; when one side refreshes and the")
        print("              token rotates, the other stops working -- log the IDE into another account next.")
    print()
    print("Add to config.yaml:")
    print()
    print("providers:")
    print("  claude-kiro-oauth:")
    print("    accounts:")
    print(f"      - label: {args.label}")
    print(f"        credentials: {target}")
    return 0
