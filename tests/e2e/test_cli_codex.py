"""The real Codex CLI headless (`codex exec --skip-git-repo-check`) through the gateway.

The README's setup: a `model_providers` entry in config.toml pointing at the gateway's `/v1` with
`wire_api = "responses"` and the client key from an env var; the provider chosen by a `models:` alias.
The tool round trip uses Codex's own shell tool to read a file in the temp dir.
"""

from __future__ import annotations

import pytest

from tests.clis import SECRET, codex_env, read_file_prompt, run_codex, workspace
from tests.conftest import CLIENT_KEY
from tests.e2e.cli_stack import CliStack, alias

PROVIDERS = pytest.mark.parametrize("provider", ["openai-custom", "claude-custom", "claude-kiro-oauth"])


@PROVIDERS
def test_text_answer(stack: CliStack, tmp_path, provider):
    work = workspace(tmp_path)
    env = codex_env(tmp_path / "home", f"{stack.gateway.url}/v1", CLIENT_KEY, alias(provider))
    run, answer = run_codex(env, work, "Say hello to the gateway")
    assert run.returncode == 0, run.describe()
    assert run.outbound == [], f"Codex tried to leave 127.0.0.1: {run.outbound}"
    # Upstreams without Codex's message roles get its environment context merged into the prompt's turn.
    assert answer.startswith("Hello! You said: ") and answer.endswith("Say hello to the gateway"), run.describe()
    assert stack.generate_requests(provider), "the fake upstream saw no request"


@PROVIDERS
def test_tool_round_trip(stack: CliStack, tmp_path, provider):
    work = workspace(tmp_path)
    env = codex_env(tmp_path / "home", f"{stack.gateway.url}/v1", CLIENT_KEY, alias(provider))
    run, answer = run_codex(env, work, read_file_prompt(work))
    assert run.returncode == 0, run.describe()
    assert run.outbound == [], f"Codex tried to leave 127.0.0.1: {run.outbound}"
    assert answer.startswith("Tool results:") and SECRET in answer, run.describe()
    assert len(stack.generate_requests(provider)) >= 2
