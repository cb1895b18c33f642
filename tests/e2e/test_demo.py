"""A first answer without credentials: `make run` with the shipped config.yaml and no keys serves
canned answers from the built-in demo provider, to every SDK, streamed and not, with tool calls;
configuring a real provider turns it off unless `default_provider: demo` is set."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from google import genai
from google.genai import types

from tests.conftest import CLIENT_KEY, OPENAI_KEY
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.gateway import REPO, GatewayProcess, start_gateway

NO_KEYS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "AICLIENT_API_KEYS": CLIENT_KEY}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def shipped_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config["listen"] = {"host": "127.0.0.1", "port": 0}
    return config


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("fresh"), shipped_config(), env=NO_KEYS)
    yield gw
    gw.stop()


def wait_for_log(gw: GatewayProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gw.log():
            return gw.log()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{gw.log()}")


def test_start_banner_says_demo(fresh):
    log = wait_for_log(fresh, "DEMO MODE")
    assert "CANNED" in log and "no configured provider has a usable account" in log


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_readme_examples_answer_canned_right_after_make_run(fresh, stream):
    """The README's "Using it" examples, as written (model names included), on a machine without keys."""
    url = fresh.url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hello"}]
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content
    assert text.startswith("[demo] You said: Hello") and "canned answer" in text

    responses = openai.OpenAI(base_url=f"{url}/openaiResponses-custom/v1", api_key=CLIENT_KEY, max_retries=0)
    if stream:
        events = responses.responses.create(model="gpt-4.1", input="Hello", stream=True)
        text = next(e for e in events if e.type == "response.completed").response.output_text
    else:
        text = responses.responses.create(model="gpt-4.1", input="Hello").output_text
    assert text.startswith("[demo] You said: Hello")

    claude = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)
    kw = {"model": "claude-sonnet", "max_tokens": 512, "messages": messages}
    if stream:
        with claude.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = claude.messages.create(**kw)
    assert msg.content[0].text.startswith("[demo] You said: Hello")

    gemini = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=url, retry_options=None))
    if stream:
        text = "".join(c.text or "" for c in gemini.models.generate_content_stream(model="gpt-4o", contents="Hello"))
    else:
        text = gemini.models.generate_content(model="gpt-4o", contents="Hello").text
    assert text.startswith("[demo] You said: Hello")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_demo_tool_round_trip(fresh, stream):
    client = openai.OpenAI(base_url=f"{fresh.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    messages: list = [{"role": "user", "content": "Use get_weather for Paris"}]
    kw = {"model": "gpt-4o", "messages": messages, "tools": [WEATHER]}
    msg = client.chat.completions.create(**kw).choices[0].message
    assert msg.content.startswith("[demo]")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("get_weather", {"city": "demo"})
    ]
    messages += [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "Sunny"},
    ]
    claude = anthropic.Anthropic(base_url=fresh.url, api_key=CLIENT_KEY, max_retries=0)
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    ask = {
        "model": "claude-sonnet",
        "max_tokens": 256,
        "tools": tools,
        "messages": [{"role": "user", "content": "get_weather please"}],
    }
    if stream:
        with claude.messages.stream(**ask) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**ask)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    ask["messages"] += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]},
    ]
    final = claude.messages.create(**ask)
    assert final.content[0].text.startswith("[demo] The tool returned: Sunny")
    text = client.chat.completions.create(**kw).choices[0].message.content
    assert text.startswith("[demo] The tool returned: Sunny")


def test_a_real_provider_turns_the_demo_off(tmp_path: Path):
    with FakeOpenAIChat(api_key=OPENAI_KEY) as fake:
        config = shipped_config()
        config["providers"]["openai-custom"] = {"base_url": f"{fake.url}/v1", "accounts": [{"api_key": OPENAI_KEY}]}
        gw = start_gateway(tmp_path, config, env=NO_KEYS)
        try:
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
            text = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi there"}])
            assert text.choices[0].message.content == "Hello! You said: hi there"
            assert "DEMO MODE" not in gw.log()
        finally:
            gw.stop()


def test_explicit_demo_default_keeps_real_providers_reachable(tmp_path: Path):
    with FakeOpenAIChat(api_key=OPENAI_KEY) as fake:
        config = shipped_config()
        config["default_provider"] = "demo"
        config["providers"]["openai-custom"] = {"base_url": f"{fake.url}/v1", "accounts": [{"api_key": OPENAI_KEY}]}
        gw = start_gateway(tmp_path, config, env=NO_KEYS)
        try:
            ask = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
            canned = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
            assert canned.chat.completions.create(**ask).choices[0].message.content.startswith("[demo]")
            real = openai.OpenAI(base_url=f"{gw.url}/openai-custom/v1", api_key=CLIENT_KEY, max_retries=0)
            assert real.chat.completions.create(**ask).choices[0].message.content == "Hello! You said: hi there"
        finally:
            gw.stop()
