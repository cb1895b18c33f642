"""`python -m auth status`: what every configured account looks like, secrets masked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from auth.credentials import CredentialError
from core.config import ConfigError, load_config
from providers import ADAPTERS


async def _rows(config_path: Path) -> list[tuple[str, str, str]]:
    config = load_config(config_path)
    rows = []
    for pid in config.configured_providers():
        adapter = ADAPTERS.get(pid)
        provider = config.providers[pid]
        if not provider.accounts:
            rows.append((pid, "-", "no accounts configured"))
        for i, account in enumerate(provider.accounts):
            label = account.display_label(i)
            if adapter is None:
                rows.append((pid, label, "provider not implemented in this version"))
                continue
            if not account.enabled:
                rows.append((pid, label, "disabled in config"))
                continue
            try:
                credential = adapter.credential(provider, account)
                describe = getattr(credential, "describe", None)
                state = await describe() if describe else "ok"
            except CredentialError as e:
                state = f"unusable: {e}"
            rows.append((pid, label, state))
    return rows


def print_status(config_path: Path) -> int:
    try:
        rows = asyncio.run(_rows(config_path))
    except ConfigError as e:
        print(f"invalid configuration {config_path}: {e}")
        return 1
    width = max((len(r[0]) for r in rows), default=8)
    lwidth = max((len(r[1]) for r in rows), default=5)
    for pid, label, state in rows:
        print(f"{pid:<{width}}  {label:<{lwidth}}  {state}")
    return 0
