"""Every client dialect against every API-key upstream, through the real gateway and the real SDKs.

Each cell runs stream and non-stream: plain text, a tool round trip with two parallel calls
(call -> results -> answer), and an image. The fakes' deterministic brain answers in ways that
prove what arrived upstream (e.g. "I see 1 image(s): image/png 69 bytes").
"""

from __future__ import annotations

import pytest
from google.genai import types

from tests.drivers import DRIVERS, MODEL, PNG, ChatDriver, ClaudeDriver, GeminiDriver, ResponsesDriver

PROVIDERS = ["openai-custom", "claude-custom", "openaiResponses-custom"]
CLIENTS = ["openai_chat", "openai_responses", "claude", "gemini"]


@pytest.fixture(params=CLIENTS)
def client_dialect(request) -> str:
    return request.param


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_text(gateway, fakes, client_dialect, provider, stream):
    driver = DRIVERS[client_dialect](gateway.url, provider)
    assert driver.text("unicode please", stream) == "héllo wörld — 你好 🌍"
    assert driver.text("hi there", stream) == "Hello! You said: hi there"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_round_trip(gateway, fakes, client_dialect, provider, stream):
    driver = DRIVERS[client_dialect](gateway.url, provider)
    calls, answer = driver.tool_round_trip(stream)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_image(gateway, fakes, client_dialect, provider, stream):
    driver = DRIVERS[client_dialect](gateway.url, provider)
    assert driver.image(stream) == f"I see 1 image(s): image/png {len(PNG)} bytes"


def thinking_of(client_dialect: str, url: str, provider: str, stream: bool) -> tuple[str, str]:
    """(thinking text, answer text) as the client dialect shows them, with thinking asked for."""
    prompt = "hi there"
    if client_dialect == "openai_chat":
        client = ChatDriver(url, provider).client
        kw = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "reasoning_effort": "medium"}
        if not stream:
            msg = client.chat.completions.create(**kw).choices[0].message
            return getattr(msg, "reasoning_content", "") or "", msg.content or ""
        thinking = text = ""
        for chunk in client.chat.completions.create(**kw, stream=True):
            if chunk.choices:
                thinking += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
                text += chunk.choices[0].delta.content or ""
        return thinking, text
    if client_dialect == "openai_responses":
        driver = ResponsesDriver(url, provider)
        kw = {"model": MODEL, "input": prompt, "reasoning": {"effort": "medium", "summary": "auto"}}
        if stream:
            events = driver.client.responses.create(**kw, stream=True)
            resp = next(e for e in events if e.type == "response.completed").response
        else:
            resp = driver.client.responses.create(**kw)
        summaries = [s.text for o in resp.output if o.type == "reasoning" for s in o.summary]
        return "".join(summaries), resp.output_text
    if client_dialect == "claude":
        driver = ClaudeDriver(url, provider)
        kw = {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": prompt}],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
        }
        if stream:
            with driver.client.messages.stream(**kw) as s:
                msg = s.get_final_message()
        else:
            msg = driver.client.messages.create(**kw)
        thinking = [b for b in msg.content if b.type == "thinking"]
        if provider == "claude-custom":  # only Claude signs its thinking
            assert all(b.signature for b in thinking)
        return "".join(b.thinking for b in thinking), driver.text_of(msg)
    driver = GeminiDriver(url, provider)
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=2048)
    )
    contents = [types.Content(role="user", parts=[types.Part(text=prompt)])]
    if stream:
        parts = [
            p
            for c in driver.client.models.generate_content_stream(model=MODEL, contents=contents, config=config)
            if c.candidates and c.candidates[0].content and c.candidates[0].content.parts
            for p in c.candidates[0].content.parts
        ]
    else:
        r = driver.client.models.generate_content(model=MODEL, contents=contents, config=config)
        parts = r.candidates[0].content.parts
    return "".join(p.text or "" for p in parts if p.thought), "".join(p.text or "" for p in parts if not p.thought)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_thinking_reaches_the_client(gateway, fakes, client_dialect, provider, stream):
    thinking, text = thinking_of(client_dialect, gateway.url, provider, stream)
    assert thinking == "Let me think about this."
    assert text == "Hello! You said: hi there"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", ["openai-custom", "claude-custom"])
def test_responses_custom_tool_call_comes_back_as_custom(gateway, fakes, provider, stream):
    """Codex's freeform tools (apply_patch) travel as a one-string function upstream and must come
    back as custom_tool_call items, or Codex will not run them."""
    driver = ResponsesDriver(gateway.url, provider)
    tools = [{"type": "custom", "name": "apply_patch", "description": "Apply a patch"}]
    resp = driver.ask([{"role": "user", "content": "use the tool"}], stream, tools)
    calls = [o for o in resp.output if o.type in ("custom_tool_call", "function_call")]
    assert [(c.type, c.name) for c in calls] == [("custom_tool_call", "apply_patch")]
    assert isinstance(calls[0].input, str)
