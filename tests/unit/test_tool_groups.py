"""Responses `namespace` tool groups (Codex) and provider built-in tools across dialects."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.context import DROPPED_TOOLS, EXCHANGE, ROUTE, Route
from addons.dropped_tools import HEADER, DroppedTools
from addons.flow_inspect import describe
from translators import get_codec, ir
from translators.base import EncoderOptions
from translators.openai_responses import MAX_TOOL_NAME, namespaced_name, tool_namespaces
from translators.tools import dropped_tools

CODEX = {
    "model": "m",
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ],
    "tools": [
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}, "strict": False}],
        },
        {"type": "web_search"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ],
}


def test_namespace_members_become_flat_tools_and_history_follows() -> None:
    req = get_codec("openai_responses").parse_request(json.loads(json.dumps(CODEX)))
    assert [(t.name, t.namespace) for t in req.tools][:1] == [
        ("multi_agent_v1__spawn_agent", ("multi_agent_v1", "spawn_agent"))
    ]
    assert req.messages[1].parts[0].name == "multi_agent_v1__spawn_agent"
    chat = get_codec("openai_chat").render_request(req, "m")
    assert [t["function"]["name"] for t in chat["tools"]] == ["multi_agent_v1__spawn_agent"]
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    # A Responses upstream gets the group back, and the call with its namespace.
    body = get_codec("openai_responses").render_request(req, "m")
    assert body["tools"][0] == CODEX["tools"][0]
    call = body["input"][1]
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "spawn_agent")


def test_long_names_stay_within_the_limit_and_distinct() -> None:
    a = namespaced_name("mcp__" + "x" * 60, "tool_a")
    b = namespaced_name("mcp__" + "x" * 60, "tool_b")
    assert len(a) == len(b) == MAX_TOOL_NAME and a != b
    assert namespaced_name("ns", "t") == "ns__t"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_client_gets_name_and_namespace_back(stream: bool) -> None:
    codec = get_codec("openai_responses")
    namespaces = {"ns__t": ("ns", "t")}
    if stream:
        enc = codec.encoder(EncoderOptions(model="m", tool_namespaces=namespaces, response_id="resp_1", created=1))
        events = [
            ir.MessageStart("r", "m"),
            ir.ToolCallStart(0, "c", "ns__t"),
            ir.ToolCallArgsDelta(0, "{}"),
            ir.ToolCallEnd(0),
            ir.Finish(ir.FinishReason.TOOL_CALLS),
        ]
        text = (enc.feed(events) + enc.close()).decode()
        done = [json.loads(line[6:]) for line in text.splitlines() if '"response.output_item.done"' in line]
        item = done[0]["item"]
    else:
        resp = ir.Response("r", "m", [ir.ToolCallPart("c", "ns__t", {})], ir.FinishReason.TOOL_CALLS)
        item = codec.render_response(resp, "m", tool_namespaces=namespaces)["output"][0]
    assert (item["namespace"], item["name"]) == ("ns", "t")


@pytest.mark.parametrize(
    ("dialect", "dropped"),
    [
        ("openai_chat", ["web_search", "code_interpreter"]),
        ("claude", ["web_search", "code_interpreter"]),
        ("gemini", ["web_search", "code_interpreter"]),
        ("kiro", ["web_search", "code_interpreter"]),
        ("openai_responses", []),
    ],
)
def test_dropped_tools_per_dialect(dialect: str, dropped: list[str]) -> None:
    req = get_codec("openai_responses").parse_request(json.loads(json.dumps(CODEX)))
    assert dropped_tools(req.tools, dialect) == dropped


def test_claude_server_tools_only_run_on_claude() -> None:
    tools = [
        ir.Tool("web_search", kind="web_search_20250305", raw={"type": "web_search_20250305", "name": "web_search"})
    ]
    assert dropped_tools(tools, "claude") == []
    assert dropped_tools(tools, "openai_chat") == ["web_search"]


class _Adapter:
    dialect = "openai_chat"


class _Exchange:
    passthrough = False
    adapter = _Adapter()
    attempts: list[str] = []


def test_header_and_flow_comment_name_the_dropped_tools() -> None:
    flow = tflow.tflow(resp=True)
    route = Route("openai_responses", "generate", provider="openai-custom", model="m")
    route.request = get_codec("openai_responses").parse_request(json.loads(json.dumps(CODEX)))
    flow.metadata[ROUTE] = route
    flow.metadata[EXCHANGE] = _Exchange()
    addon = DroppedTools()
    with taddons.context(addon):
        addon.response(flow)
    assert flow.response.headers[HEADER] == "web_search, code_interpreter"
    assert flow.metadata[DROPPED_TOOLS] == ["web_search", "code_interpreter"]
    del flow.metadata[EXCHANGE]
    assert "dropped tools: web_search, code_interpreter" in describe(flow)


def test_nothing_is_reported_for_passthrough() -> None:
    flow = tflow.tflow(resp=True)
    route = Route("openai_responses", "generate")
    route.request = get_codec("openai_responses").parse_request(json.loads(json.dumps(CODEX)))
    flow.metadata[ROUTE] = route
    exchange = _Exchange()
    exchange.passthrough = True
    flow.metadata[EXCHANGE] = exchange
    DroppedTools().response(flow)
    assert HEADER not in flow.response.headers
    assert tool_namespaces(route.request.tools) == {"multi_agent_v1__spawn_agent": ("multi_agent_v1", "spawn_agent")}
    assert isinstance(flow.response, http.Response)
