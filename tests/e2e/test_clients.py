"""What current real clients send, through a real gateway to the strict fakes, with the official SDKs
(issue 13): system messages inside the conversation, efforts upstreams refuse, unknown provider
prefixes, the key-less HEAD / probe."""

from __future__ import annotations

import copy
import json

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types

from tests.conftest import CLIENT_KEY
from tests.drivers import MODEL

CLAUDE_CODE_MESSAGES = [
    {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
    {"role": "system", "content": "Available agent types for the Agent tool: general-purpose"},
]


def claude(url: str, provider: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{url}/{provider}", api_key=CLIENT_KEY, max_retries=0)


def chat(url: str, provider: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/{provider}/v1", api_key=CLIENT_KEY, max_retries=0)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_claude_code_system_message_passes_through_claude_custom_unchanged(gateway, fakes, stream):
    kw = {
        "model": MODEL,
        "max_tokens": 256,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": copy.deepcopy(CLAUDE_CODE_MESSAGES),
        "betas": ["interleaved-thinking-2025-05-14"],
        "extra_query": {"beta": "true"},  # what Claude Code adds to POST /v1/messages
    }
    client = claude(gateway.url, "claude-custom")
    if stream:
        with client.beta.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.beta.messages.create(**kw)
    assert "".join(b.text for b in msg.content if b.type == "text") == "Hello! You said: hi there"
    seen = fakes.claude.last_request
    assert seen.path == "/v1/messages" and seen.query == {"beta": "true"}
    assert seen.json["messages"] == CLAUDE_CODE_MESSAGES
    assert seen.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"


@pytest.mark.parametrize("provider", ["openai-custom", "openaiResponses-custom"])
def test_claude_code_system_message_reaches_other_upstreams(gateway, fakes, provider):
    client = claude(gateway.url, provider)
    msg = client.beta.messages.create(model=MODEL, max_tokens=256, messages=copy.deepcopy(CLAUDE_CODE_MESSAGES))
    assert msg.content[0].text.startswith("Hello! You said:") and msg.content[0].text.endswith("hi there")
    sent = (fakes.openai if provider == "openai-custom" else fakes.responses).last_request.json
    text = str(sent["messages"] if provider == "openai-custom" else sent["input"])
    assert "Available agent types for the Agent tool: general-purpose" in text


def test_openai_developer_message_mid_list_stays_in_place_for_responses(gateway, fakes):
    client = chat(gateway.url, "openaiResponses-custom")
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "hi there"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content
    assert answer == "Hello! You said: hi there"
    items = fakes.responses.last_request.json["input"]
    assert [i.get("role") for i in items] == ["user", "assistant", "developer", "user"]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_claude_code_adaptive_xhigh_thinking_works_on_openai(gateway, fakes, stream):
    """Claude Code 2.1.141: thinking {type: adaptive} + output_config.effort xhigh; OpenAI refuses xhigh."""
    kw = {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi there"}],
        "extra_body": {"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}},
    }
    client = claude(gateway.url, "openai-custom")
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert fakes.openai.last_request.json["reasoning_effort"] == "high"


def test_openai_client_xhigh_passthrough_is_clamped(gateway, fakes):
    client = chat(gateway.url, "openai-custom")
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], "reasoning_effort": "xhigh"}
    msg = client.chat.completions.create(**kw).choices[0].message
    assert msg.content == "Hello! You said: hi there"
    assert fakes.openai.last_request.json["reasoning_effort"] == "high"


def test_unknown_provider_prefix_is_a_400_naming_the_configured_providers(gateway, fakes):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="nope-provider:gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "unknown provider 'nope-provider'" in err.value.message
    assert all(p in err.value.message for p in ("openai-custom", "claude-custom", "openaiResponses-custom"))
    assert fakes.request_count() == 0


def test_colon_model_names_still_reach_the_default_provider(gateway, fakes):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    msg = client.chat.completions.create(model="gpt-oss:20b", messages=[{"role": "user", "content": "hi there"}])
    assert msg.choices[0].message.content == "Hello! You said: hi there"
    assert fakes.openai.last_request.json["model"] == "gpt-oss:20b"


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_root_answers_200_without_a_key(gateway, method):
    r = httpx2.request(method, gateway.url + "/", timeout=10)
    assert r.status_code == 200
    assert r.content == b""


GEMINI_CLI_SCHEMA = {
    "type": "OBJECT",
    "properties": {"city": {"type": "STRING"}, "why": {"type": "STRING", "nullable": True}},
    "required": ["city"],
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", ["openai-custom", "claude-custom", "openaiResponses-custom"])
def test_gemini_cli_response_json_schema_reaches_every_upstream(gateway, fakes, provider, stream):
    """Gemini CLI 0.61 sends responseJsonSchema with Gemini enum types; OpenAI refuses uppercase types."""
    client = genai.Client(
        api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=f"{gateway.url}/{provider}/", retry_options=None)
    )
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=GEMINI_CLI_SCHEMA)
    contents = "weather city as JSON"
    if stream:
        text = "".join(
            c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents=contents, config=config)
        )
    else:
        text = client.models.generate_content(model=MODEL, contents=contents, config=config).text
    if provider == "claude-custom":  # a forced tool upstream; its input comes back as the JSON text
        assert json.loads(text) == {"city": "Paris"}
        sent = fakes.claude.last_request.json
        assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}
        assert sent["tools"][-1]["input_schema"]["properties"]["why"] == {"type": ["string", "null"]}
    elif provider == "openai-custom":
        schema = fakes.openai.last_request.json["response_format"]["json_schema"]["schema"]
        assert schema["type"] == "object" and schema["properties"]["city"] == {"type": "string"}
    else:
        schema = fakes.responses.last_request.json["text"]["format"]["schema"]
        assert schema["type"] == "object" and schema["properties"]["city"] == {"type": "string"}


CODEX_TOOLS = [
    {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Sub-agents",
        "tools": [
            {
                "type": "function",
                "name": "spawn_agent",
                "description": "Start a sub-agent",
                "strict": False,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
            {"type": "function", "name": "wait", "parameters": {"type": "object", "properties": {}}, "strict": False},
        ],
    },
    {"type": "web_search"},
]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", ["openai-custom", "claude-custom"])
def test_codex_namespace_tools_round_trip_and_built_ins_are_reported(gateway, fakes, provider, stream):
    client = openai.OpenAI(base_url=f"{gateway.url}/{provider}/v1", api_key=CLIENT_KEY, max_retries=0)
    items: list = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "use the tool"}]}]
    kw = {"model": MODEL, "input": items, "tools": CODEX_TOOLS}
    if stream:
        raw = client.responses.with_raw_response.create(**kw, stream=True)
        events = list(raw.parse())
        output = next(e for e in events if e.type == "response.completed").response.output
    else:
        raw = client.responses.with_raw_response.create(**kw)
        output = raw.parse().output
    assert raw.headers["x-aiclient-dropped-tools"] == "web_search"
    calls = [o.model_dump() for o in output if o.type == "function_call"]
    assert [(c["namespace"], c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("multi_agent_v1", "spawn_agent", {"city": "Paris"})
    ]
    fake = fakes.openai if provider == "openai-custom" else fakes.claude
    sent = fake.last_request.json["tools"]
    names = [t["function"]["name"] if "function" in t else t["name"] for t in sent]
    assert names == ["multi_agent_v1__spawn_agent", "multi_agent_v1__wait"]

    call = calls[0]
    items += [
        {k: call[k] for k in ("type", "call_id", "name", "namespace", "arguments")},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "agent started"},
    ]
    answer = client.responses.create(model=MODEL, input=items, tools=CODEX_TOOLS)
    assert answer.output_text == "Tool results: agent started"
