"""Gemini codec: golden vectors (tests/vectors/gemini) and properties of the stream and request paths."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators import ir
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, TranslationError
from translators.gemini import codec, unwrap_code_assist, wrap_code_assist
from translators.ir import (
    Finish,
    FinishReason,
    ImagePart,
    Message,
    MessageStart,
    Reasoning,
    Request,
    StreamError,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
    UsageUpdate,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "gemini"


def to_json(obj: Any) -> Any:
    """IR -> JSON for vectors: `_` names the class, fields at their default are left out."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {"_": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value != _default(f):
                out[f.name] = to_json(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING  # a required field: always written


def from_json(data: Any) -> Any:
    if isinstance(data, list):
        return [from_json(x) for x in data]
    if not isinstance(data, dict):
        return data
    if "_" not in data:
        return {k: from_json(v) for k, v in data.items()}
    kwargs = {k: from_json(v) for k, v in data.items() if k != "_"}
    for key in ("finish_reason", "reason"):
        if key in kwargs:
            kwargs[key] = FinishReason(kwargs[key])
    return getattr(ir, data["_"])(**kwargs)


def vectors(kind: str) -> list[Any]:
    cases = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        case = json.loads(path.read_text())
        if case["kind"] == kind:
            cases.append(pytest.param(case, id=path.stem))
    assert cases, f"no {kind} vectors"
    return cases


def decode(data: bytes, step: int = 0) -> list[Any]:
    dec = codec.decoder()
    events = []
    if step:
        for i in range(0, len(data), step):
            events += dec.feed(data[i : i + step])
    else:
        events += dec.feed(data)
    return events + dec.close()


# ---------------------------------------------------------------------------------------------
# Golden vectors


@pytest.mark.parametrize("case", vectors("request"))
def test_request_vector(case: dict[str, Any]) -> None:
    req = codec.parse_request(case["body"], model=case["model"], stream=case["stream"])
    assert to_json(req) == case["ir"]
    assert codec.render_request(req, case["render_model"]) == case["rendered"]


@pytest.mark.parametrize("case", vectors("render_request"))
def test_render_request_vector(case: dict[str, Any]) -> None:
    assert codec.render_request(from_json(case["ir"]), case["model"]) == case["rendered"]


@pytest.mark.parametrize("case", vectors("response"))
def test_response_vector(case: dict[str, Any]) -> None:
    resp = codec.parse_response(case["body"])
    assert to_json(resp) == case["ir"]
    assert codec.render_response(resp, case["render_model"]) == case["rendered"]


@pytest.mark.parametrize("case", vectors("decode"))
def test_decode_vector(case: dict[str, Any]) -> None:
    data = case["sse"].encode()
    assert to_json(decode(data)) == case["events"]
    assert to_json(decode(data, step=1)) == case["events"]


@pytest.mark.parametrize("case", vectors("encode"))
def test_encode_vector(case: dict[str, Any]) -> None:
    enc = codec.encoder(EncoderOptions(**case["options"]))
    outputs = [enc.feed(from_json(batch)).decode() for batch in case["feeds"]]
    if case["close"]:
        outputs.append(enc.close().decode())
    assert outputs == case["outputs"]
    assert enc.close() == b""
    if case["options"]["gemini_mode"] == "json":
        assert isinstance(json.loads("".join(outputs)), list)


# ---------------------------------------------------------------------------------------------
# Errors name the field

USER_HI = {"role": "user", "parts": [{"text": "hi"}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([USER_HI], ""),
        ({"systemInstruction": {"parts": [{"text": "x"}]}}, "contents"),
        ({"contents": {"role": "user"}}, "contents"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": "hi"}]}, "contents[0].parts"),
        ({"contents": [{"parts": [{"videoMetadata": {}}]}]}, "contents[0].parts[0]"),
        ({"contents": [{"parts": [{"inlineData": {"data": "AAAA"}}]}]}, "contents[0].parts[0].inlineData.mimeType"),
        ({"contents": [{"parts": [{"fileData": {"mimeType": "image/png"}}]}]}, "contents[0].parts[0].fileData.fileUri"),
        ({"contents": [USER_HI, {"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
         "contents[1].parts[0].functionCall.name"),
        ({"contents": [USER_HI, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": [1]}}]}]},
         "contents[1].parts[0].functionCall.args"),
        ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "contents[0].parts[0].functionResponse"),
        ({"contents": [USER_HI], "generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
        ({"contents": [USER_HI], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
        ({"contents": [USER_HI], "generation_config": {"top_k": 1.5}}, "generationConfig.topK"),
        ({"contents": [USER_HI], "generationConfig": {"topK": float("inf")}}, "generationConfig.topK"),
        ({"contents": [USER_HI], "generationConfig": {"responseSchema": [1]}}, "generationConfig.responseSchema"),
        ({"contents": [USER_HI], "generationConfig": {"stopSequences": [1]}}, "generationConfig.stopSequences"),
        ({"contents": [USER_HI],
          "generationConfig": {"thinkingConfig": {"thinkingBudget": 10, "thinkingLevel": "low"}}},
         "generationConfig.thinkingConfig"),
        ({"contents": [USER_HI], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
         "toolConfig.functionCallingConfig.mode"),
        ({"contents": [USER_HI], "tools": [{"functionDeclarations": [{"description": "no name"}]}]},
         "tools[0].functionDeclarations[0].name"),
        ({"contents": [USER_HI], "tools": [{"functionDeclarations": [{"name": "f", "parameters": "x"}]}]},
         "tools[0].functionDeclarations[0].parameters"),
    ],
)  # fmt: skip
def test_parse_request_error_names_field(body: Any, field: str) -> None:
    with pytest.raises(TranslationError) as e:
        codec.parse_request(body, model="gemini-2.5-flash")
    assert e.value.field == field
    assert e.value.status == 400 and e.value.message


def _call(call_id: str, name: str = "f") -> ToolCallPart:
    return ToolCallPart(call_id, name, {})


def _result(call_id: str, name: str | None = None) -> ToolResultPart:
    return ToolResultPart(call_id, [TextPart("ok")], name=name)


@pytest.mark.parametrize(
    ("messages", "field", "words"),
    [
        ([Message("user", [TextPart("a")]), Message("assistant", [_call("A")]), Message("user", [_result("B")])],
         "messages[2].parts[0].tool_call_id", "'B'"),
        ([Message("user", [TextPart("a"), ImagePart(media_type="image/png", url="https://example.com/cat.png")])],
         "messages[0].parts[1].url", "inline"),
        ([Message("user", [ImagePart(data="AAAA")])], "messages[0].parts[0].media_type", "media type"),
        ([Message("user", [TextPart("a")]), Message("assistant", [_call("A"), _call("B")]),
          Message("user", [_result("A")])],
         "messages", "answers 1 function call(s) but the model turn before it made 2"),
        ([Message("user", [TextPart("a")]), Message("user", [_result("X", name="f")])], "messages", "made 0"),
    ],
)  # fmt: skip
def test_render_request_error_names_field(messages: list[Message], field: str, words: str) -> None:
    with pytest.raises(TranslationError) as e:
        codec.render_request(Request("m", messages), "gemini-2.5-flash")
    assert e.value.field == field
    assert words in e.value.message


# ---------------------------------------------------------------------------------------------
# Mapping tables


@pytest.mark.parametrize(
    ("gemini", "with_call", "expected"),
    [
        ("STOP", False, FinishReason.STOP),
        ("STOP", True, FinishReason.TOOL_CALLS),
        ("MAX_TOKENS", True, FinishReason.LENGTH),
        ("SAFETY", False, FinishReason.CONTENT_FILTER),
        ("RECITATION", False, FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", False, FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", False, FinishReason.CONTENT_FILTER),
        ("SPII", False, FinishReason.CONTENT_FILTER),
        ("IMAGE_SAFETY", False, FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", False, FinishReason.ERROR),
        ("UNEXPECTED_TOOL_CALL", False, FinishReason.ERROR),
        ("OTHER", False, FinishReason.STOP),
        ("OTHER", True, FinishReason.TOOL_CALLS),
        ("SOMETHING_NEW", False, FinishReason.STOP),
    ],
)
def test_finish_reason_mapping(gemini: str, with_call: bool, expected: FinishReason) -> None:
    parts: list[dict[str, Any]] = [{"text": "x"}]
    if with_call:
        parts.append({"functionCall": {"name": "f", "args": {}}})
    body = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": gemini}], "responseId": "r"}
    assert codec.parse_response(body).finish_reason is expected


@pytest.mark.parametrize(
    ("reasoning", "model", "expected"),
    [
        (Reasoning(effort="low"), "gemini-3-pro-preview", {"thinkingLevel": "low", "includeThoughts": True}),
        (Reasoning(budget_tokens=5000), "models/gemini-3-flash", {"thinkingLevel": "high", "includeThoughts": True}),
        (Reasoning(effort="none"), "gemini-3-pro-preview", {"thinkingLevel": "low"}),
        (Reasoning(effort="xhigh"), "gemini-2.5-flash", {"thinkingBudget": 24576, "includeThoughts": True}),
        (Reasoning(effort="medium"), "gemini-2.5-pro", {"thinkingBudget": 8192, "includeThoughts": True}),
        (Reasoning(budget_tokens=0), "gemini-2.5-flash", {"thinkingBudget": 0}),
        (Reasoning(budget_tokens=-1), "gemini-2.5-pro", {"thinkingBudget": -1, "includeThoughts": True}),
        (Reasoning(summary="auto"), "gemini-2.5-pro", {"includeThoughts": True}),
    ],
)  # fmt: skip
def test_thinking_render(reasoning: Reasoning, model: str, expected: dict[str, Any]) -> None:
    req = Request("m", [Message("user", [TextPart("hi")])], reasoning=reasoning)
    assert codec.render_request(req, model)["generationConfig"]["thinkingConfig"] == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"thinkingBudget": -1, "includeThoughts": True}, Reasoning(summary="auto")),
        ({"thinkingBudget": -1}, None),
        ({"thinking_budget": 0}, Reasoning(budget_tokens=0)),
        ({"thinkingLevel": "LOW"}, Reasoning(effort="low")),
    ],
)
def test_thinking_parse(config: dict[str, Any], expected: Reasoning | None) -> None:
    body = {"contents": [USER_HI], "generationConfig": {"thinkingConfig": config}}
    assert codec.parse_request(body, model="gemini-2.5-pro").reasoning == expected


def test_dummy_signature_only_for_gemini3_current_turn() -> None:
    messages = [
        Message("user", [TextPart("first")]),
        Message("assistant", [_call("A")]),
        Message("user", [_result("A")]),
        Message("assistant", [TextPart("done")]),
        Message("user", [TextPart("second")]),
        Message("assistant", [_call("B"), _call("C")]),
        Message("user", [_result("B"), _result("C")]),
        Message("assistant", [_call("D")]),
    ]
    gemini3 = codec.render_request(Request("m", messages), "gemini-3-pro-preview")["contents"]
    assert "thoughtSignature" not in gemini3[1]["parts"][0]  # an earlier turn: not validated
    assert gemini3[5]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in gemini3[5]["parts"][1]  # only the first call of a step is signed
    assert gemini3[7]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    gemini25 = codec.render_request(Request("m", messages), "gemini-2.5-pro")["contents"]
    assert all("thoughtSignature" not in p for c in gemini25 for p in c["parts"])


def test_foreign_signatures_never_reach_gemini() -> None:
    messages = [
        Message("user", [TextPart("q")]),
        Message("assistant", [ToolCallPart("A", "f", {}, "claude-sig", "claude")]),
    ]
    rendered = codec.render_request(Request("m", messages), "gemini-3-pro-preview")
    assert rendered["contents"][1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    resp = ir.Response(
        "r", "m", [ir.ThinkingPart("t", "claude-sig", "claude"), ToolCallPart("A", "f", {}, "s", "kiro")]
    )
    parts = codec.render_response(resp, "m")["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "t", "thought": True}, {"functionCall": {"id": "A", "name": "f", "args": {}}}]


# ---------------------------------------------------------------------------------------------
# Code Assist helpers and error bodies


def test_wrap_and_unwrap_code_assist() -> None:
    body = {"contents": []}
    assert wrap_code_assist(body, "models/gemini-2.5-pro", "proj-1") == {
        "model": "gemini-2.5-pro",
        "project": "proj-1",
        "request": body,
    }
    assert wrap_code_assist(body, "gemini-2.5-pro", "p", "prompt-1")["user_prompt_id"] == "prompt-1"
    inner = {"candidates": []}
    assert unwrap_code_assist({"response": inner, "traceId": "t"}) == {"candidates": [], "responseId": "t"}
    assert inner == {"candidates": []}
    assert unwrap_code_assist({"response": {"responseId": "r"}, "traceId": "t"}) == {"responseId": "r"}
    assert unwrap_code_assist(inner) is inner


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}',
        b'[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]',
    ],
)
def test_error_message_reads_plain_and_array_wrapped_errors(body: bytes) -> None:
    assert codec.error_message(body) == "Quota exceeded"


def test_error_body() -> None:
    assert codec.error_body(429, "slow down") == {
        "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
    }


def test_parse_response_raises_on_error_body() -> None:
    with pytest.raises(TranslationError) as e:
        codec.parse_response([{"error": {"code": 503, "message": "overloaded"}}])
    assert e.value.status == 503


# ---------------------------------------------------------------------------------------------
# Properties

NAMES = st.sampled_from(["get_weather", "read_file", "run"])
TEXTS = st.text(min_size=1, max_size=12).filter(lambda s: not s.lstrip().startswith("{"))
LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
ARGS = st.dictionaries(
    st.text(max_size=6),
    st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids)),
    max_size=3,
)


@st.composite
def conversations(draw: st.DrawFn, shuffle_results: bool = True) -> Request:
    messages: list[Message] = []
    n = 0
    for _ in range(draw(st.integers(1, 4))):
        messages.append(Message("user", [TextPart(t) for t in draw(st.lists(TEXTS, min_size=1, max_size=2))]))
        calls = [ToolCallPart(f"id_{n + k}", draw(NAMES), draw(ARGS)) for k in range(draw(st.integers(0, 3)))]
        n += len(calls)
        lead = [TextPart(t) for t in draw(st.lists(TEXTS, min_size=0 if calls else 1, max_size=1))]
        messages.append(Message("assistant", [*lead, *calls]))
        if calls:
            results = [ToolResultPart(c.id, [TextPart(draw(TEXTS))], draw(st.booleans())) for c in calls]
            messages.append(Message("user", draw(st.permutations(results)) if shuffle_results else results))
    return Request("gemini-2.5-flash", messages)


def flat(messages: list[Message], ids: dict[str, str] | None = None) -> list[tuple[Any, ...]]:
    """Parts in order with their role: merging adjacent same-role turns does not change it."""
    ids = ids or {}
    out: list[tuple[Any, ...]] = []
    for m in messages:
        for p in m.parts:
            if isinstance(p, TextPart):
                out.append((m.role, "text", p.text))
            elif isinstance(p, ToolCallPart):
                out.append((m.role, "call", ids.get(p.id, p.id), p.name, p.arguments))
            elif isinstance(p, ToolResultPart):
                out.append((m.role, "result", ids.get(p.tool_call_id, p.tool_call_id), p.content[0].text, p.is_error))
    return out


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_render_then_parse_keeps_text_calls_and_results(req: Request) -> None:
    body = json.loads(json.dumps(codec.render_request(req, "gemini-2.5-flash")))
    back = codec.parse_request(body, model="gemini-2.5-flash")
    assert flat(back.messages) == flat(req.messages)


@settings(max_examples=150, deadline=None)
@given(conversations(shuffle_results=False))
def test_without_ids_results_match_calls_by_name_and_order(req: Request) -> None:
    body = json.loads(json.dumps(codec.render_request(req, "gemini-2.5-flash")))
    for content in body["contents"]:
        for part in content["parts"]:
            for key in ("functionCall", "functionResponse"):
                part.get(key, {}).pop("id", None)
    back = codec.parse_request(body, model="gemini-2.5-flash")
    # ids are minted by position in the conversation, and every result finds its own call
    assert flat(back.messages) == flat(req.messages, {f"id_{k}": f"call_{k}" for k in range(64)})
    assert codec.parse_request(body, model="gemini-2.5-flash") == back


_THOUGHT = {
    "response": {
        "candidates": [{"content": {"parts": [{"text": "\u601d\u8003", "thought": True, "thoughtSignature": "c2ln"}]}}],
        "responseId": "x",
    }
}
_TEXT = {"candidates": [{"content": {"parts": [{"text": "\u7b54\u3048 \u2013 ok"}]}}]}
# CRLF and LF events, a comment, multi-byte UTF-8 and one event whose JSON spans two data: lines.
STREAM = (
    f"data: {json.dumps(_THOUGHT)}\r\n\r\n: ping\r\n\r\n"
    f"data: {json.dumps(_TEXT, ensure_ascii=False)}\n\n"
    'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"k": "\u221a"}}}]},\n'
    'data:  "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}\r\n\r\n'
).encode()  # fmt: skip


def test_one_byte_chunks_give_the_same_events() -> None:
    whole = decode(STREAM)
    assert type(whole[-1]) is Finish and whole[-1].reason is FinishReason.TOOL_CALLS
    assert decode(STREAM, step=1) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_rechunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    dec = codec.decoder()
    events = [ev for a, b in itertools.pairwise(bounds) for ev in dec.feed(STREAM[a:b])]
    assert events + dec.close() == decode(STREAM)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda s: ("data: " + s + "\n\n").encode()))
def test_decoder_never_raises_and_always_terminates(data: bytes) -> None:
    events = decode(data)
    terminal = [ev for ev in events if type(ev) in (Finish, StreamError)]
    assert len(terminal) == 1 and events[-1] is terminal[0]


@st.composite
def event_streams(draw: st.DrawFn) -> list[list[Any]]:
    """A well-formed upstream stream, in random batches (one batch = one upstream read)."""
    events: list[Any] = [MessageStart("up", "u")]
    calls = 0
    for kind in draw(st.lists(st.sampled_from(["text", "think", "call"]), max_size=8)):
        if kind == "text":
            events += [TextDelta(t) for t in draw(st.lists(TEXTS, min_size=1, max_size=3))]
        elif kind == "think":
            events += [ThinkingDelta(t) for t in draw(st.lists(TEXTS, min_size=1, max_size=3))]
            if draw(st.booleans()):
                events.append(ThinkingSignature(draw(st.text(min_size=1, max_size=8)), "gemini"))
        else:
            args = json.dumps(draw(ARGS))
            cut = draw(st.integers(0, len(args)))
            sig = draw(st.none() | st.text(min_size=1, max_size=8))
            events += [
                ToolCallStart(calls, f"c{calls}", draw(NAMES), sig, "gemini" if sig else None),
                ToolCallArgsDelta(calls, args[:cut]),
                ToolCallArgsDelta(calls, args[cut:]),
                ToolCallEnd(calls),
            ]
            calls += 1
    reasoning = draw(st.integers(0, 50))
    usage = Usage(
        draw(st.integers(0, 1000)), reasoning + draw(st.integers(0, 50)), draw(st.integers(0, 10)), 0, reasoning
    )
    finish = draw(st.sampled_from([FinishReason.TOOL_CALLS if calls else FinishReason.STOP, FinishReason.LENGTH]))
    events += [UsageUpdate(usage), Finish(finish)]
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(event_streams(), st.sampled_from(["sse", "json"]))
def test_encoded_stream_decodes_to_the_same_response(batches: list[list[Any]], mode: str) -> None:
    enc = codec.encoder(EncoderOptions(model="gemini-x", gemini_mode=mode, response_id="rid"))
    wire = b"".join(enc.feed(batch) for batch in batches) + enc.close()
    original = ResponseAccumulator()
    for batch in batches:
        original.feed(batch)
    if mode == "json":
        chunks = json.loads(wire)
        back = codec.parse_response(chunks)
    else:
        assert all(frame.startswith(b"data: {") for frame in wire.split(b"\r\n\r\n")[:-1])
        acc = ResponseAccumulator()
        acc.feed(decode(wire))
        back = acc.response()
    expected = original.response()
    assert back.parts == expected.parts
    assert back.usage == expected.usage
    assert back.finish_reason is expected.finish_reason
    assert (back.id, back.model) == ("rid", "gemini-x")


ANY_EVENT = st.one_of(
    st.builds(TextDelta, st.text(max_size=5)),
    st.builds(ThinkingDelta, st.text(max_size=5)),
    st.builds(ThinkingSignature, st.text(max_size=5), st.sampled_from(["gemini", "claude", None])),
    st.builds(ToolCallStart, st.integers(0, 2), st.text(max_size=3), st.text(max_size=3)),
    st.builds(ToolCallArgsDelta, st.integers(0, 2), st.text(max_size=6)),
    st.builds(ToolCallEnd, st.integers(0, 2)),
    st.builds(UsageUpdate, st.builds(Usage, st.integers(0, 9), st.integers(0, 9))),
    st.builds(Finish, st.sampled_from(list(FinishReason))),
    st.builds(StreamError, st.text(max_size=5), st.integers(400, 599)),
    st.builds(MessageStart, st.text(max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(ANY_EVENT, max_size=6), max_size=6), st.sampled_from(["sse", "json"]))
def test_encoder_never_raises_and_frames_are_never_empty(batches: list[list[Any]], mode: str) -> None:
    enc = codec.encoder(EncoderOptions(model="m", gemini_mode=mode))
    wire = b"".join(enc.feed(b) for b in batches) + enc.close()
    assert enc.close() == b"" and enc.feed([TextDelta("late")]) == b""
    if mode == "json":
        assert all(isinstance(chunk, dict) and chunk for chunk in json.loads(wire))
    else:
        frames = wire.split(b"\r\n\r\n")
        assert frames[-1] == b""
        for frame in frames[:-1]:
            assert frame.startswith(b"data: ")
            assert json.loads(frame[6:])


def test_urlsafe_base64_from_the_sdk_becomes_standard():
    """google-genai sends bytes URL-safe and unpadded; other upstreams reject that alphabet."""
    body = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "-_-_Pw"}}]}]}
    image = codec.parse_request(body, model="m", stream=False).messages[0].parts[0]
    assert image.data == "+/+/Pw=="
