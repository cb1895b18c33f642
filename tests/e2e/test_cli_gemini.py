"""The real Gemini CLI headless (`gemini -p`) through the gateway to OpenAI, Claude and Kiro upstreams.

The README's setup: GOOGLE_GEMINI_BASE_URL at the gateway, the client key as GEMINI_API_KEY,
`security.auth.selectedType: gemini-api-key` in settings.json, the folder trusted, and the provider
chosen by a `models:` alias (the model name sits in the URL path, where `provider:model` cannot go).
The tool round trip uses the CLI's own read_file tool on a file in the temp dir.
"""

from __future__ import annotations

import pytest
from google import genai
from google.genai import types

from tests.clis import SECRET, gemini_cli_env, read_file_prompt, run_gemini_cli, workspace
from tests.conftest import CLIENT_KEY
from tests.e2e.cli_stack import CliStack, alias

PROVIDERS = pytest.mark.parametrize("provider", ["openai-custom", "claude-custom", "claude-kiro-oauth"])


@PROVIDERS
def test_text_answer(stack: CliStack, tmp_path, provider):
    work = workspace(tmp_path)
    env = gemini_cli_env(tmp_path / "home", stack.gateway.url, CLIENT_KEY)
    run, result = run_gemini_cli(env, work, alias(provider), "Say hello to the gateway")
    assert run.returncode == 0, run.describe()
    assert run.outbound == [], f"Gemini CLI tried to leave 127.0.0.1: {run.outbound}"
    # Gemini CLI puts its session context in the same user turn, before the prompt.
    assert result["response"].startswith("Hello! You said: "), run.describe()
    assert result["response"].endswith("Say hello to the gateway"), run.describe()
    assert stack.generate_requests(provider), "the fake upstream saw no request"


@PROVIDERS
def test_tool_round_trip(stack: CliStack, tmp_path, provider):
    work = workspace(tmp_path)
    env = gemini_cli_env(tmp_path / "home", stack.gateway.url, CLIENT_KEY)
    run, result = run_gemini_cli(env, work, alias(provider), read_file_prompt(work))
    assert run.returncode == 0, run.describe()
    assert run.outbound == [], f"Gemini CLI tried to leave 127.0.0.1: {run.outbound}"
    assert result["response"].startswith("Tool results:"), run.describe()
    assert SECRET in result["response"], run.describe()
    assert len(stack.generate_requests(provider)) >= 2


def test_structured_output_with_gemini_types_reaches_openai(stack: CliStack):
    """Gemini CLI 0.61 asks for JSON with `responseJsonSchema` in Gemini's proto enum types ("OBJECT",
    "STRING"); an OpenAI upstream refuses those, so the gateway must send JSON Schema's own names."""
    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=stack.gateway.url))
    schema = {
        "type": "OBJECT",
        "properties": {"reasoning": {"type": "STRING"}, "next_speaker": {"type": "STRING", "enum": ["user", "model"]}},
        "required": ["reasoning", "next_speaker"],
    }
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema)
    reply = client.models.generate_content(model=alias("openai-custom"), contents="Say hello", config=config)
    assert reply.text.startswith("Hello! You said:")
    sent = stack.generate_requests("openai-custom")[-1].json["response_format"]["json_schema"]["schema"]
    assert sent["type"] == "object" and sent["properties"]["reasoning"]["type"] == "string"
