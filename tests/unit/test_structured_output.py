"""Structured output between dialects: Gemini Schema -> JSON Schema, OpenAI response_format /
Responses text.format, Claude's forced tool (and its answer back as JSON text).
Golden vectors in tests/vectors/cross/structured_output.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translators import get_codec, ir
from translators.claude import STRUCTURED_TOOL, StructuredOutputDecoder, structured_response
from translators.schema_clean import gemini_to_json_schema

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "cross" / "structured_output.json").read_text())
KEYS = {
    "openai_chat": ["response_format"],
    "openai_responses": ["text"],
    "claude": ["tools", "tool_choice"],
    "gemini": ["generationConfig"],
}


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
@pytest.mark.parametrize("upstream", list(KEYS))
def test_structured_output_vector(case: dict[str, Any], upstream: str) -> None:
    model = "m" if case["dialect"] == "gemini" else None
    req = get_codec(case["dialect"]).parse_request(copy.deepcopy(case["client"]), model=model)
    assert {"type": req.response_format.type, "schema": req.response_format.schema} == case["ir"]
    body = get_codec(upstream).render_request(req, "m")
    assert {k: body.get(k) for k in KEYS[upstream]} == case["upstream"][upstream]


def _claude_stream(args: str) -> bytes:
    def ev(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    return "".join(
        [
            ev(
                "message_start",
                {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3}}},
            ),
            ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_1", "name": STRUCTURED_TOOL, "input": {}},
                },
            ),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": args[:5]},
                },
            ),
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": args[5:]},
                },
            ),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
            ),
            ev("message_stop", {"type": "message_stop"}),
        ]
    ).encode()


@pytest.mark.parametrize(
    ("args", "wrapped", "text"),
    [('{"city": "Paris"}', False, '{"city": "Paris"}'), ('{"value": ["a", "b"]}', True, '["a", "b"]')],
)
def test_stream_decoder_turns_the_forced_tool_into_text(args: str, wrapped: bool, text: str) -> None:
    decoder = StructuredOutputDecoder(get_codec("claude").decoder(), wrapped)
    data = _claude_stream(args)
    events = decoder.feed(data[:100]) + decoder.feed(data[100:]) + decoder.close()
    assert not any(isinstance(e, ir.ToolCallStart | ir.ToolCallArgsDelta | ir.ToolCallEnd) for e in events)
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == text
    assert [e.reason for e in events if isinstance(e, ir.Finish)] == [ir.FinishReason.STOP]


def test_unary_answer_turns_the_forced_tool_into_text() -> None:
    resp = ir.Response("id", "m", [ir.ToolCallPart("t", STRUCTURED_TOOL, {"value": [1]})], ir.FinishReason.TOOL_CALLS)
    out = structured_response(resp, wrapped=True)
    assert out.parts == [ir.TextPart("[1]")] and out.finish_reason == ir.FinishReason.STOP
    other = ir.Response("id", "m", [ir.ToolCallPart("t", "get_weather", {})], ir.FinishReason.TOOL_CALLS)
    assert structured_response(other, wrapped=False) is other


_types = st.sampled_from(["STRING", "NUMBER", "INTEGER", "BOOLEAN", "string", "object"])
_schemas = st.recursive(
    st.builds(lambda t, n: {"type": t, **({"nullable": True} if n else {})}, _types, st.booleans()),
    lambda inner: st.one_of(
        st.builds(
            lambda p: {"type": "OBJECT", "properties": p, "propertyOrdering": sorted(p, reverse=True)},
            st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
        ),
        st.builds(lambda i: {"type": "ARRAY", "items": i, "minItems": "1"}, inner),
    ),
    max_leaves=8,
)


@given(_schemas)
def test_gemini_schema_becomes_json_schema(schema: dict[str, Any]) -> None:
    original = copy.deepcopy(schema)
    out = gemini_to_json_schema(schema)
    assert schema == original
    assert gemini_to_json_schema(out) == out  # standard JSON Schema is left as it is
    text = json.dumps(out)
    assert "nullable" not in text and "propertyOrdering" not in text and '"1"' not in text
    assert not any(f'"{t}"' in text for t in ("STRING", "OBJECT", "ARRAY", "INTEGER", "NUMBER", "BOOLEAN"))
