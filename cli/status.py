"""`python -m auth status` (cli.status): every configured account with its token, project and pool health.

Secrets are never printed: credentials describe themselves masked, and the pool health comes from
the gateway's snapshot (state_dir/pool.json) of cooldowns and disabled reasons.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from auth.accounts import expand_accounts
from auth.credentials import CredentialError
from core.config import ConfigError, load_config
from core.files import read_json
from providers import ADAPTERS

SNAPSHOT_FILE = "pool.json"


def _health(saved: dict | None, now: float) -> str:
    if not saved:
        return "no requests yet"
    if saved.get("disabled"):
        return f"disabled: {saved['disabled']}"
    cooling = {m: u - now for m, u in (saved.get("cooldown_until") or {}).items() if u > now}
    if cooling:
        return "cooling " + ", ".join(f"{m} {s:.0f}s" for m, s in cooling.items())
    return f"ready ({saved.get('requests', 0)} requests, {saved.get('errors', 0)} errors)"


async def _rows(config_path: Path) -> list[tuple[str, str, str, str]]:
    config = load_config(config_path)
    state_dir = config.state_path(config_path)
    snapshot = read_json(state_dir / SNAPSHOT_FILE) or {}
    now = time.time()
    rows = []
    for pid in config.configured_providers():
        adapter = ADAPTERS.get(pid)
        provider = config.providers[pid]
        if not provider.accounts:
            rows.append((pid, "-", "no accounts configured", ""))
        for label, account in expand_accounts(provider.accounts, config_path.parent):
            health = _health((snapshot.get(pid) or {}).get(label), now)
            if adapter is None:
                rows.append((pid, label, "provider not implemented in this version", ""))
                continue
            if not account.enabled:
                rows.append((pid, label, "disabled in config", ""))
                continue
            try:
                credential = adapter.credential(provider, account, label=label, state_dir=state_dir)
                state = await credential.describe()
            except CredentialError as e:
                state = f"unusable: {e}"
            rows.append((pid, label, state, health))
    return rows


def print_status(config_path: Path) -> int:
    try:
        rows = asyncio.run(_rows(config_path))
    except ConfigError as e:
        print(f"invalid configuration {config_path}: {e}")
        return 1
    widths = [max((len(r[i]) for r in rows), default=1) for i in range(3)]
    for pid, label, state, health in rows:
        line = f"{pid:<{widths[0]}}  {label:<{widths[1]}}  {state:<{widths[2]}}  {health}"
        print(line.rstrip())
    return 0
