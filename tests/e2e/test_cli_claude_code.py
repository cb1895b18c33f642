"""The real Claude Code (current release and 2.1.141) headless through the gateway to every provider.

`claude -p PROMPT --output-format json` with the README's setup: ANTHROPIC_BASE_URL at the gateway
(with the provider as path prefix), the client key as ANTHROPIC_AUTH_TOKEN, ANTHROPIC_MODEL naming the
upstream model. The tool round trip uses Claude Code's own Read tool on a file in the temp dir: the
secret word in the final answer proves the tool really ran and its result went back upstream.
"""

from __future__ import annotations

import pytest

from tests.clis import CLAUDE_CODE_VERSIONS, SECRET, claude_code_env, read_file_prompt, run_claude_code, workspace
from tests.conftest import CLIENT_KEY
from tests.e2e.cli_stack import PROVIDERS, UPSTREAM_MODELS, CliStack

VERSIONS = pytest.mark.parametrize("version", CLAUDE_CODE_VERSIONS)


def assert_success(run, result: dict) -> None:
    assert run.returncode == 0 and result.get("is_error") is False, run.describe()
    assert run.outbound == [], f"Claude Code tried to leave 127.0.0.1: {run.outbound}"


@VERSIONS
@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_answer(stack: CliStack, tmp_path, provider, version):
    work = workspace(tmp_path)
    env = claude_code_env(tmp_path / "home", stack.provider_url(provider), CLIENT_KEY, UPSTREAM_MODELS[provider])
    run, result = run_claude_code(version, tmp_path / "home", work, env, "Say hello to the gateway")
    assert_success(run, result)
    assert result["result"].startswith("Hello! You said:"), run.describe()
    assert "Say hello to the gateway" in result["result"]
    assert stack.generate_requests(provider), "the fake upstream saw no request"


@VERSIONS
@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_round_trip(stack: CliStack, tmp_path, provider, version):
    work = workspace(tmp_path)
    env = claude_code_env(tmp_path / "home", stack.provider_url(provider), CLIENT_KEY, UPSTREAM_MODELS[provider])
    run, result = run_claude_code(version, tmp_path / "home", work, env, read_file_prompt(work))
    assert_success(run, result)
    assert result["result"].startswith("Tool results:"), run.describe()
    assert SECRET in result["result"], run.describe()
    assert len(stack.generate_requests(provider)) >= 2


@VERSIONS
@pytest.mark.parametrize("provider", ["claude-custom", "openai-custom"])
def test_default_model(stack: CliStack, tmp_path, provider, version):
    """No model variables at all, as a new user starts: Claude Code's own default model (with its
    adaptive thinking and effort) reaches the provider and the answer comes back."""
    work = workspace(tmp_path)
    env = claude_code_env(tmp_path / "home", stack.provider_url(provider), CLIENT_KEY, None)
    run, result = run_claude_code(version, tmp_path / "home", work, env, "Say hello to the gateway")
    assert_success(run, result)
    assert result["result"].startswith("Hello! You said:"), run.describe()
    assert stack.generate_requests(provider), "the fake upstream saw no request"
