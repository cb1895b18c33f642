"""`python -m auth login gemini|kiro|qwen|codex [...]`, `python -m auth status [--config PATH]` and
`python -m auth keys add|list|revoke|rotate [...]`.

The dispatcher of the `python -m auth` command; status needs the provider adapters, so it lives
here, one floor above auth/ (auth/__main__.py only hands over).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from cli.status import print_status

# provider name on the command line -> module with `main(argv) -> int`
LOGINS = {
    "gemini": "auth.login_gemini",
    "kiro": "auth.login_kiro",
    "qwen": "auth.login_qwen",
    "codex": "auth.login_codex",
}
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["login"]:
        if len(argv) < 2 or argv[1] not in LOGINS:
            print(f"usage: python -m auth login {{{','.join(LOGINS)}}} [options]", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(LOGINS[argv[1]])
        except ModuleNotFoundError:
            print(f"login for {argv[1]} is not available in this version", file=sys.stderr)
            return 2
        return module.main(argv[2:])
    if argv[:1] == ["keys"]:
        from auth.keys_cli import main as keys_main

        return keys_main(argv[1:], DEFAULT_CONFIG)
    parser = argparse.ArgumentParser(prog="python -m auth", description="Accounts of aiclient-mitm.")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="every configured account with its state; secrets masked")
    status.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub.add_parser("login", help="log in to gemini, kiro, qwen or codex (see: python -m auth login <name> --help)")
    sub.add_parser("keys", help="client keys: add, list, revoke, rotate (see: python -m auth keys --help)")
    args = parser.parse_args(argv)
    return print_status(args.config)
