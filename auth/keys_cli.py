"""`python -m auth keys add|list|revoke|rotate`: client keys in keys_file, without a restart.

The file is rewritten atomically with mode 0600; a running gateway notices the change and
re-reads it. A new or rotated key is printed once and never again (`list` shows no secrets).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from auth.client_keys import (
    COUNTERS_FILE,
    ClientKey,
    KeyLimits,
    LocalCounters,
    build_keyring,
    parse_keys_file,
)
from core.config import ClientKeyEntry, Config, ConfigError, load_config
from core.files import read_json, write_text_atomic

HEADER = "# Client keys of aiclient-mitm, managed with `python -m auth keys ...`. Holds secrets: mode 0600.\n"
_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def new_key() -> str:
    """256 bits from the OS's CSPRNG, URL-safe."""
    return "sk-aicm-" + secrets.token_urlsafe(32)


def parse_expiry(text: str, now: datetime) -> datetime:
    """`30d`, `12h`, `2w` from now, or an ISO date / date-time (UTC when no zone is given)."""
    m = _DURATION.match(text.strip())
    if m:
        return (now + int(m.group(1)) * _UNITS[m.group(2)]).replace(microsecond=0)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--expires {text!r}: use a duration like 30d, 12h, 2w or an ISO date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class KeysFile:
    """The keys file as raw YAML entries (kept as written, ${VAR} references included)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: Config = load_config(config_path)
        path = self.config.keys_file_path(config_path)
        if path is None:
            raise ConfigError(f"{config_path} has no keys_file: add `keys_file: keys.yaml` to it first")
        self.path = path
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = []
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise ConfigError(f"{path}: must be a YAML list of keys")
        self.entries: list[Any] = data

    def index(self, name: str) -> int:
        for i, entry in enumerate(self.entries):
            if isinstance(entry, dict) and entry.get("name") == name:
                return i
        if any(isinstance(e, ClientKeyEntry) and e.name == name for e in self.config.api_keys):
            raise ConfigError(f"{name!r} is in {self.config_path}'s api_keys; change it there")
        raise ConfigError(f"no key named {name!r} in {self.path}")

    def save(self) -> None:
        """Validates the whole set (as the gateway will) before writing it atomically, 0600."""
        text = HEADER + yaml.safe_dump(self.entries, sort_keys=False, allow_unicode=True)
        entries = parse_keys_file(text)
        build_keyring([("api_keys", self.config.api_keys), ("keys_file", entries)])
        write_text_atomic(self.path, text, 0o600)


def _add(args: argparse.Namespace) -> int:
    keys = KeysFile(args.config)
    entry: dict[str, Any] = {"key": new_key(), "name": args.name}
    if args.models:
        entry["models"] = args.models
    if args.providers:
        entry["providers"] = args.providers
    for field in ("requests_per_minute", "requests_per_day", "tokens_per_day", "tokens_per_month"):
        if getattr(args, field) is not None:
            entry[field] = getattr(args, field)
    if args.expires:
        entry["expires_at"] = parse_expiry(args.expires, datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    if args.admin:
        entry["admin"] = True
    keys.entries.append(entry)
    keys.save()
    print(f"added {args.name!r} to {keys.path}; the key (shown only now):", file=sys.stderr)
    print(entry["key"])
    return 0


def _rotate(args: argparse.Namespace) -> int:
    keys = KeysFile(args.config)
    i = keys.index(args.name)
    key = new_key()
    keys.entries[i] = {**keys.entries[i], "key": key}
    keys.save()
    print(f"new key for {args.name!r} in {keys.path}; the old one stops working (shown only now):", file=sys.stderr)
    print(key)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    keys = KeysFile(args.config)
    del keys.entries[keys.index(args.name)]
    keys.save()
    print(f"revoked {args.name!r} in {keys.path}")
    return 0


def _expiry(key: ClientKey, now: float) -> str:
    if key.expires_at is None:
        return "never"
    when = datetime.fromtimestamp(key.expires_at, UTC).isoformat().replace("+00:00", "Z")
    return f"expired {when}" if key.expired(now) else when


async def _list_rows(config_path: Path) -> list[dict[str, str]]:
    keys = KeysFile(config_path)
    file_entries = parse_keys_file(keys.path.read_text(encoding="utf-8")) if keys.path.exists() else []
    keyring = build_keyring([("api_keys", keys.config.api_keys), ("keys_file", file_entries)])
    sources = ["config"] * len(keys.config.api_keys) + ["keys_file"] * len(file_entries)
    counters = LocalCounters.from_json(read_json(keys.config.state_path(config_path) / COUNTERS_FILE))
    limits = KeyLimits(counters)
    now = time.time()
    rows = []
    for key, source in zip(keyring, sources, strict=True):
        used = await limits.today(key.name)
        rows.append(
            {
                "name": key.name,
                "source": source,
                "admin": "yes" if key.admin else "no",
                "models": ",".join(key.models) if key.models is not None else "all",
                "providers": ",".join(sorted(key.providers)) if key.providers is not None else "all",
                "limits": key.limits(),
                "today": f"{used['requests_today']} requests, {used['tokens_today']} tokens",
                "expires": _expiry(key, now),
            }
        )
    return rows


def _list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_list_rows(args.config))
    if not rows:
        print("no client keys (the gateway generates one at its first start)")
        return 0
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def main(argv: list[str], default_config: Path) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth keys", description="Client keys in keys_file.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="generate a key with a policy and print it once")
    add.add_argument("--name", required=True)
    add.add_argument("--models", nargs="+", metavar="GLOB", help="fnmatch globs of the models asked for")
    add.add_argument("--providers", nargs="+", metavar="ID")
    add.add_argument("--requests-per-minute", type=_positive, metavar="N")
    add.add_argument("--requests-per-day", type=_positive, metavar="N")
    add.add_argument("--tokens-per-day", type=_positive, metavar="N")
    add.add_argument("--tokens-per-month", type=_positive, metavar="N")
    add.add_argument("--expires", metavar="WHEN", help="30d, 12h, 2w or an ISO date (UTC)")
    add.add_argument("--admin", action="store_true", help="may see every key's /usage rows")
    sub.add_parser("list", help="every key: name, limits, usage today, expiry (no secrets)")
    for name, text in (("revoke", "remove a key"), ("rotate", "give a key a new secret, printed once")):
        sub.add_parser(name, help=text).add_argument("name")
    for p in sub.choices.values():
        p.add_argument("--config", type=Path, default=default_config)
    args = parser.parse_args(argv)
    handler = {"add": _add, "list": _list, "revoke": _revoke, "rotate": _rotate}[args.command]
    try:
        return handler(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
