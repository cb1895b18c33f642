"""One real gateway in front of every strict fake upstream, shared by the real-CLI tests.

Providers are reached two ways, as the README's "Clients" section tells users to: by path prefix
(`ANTHROPIC_BASE_URL=http://gateway/<provider-id>`) or by a `models:` alias (Gemini CLI's model name
sits in its URL path, where `provider:model` cannot go).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from auth.kiro_oauth import format_time
from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY
from tests.fakes.claude import FakeClaude
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.kiro_server import FakeKiro, token_file
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.openai_responses import FakeOpenAIResponses
from tests.fakes.qwen import FakeQwen
from tests.fakes.server import FakeServer, RecordedRequest
from tests.gateway import GatewayProcess, start_gateway

# provider id -> the upstream model a user would name for it
UPSTREAM_MODELS = {
    "openai-custom": "gpt-4.1",
    "claude-custom": "claude-sonnet-4-5",
    "openaiResponses-custom": "gpt-4.1",
    "gemini-cli-oauth": "gemini-2.5-pro",
    "claude-kiro-oauth": "claude-sonnet-4-5",
    "openai-qwen-oauth": "coder-model",
}
PROVIDERS = list(UPSTREAM_MODELS)
# The requests of each fake that carry a conversation (not token refreshes or project discovery).
GENERATE_PATHS = {
    "openai-custom": ("/v1/chat/completions",),
    "claude-custom": ("/v1/messages",),
    "openaiResponses-custom": ("/v1/responses",),
    "gemini-cli-oauth": ("/v1internal:generateContent", "/v1internal:streamGenerateContent"),
    "claude-kiro-oauth": ("/generateAssistantResponse",),
    "openai-qwen-oauth": ("/v1/chat/completions",),
}


def alias(provider: str) -> str:
    """The `models:` alias that routes to `provider` (used where a model name cannot hold a colon)."""
    return f"cli-{provider}"


@dataclass
class CliStack:
    gateway: GatewayProcess
    fakes: dict[str, FakeServer]

    def provider_url(self, provider: str) -> str:
        return f"{self.gateway.url}/{provider}"

    def generate_requests(self, provider: str) -> list[RecordedRequest]:
        return [r for r in self.fakes[provider].requests if r.path in GENERATE_PATHS[provider]]

    def clear(self) -> None:
        for fake in self.fakes.values():
            fake.clear()


def _kiro_login(root: Path, fake: FakeKiro) -> Path:
    fake.add_social("cli-kiro-access", "cli-kiro-refresh")
    path = root / "kiro-auth-token.json"
    data = token_file("social", "cli-kiro-access", "cli-kiro-refresh", expires_at=format_time(time.time() + 3600))
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    root = tmp_path_factory.mktemp("cli-stack")
    fakes: dict[str, FakeServer] = {
        "openai-custom": FakeOpenAIChat(api_key=OPENAI_KEY),
        "claude-custom": FakeClaude(api_key=CLAUDE_KEY),
        "openaiResponses-custom": FakeOpenAIResponses(api_key=RESPONSES_KEY),
        "gemini-cli-oauth": FakeCodeAssist(),
        "claude-kiro-oauth": FakeKiro(),
        "openai-qwen-oauth": FakeQwen(),
    }
    for fake in fakes.values():
        fake.start()
    gemini_creds = root / "gemini-oauth-creds.json"
    gemini_creds.write_text(json.dumps(fakes["gemini-cli-oauth"].issue_login()))
    qwen_creds = root / "qwen-oauth-creds.json"
    qwen_creds.write_text(json.dumps(fakes["openai-qwen-oauth"].token_file()))
    qwen_creds.chmod(0o600)
    kiro = fakes["claude-kiro-oauth"]
    config = {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": {
            "openai-custom": {
                "base_url": f"{fakes['openai-custom'].url}/v1",
                "accounts": [{"label": "oa", "api_key": OPENAI_KEY}],
            },
            "claude-custom": {
                "base_url": fakes["claude-custom"].url,
                "accounts": [{"label": "cl", "api_key": CLAUDE_KEY}],
            },
            "openaiResponses-custom": {
                "base_url": f"{fakes['openaiResponses-custom'].url}/v1",
                "accounts": [{"label": "rs", "api_key": RESPONSES_KEY}],
            },
            "gemini-cli-oauth": {
                "base_url": fakes["gemini-cli-oauth"].url,
                "token_url": f"{fakes['gemini-cli-oauth'].url}/token",
                "accounts": [{"label": "g1", "credentials": str(gemini_creds)}],
            },
            "claude-kiro-oauth": {
                "base_url": kiro.url,
                "refresh_url": f"{kiro.url}/refreshToken",
                "refresh_idc_url": f"{kiro.url}/token",
                "accounts": [{"label": "k1", "credentials": str(_kiro_login(root, kiro))}],
            },
            "openai-qwen-oauth": {
                "token_url": f"{fakes['openai-qwen-oauth'].url}/api/v1/oauth2/token",
                "accounts": [{"label": "q1", "credentials": str(qwen_creds)}],
            },
        },
        "models": {alias(p): f"{p}:{m}" for p, m in UPSTREAM_MODELS.items()},
    }
    gateway = start_gateway(root / "gw", config)
    yield CliStack(gateway, fakes)
    gateway.stop()
    for fake in fakes.values():
        fake.stop()


@pytest.fixture
def stack(cli_stack: CliStack) -> CliStack:
    cli_stack.clear()
    return cli_stack
