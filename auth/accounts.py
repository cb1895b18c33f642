"""Expands configured accounts: a `credentials` entry may name one file, a directory of
credential files, or a glob -- one account per file, each labelled by its file name."""

from __future__ import annotations

import glob
from pathlib import Path

from core.config import Account

_GLOB_CHARS = frozenset("*?[")


def expand_accounts(accounts: list[Account], base_dir: Path) -> list[tuple[str, Account]]:
    """(label, account) pairs with credential paths made absolute (relative to the config file)."""
    out: list[tuple[str, Account]] = []
    for i, account in enumerate(accounts):
        if account.credentials is None:
            out.append((account.display_label(i), account))
            continue
        path = account.credentials.expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json") if p.is_file())
        elif _GLOB_CHARS & set(str(path)):
            files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        else:
            out.append((account.label or path.name, account.model_copy(update={"credentials": path})))
            continue
        if not files:
            # Reported by the pool as an unusable account rather than silently dropped.
            out.append((account.label or path.name, account.model_copy(update={"credentials": path})))
        for f in files:
            label = f"{account.label}-{f.stem}" if account.label else f.name
            out.append((label, account.model_copy(update={"credentials": f})))
    return out
