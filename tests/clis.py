"""Runs the real CLIs (Claude Code, Gemini CLI, Codex) headless against the real gateway.

The CLIs come from clients/ (`make test` runs `npm ci` there). A missing binary fails the test loudly:
these tests are never skipped. Every run gets a throwaway HOME and config dir, has update checks,
telemetry and other non-essential traffic switched off, and points every proxy-aware HTTP client at a
loopback trap that records and refuses whatever tries to leave 127.0.0.1 (the tests assert it saw nothing).
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gateway import REPO

NODE_MODULES = REPO / "clients" / "node_modules"
CLAUDE_CODE_VERSIONS = ("current", "2.1.141")  # 2.1.141: the last release before mid-conversation system messages
CLI_TIMEOUT = 90.0
SECRET = "PINEAPPLE-4711"  # the content of the file the CLIs' own tools read


class _TrapHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(2)
        try:
            first_line = self.request.recv(1024).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            first_line = "(nothing sent)"
        self.server.attempts.append(first_line)  # type: ignore[attr-defined]


class OutboundTrap(socketserver.ThreadingTCPServer):
    """A loopback "proxy" that records and refuses every request: the CLIs get it as HTTP(S)_PROXY with
    only 127.0.0.1 exempt, so anything they try to send off the machine shows up in `attempts`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TrapHandler)
        self.attempts: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


_trap: OutboundTrap | None = None


def outbound_trap() -> OutboundTrap:
    global _trap
    if _trap is None:
        _trap = OutboundTrap()
    return _trap


def cli_binary(relative: str) -> Path:
    path = NODE_MODULES / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: the real CLIs are installed by `make test` (cd clients && npm ci)")
    return path


def claude_code(version: str) -> Path:
    return cli_binary(f"claude-code-{version}/bin/claude.exe")


@dataclass
class CliRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    outbound: list[str] = field(default_factory=list)  # requests that tried to leave 127.0.0.1

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\noutbound attempts: {self.outbound}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def base_env(home: Path) -> dict[str, str]:
    """Only what a CLI needs: PATH, a throwaway HOME, no inherited keys or config, the outbound trap as proxy."""
    home.mkdir(parents=True, exist_ok=True)
    trap = outbound_trap().url
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CI": "1",
        "HTTP_PROXY": trap,
        "HTTPS_PROXY": trap,
        "http_proxy": trap,
        "https_proxy": trap,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def run_cli(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = CLI_TIMEOUT) -> CliRun:
    (Path(env["HOME"]) / "tmp").mkdir(parents=True, exist_ok=True)
    trap = outbound_trap()
    trap.attempts.clear()
    try:
        proc = subprocess.run(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{argv[0]} did not finish within {timeout}s\n--- stdout\n{out}\n--- stderr\n{err}")
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    return CliRun(argv, proc.returncode, out, err, list(trap.attempts))


def workspace(root: Path) -> Path:
    """The directory a CLI runs in, with the file its own tools read."""
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "notes.txt").write_text(f"The secret word is {SECRET}.\n", encoding="utf-8")
    return work


def read_file_prompt(work: Path) -> str:
    """The phrase the fakes' brain answers with a call to the CLI's own file-reading tool."""
    return f"Read the file {work / 'notes.txt'} and tell me the secret word."


# -- Claude Code ------------------------------------------------------------------------------------------


def claude_code_env(home: Path, base_url: str, key: str, model: str | None) -> dict[str, str]:
    """The README's Claude Code setup, plus the switches that keep it off the network."""
    env = base_env(home)
    env.update(
        {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_AUTH_TOKEN": key,
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_BUG_COMMAND": "1",
            "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
            "CLAUDE_CODE_ENABLE_TELEMETRY": "0",
        }
    )
    if model:
        for var in (
            "ANTHROPIC_MODEL",
            "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_OPUS_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL",
            "ANTHROPIC_SMALL_FAST_MODEL",
        ):
            env[var] = model
    return env


def run_claude_code(version: str, home: Path, work: Path, env: dict[str, str], prompt: str) -> tuple[CliRun, dict]:
    """`claude -p PROMPT --output-format json`; returns the run and its result object."""
    argv = [str(claude_code(version)), "-p", prompt, "--output-format", "json", "--allowedTools", "Read", "Bash"]
    run = run_cli(argv, env, work)
    try:
        result = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"Claude Code printed no JSON result\n{run.describe()}")
    return run, result


# -- Gemini CLI -------------------------------------------------------------------------------------------

GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}


def gemini_cli_env(home: Path, base_url: str, key: str) -> dict[str, str]:
    """The README's Gemini CLI setup: settings.json with the API-key login, the gateway as base URL."""
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(GEMINI_SETTINGS, indent=2), encoding="utf-8")
    env = base_env(home)
    env.update(
        {
            "GOOGLE_GEMINI_BASE_URL": base_url,
            "GEMINI_API_KEY": key,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "GEMINI_CLI_NO_RELAUNCH": "true",
        }
    )
    return env


def run_gemini_cli(env: dict[str, str], work: Path, model: str, prompt: str) -> tuple[CliRun, dict]:
    """`gemini -p PROMPT -m MODEL --output-format json`; returns the run and its JSON result."""
    argv = [str(cli_binary(".bin/gemini")), "-p", prompt, "-m", model, "--output-format", "json"]
    run = run_cli(argv, env, work)
    try:
        result = json.loads(run.stdout[run.stdout.index("{") :])
    except ValueError:
        pytest.fail(f"Gemini CLI printed no JSON result\n{run.describe()}")
    return run, result


# -- Codex CLI --------------------------------------------------------------------------------------------


def codex_config(base_url: str, model: str) -> str:
    """The README's Codex setup: the gateway as a Responses model provider (wire_api = "responses")."""
    return f"""\
model = "{model}"
model_provider = "aiclient"
check_for_update_on_startup = false

[model_providers.aiclient]
name = "aiclient-mitm"
base_url = "{base_url}"
env_key = "AICLIENT_KEY"
wire_api = "responses"

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false
remote_plugin = false
plugin_sharing = false
apps = false
skill_search = false
in_app_updates = false
"""


def codex_env(home: Path, base_url: str, key: str, model: str) -> dict[str, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url, model), encoding="utf-8")
    env = base_env(home)
    env.update({"CODEX_HOME": str(codex_home), "AICLIENT_KEY": key, "OTEL_SDK_DISABLED": "true"})
    return env


def run_codex(env: dict[str, str], work: Path, prompt: str) -> tuple[CliRun, str]:
    """`codex exec --skip-git-repo-check PROMPT`; returns the run and Codex's last message."""
    last = Path(env["HOME"]) / "last-message.txt"
    argv = [str(cli_binary(".bin/codex")), "exec", "--skip-git-repo-check", "--output-last-message", str(last), prompt]
    run = run_cli(argv, env, work)
    return run, last.read_text(encoding="utf-8").strip() if last.exists() else ""
