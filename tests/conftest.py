"""Shared fixtures: fake upstreams on loopback and one real gateway process configured for them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.claude import FakeClaude
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.openai_responses import FakeOpenAIResponses
from tests.gateway import GatewayProcess, start_gateway
from tests.redis_server import RedisServer

CLIENT_KEY = "test-client-key-7f3a"
OPENAI_KEY = "sk-upstream-openai-1d2c"
CLAUDE_KEY = "sk-ant-upstream-9b8e"
RESPONSES_KEY = "sk-upstream-responses-5a4f"


@dataclass
class Fakes:
    openai: FakeOpenAIChat
    claude: FakeClaude
    responses: FakeOpenAIResponses

    def all(self) -> list:
        return [self.openai, self.claude, self.responses]

    def request_count(self) -> int:
        return sum(len(f.requests) for f in self.all())


@pytest.fixture(scope="session")
def fakes() -> Iterator[Fakes]:
    openai = FakeOpenAIChat(api_key=OPENAI_KEY)
    claude = FakeClaude(api_key=CLAUDE_KEY)
    responses = FakeOpenAIResponses(api_key=RESPONSES_KEY)
    for fake in (openai, claude, responses):
        fake.start()
    yield Fakes(openai, claude, responses)
    for fake in (openai, claude, responses):
        fake.stop()


def api_key_providers(fakes: Fakes) -> dict:
    return {
        "openai-custom": {"base_url": f"{fakes.openai.url}/v1", "accounts": [{"label": "oa", "api_key": OPENAI_KEY}]},
        "claude-custom": {"base_url": fakes.claude.url, "accounts": [{"label": "cl", "api_key": CLAUDE_KEY}]},
        "openaiResponses-custom": {
            "base_url": f"{fakes.responses.url}/v1",
            "accounts": [{"label": "rs", "api_key": RESPONSES_KEY}],
        },
    }


@pytest.fixture(scope="session")
def gateway(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("gateway")
    gw = start_gateway(
        workdir,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": api_key_providers(fakes),
            "models": {"sonnet-alias": "claude-custom:claude-sonnet-4-5"},
            "limits": {"max_body": "64KiB"},
        },
    )
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _clear_fake_state(request: pytest.FixtureRequest) -> None:
    """Each test sees only its own upstream requests and faults."""
    if "fakes" in request.fixturenames:
        for fake in request.getfixturevalue("fakes").all():
            fake.requests.clear()
            fake.faults.clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test session (tests flush it when they need it empty)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
