"""Kiro: request rendering against the upstream's rules, stream decoding of realistic transcripts."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.kiro_frames import (
    error_frame,
    event_frame,
    exception_frame,
    realistic_transcript,
    split_writes,
    tricky_cuts,
    validate_kiro_request,
)
from translators import ir
from translators.base import TranslationError
from translators.eventstream import encode_message
from translators.kiro import (
    ASSISTANT_PLACEHOLDER,
    DEFAULT_MODEL_MAP,
    KiroOptions,
    KiroStreamDecoder,
    kiro_tool_name,
    parse_error,
    render_request,
    thinking_requested,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "kiro"
CONV_ID = "00000000-0000-4000-8000-000000000000"

# ---------------------------------------------------------------------------------------------
# Vector format: JSON requests in IR shape; {"$repeat": [s, n]} and {"$concat": [...]} keep long
# strings short on disk.


def expand(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$repeat"}:
            s, n = obj["$repeat"]
            return s * n
        if set(obj) == {"$concat"}:
            return "".join(expand(x) for x in obj["$concat"])
        return {k: expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v) for v in obj]
    return obj


def _part(p: dict[str, Any]) -> ir.Part:
    t = p["type"]
    if t == "text":
        return ir.TextPart(p["text"])
    if t == "image":
        return ir.ImagePart(p.get("media_type"), p.get("data"), p.get("url"))
    if t == "tool_call":
        return ir.ToolCallPart(p["id"], p["name"], p["arguments"])
    if t == "tool_result":
        content = [_part(c) for c in p.get("content", [])]
        return ir.ToolResultPart(p["tool_call_id"], content, p.get("is_error", False), p.get("name"))  # type: ignore[arg-type]
    if t == "thinking":
        return ir.ThinkingPart(p["text"], p.get("signature"))
    raise ValueError(t)


def ir_request(d: dict[str, Any]) -> ir.Request:
    d = expand(d)
    tools = [
        ir.Tool(
            t["name"],
            t.get("description", ""),
            t.get("parameters", {"type": "object", "properties": {}}),
            t.get("kind", "function"),
            t.get("raw"),
        )
        for t in d.get("tools", [])
    ]
    return ir.Request(
        model=d.get("model", "claude-sonnet-4-5"),
        messages=[ir.Message(m["role"], [_part(p) for p in m["parts"]]) for m in d["messages"]],
        system=[ir.TextPart(s) for s in d.get("system", [])],
        tools=tools,
        tool_choice=ir.ToolChoice(**d["tool_choice"]) if "tool_choice" in d else None,
        max_tokens=d.get("max_tokens"),
        temperature=d.get("temperature"),
        top_p=d.get("top_p"),
        reasoning=ir.Reasoning(**d["reasoning"]) if "reasoning" in d else None,
    )


def render_vector(vec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    req = ir_request(vec["request"])
    body, names, dropped = render_request(
        req,
        vec["model"],
        profile_arn=vec["profile_arn"],
        conversation_id=CONV_ID,
        options=KiroOptions(**vec["options"]),
    )
    return body, names, dropped


def _simple(*messages: ir.Message, **kw: Any) -> ir.Request:
    return ir.Request(model="claude-sonnet-4-5", messages=list(messages), **kw)


def _user(*parts: ir.Part) -> ir.Message:
    return ir.Message("user", list(parts))


def _assistant(*parts: ir.Part) -> ir.Message:
    return ir.Message("assistant", list(parts))


def _render(req: ir.Request, **kw: Any) -> dict[str, Any]:
    kw.setdefault("profile_arn", None)
    return render_request(req, "claude-sonnet-4-5", conversation_id=CONV_ID, **kw).body


# ---------------------------------------------------------------------------------------------
# Request vectors


VECTOR_FILES = sorted(VECTORS.glob("*.json"))


def test_vectors_exist() -> None:
    assert len(VECTOR_FILES) >= 6


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_request_vector(path: Path) -> None:
    vec = json.loads(path.read_text("utf-8"))
    body, names, dropped = render_vector(vec)
    assert validate_kiro_request(body) is None
    assert names == vec["expect"]["tool_name_map"]
    assert dropped == vec["expect"]["dropped_tools"]
    assert body == expand(vec["expect"]["body"])


def _vector_body(name: str) -> dict[str, Any]:
    return render_vector(json.loads((VECTORS / f"{name}.json").read_text("utf-8")))[0]


def test_claude_code_vector_rules() -> None:
    """The rules behind the golden body, asserted directly so a wrong golden cannot hide them."""
    body = _vector_body("claude_code_session")
    state = body["conversationState"]
    cur = state["currentMessage"]["userInputMessage"]
    specs = {t["toolSpecification"]["name"]: t["toolSpecification"] for t in cur["userInputMessageContext"]["tools"]}
    long_name = kiro_tool_name("mcp__claude_in_chrome__computer_use_take_screenshot_of_the_current_browser_tab_now")
    assert set(specs) == {"Bash", "Read", "Edit", "TodoWrite", long_name}  # WebSearch, web_search dropped
    assert len(long_name) == 64
    assert len(specs["Bash"]["description"].encode()) == 10236  # cut on a UTF-8 boundary under 10240
    assert specs["TodoWrite"]["description"] == "TodoWrite"
    history = state["history"]
    assert history[0]["userInputMessage"]["content"].startswith("You are Claude Code")
    assert "<thinking>" not in json.dumps(body)  # thinking not requested: old thinking not replayed
    results = history[2]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert [(r["toolUseId"], r["status"]) for r in results] == [("toolu_01", "success"), ("toolu_02", "error")]
    assert history[3]["assistantResponseMessage"]["toolUses"][0]["name"] == long_name
    assert cur["content"] == "Also run the linter."
    assert cur["userInputMessageContext"]["toolResults"][0]["content"] == [{"text": "(no output)"}]
    assert body["profileArn"].startswith("arn:aws:codewhisperer")
    assert body["inferenceConfig"] == {"maxTokens": 32000, "temperature": 1.0}


# ---------------------------------------------------------------------------------------------
# Request rules one by one


def test_defaults_add_no_hidden_text() -> None:
    body = _render(_simple(_user(ir.TextPart("hi"))))
    assert body == {
        "conversationState": {
            "chatTriggerType": "MANUAL",
            "conversationId": CONV_ID,
            "currentMessage": {
                "userInputMessage": {"content": "hi", "modelId": "claude-sonnet-4.5", "origin": "AI_EDITOR"}
            },
        }
    }


def test_identity_prompt_and_placeholder_tool_only_when_opted_in() -> None:
    req = _simple(_user(ir.TextPart("hi")), system=[ir.TextPart("sys")])
    body = _render(req, options=KiroOptions(identity_prompt="You are Kiro.", placeholder_tool=True))
    msg = body["conversationState"]["currentMessage"]["userInputMessage"]
    assert msg["content"] == "You are Kiro.\n\nsys\n\nhi"
    assert msg["userInputMessageContext"]["tools"][0]["toolSpecification"]["name"] == "no_tool_available"
    assert validate_kiro_request(body) is None


def test_system_goes_before_first_user_text() -> None:
    req = _simple(
        _user(ir.TextPart("q1")), _assistant(ir.TextPart("a1")), _user(ir.TextPart("q2")), system=[ir.TextPart("S")]
    )
    state = _render(req)["conversationState"]
    assert state["history"][0]["userInputMessage"]["content"] == "S\n\nq1"
    assert state["currentMessage"]["userInputMessage"]["content"] == "q2"


@pytest.mark.parametrize(
    ("reasoning", "tag"),
    [
        (ir.Reasoning(effort="high"), "<max_thinking_length>24576</max_thinking_length>"),
        (ir.Reasoning(effort="low"), "<max_thinking_length>1024</max_thinking_length>"),
        (ir.Reasoning(budget_tokens=2000), "<max_thinking_length>2000</max_thinking_length>"),
        (ir.Reasoning(budget_tokens=100), "<max_thinking_length>1024</max_thinking_length>"),
        (ir.Reasoning(effort="auto"), "<max_thinking_length>20000</max_thinking_length>"),
    ],
)
def test_thinking_tags(reasoning: ir.Reasoning, tag: str) -> None:
    req = _simple(_user(ir.TextPart("hi")), system=[ir.TextPart("sys")], reasoning=reasoning)
    assert thinking_requested(req)
    content = _render(req)["conversationState"]["currentMessage"]["userInputMessage"]["content"]
    assert content == f"<thinking_mode>enabled</thinking_mode>{tag}\nsys\n\nhi"


@pytest.mark.parametrize("reasoning", [None, ir.Reasoning(effort="none"), ir.Reasoning(budget_tokens=0)])
def test_no_thinking_tags_when_not_asked(reasoning: ir.Reasoning | None) -> None:
    req = _simple(_user(ir.TextPart("hi")), reasoning=reasoning)
    assert not thinking_requested(req)
    assert "thinking" not in json.dumps(_render(req))


def test_thinking_tags_not_duplicated() -> None:
    sys_text = "<thinking_mode>interleaved</thinking_mode> be careful"
    req = _simple(_user(ir.TextPart("hi")), system=[ir.TextPart(sys_text)], reasoning=ir.Reasoning(effort="high"))
    content = _render(req)["conversationState"]["currentMessage"]["userInputMessage"]["content"]
    assert content == f"{sys_text}\n\nhi"


def test_model_mapping() -> None:
    req = _simple(_user(ir.TextPart("hi")))
    for client, kiro_id in DEFAULT_MODEL_MAP.items():
        body = render_request(req, client, profile_arn=None, conversation_id=CONV_ID).body
        assert body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == kiro_id
    dotted = render_request(req, "claude-opus-4.6", profile_arn=None, conversation_id=CONV_ID).body
    assert dotted["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "claude-opus-4.6"
    with pytest.raises(TranslationError) as exc:
        render_request(req, "gpt-4o", profile_arn=None, conversation_id=CONV_ID)
    assert exc.value.status == 404 and exc.value.field == "model"
    custom = KiroOptions(model_map={"glm": "glm-5"})
    body = render_request(req, "glm", profile_arn=None, conversation_id=CONV_ID, options=custom).body
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "glm-5"


def test_tool_names() -> None:
    assert kiro_tool_name("Read") == "Read"
    assert kiro_tool_name("x" * 64) == "x" * 64
    long_a, long_b = "a" * 65, "a" * 64 + "b"
    short_a, short_b = kiro_tool_name(long_a), kiro_tool_name(long_b)
    assert short_a == kiro_tool_name(long_a) and short_a != short_b
    assert len(short_a) == 64 and re.fullmatch(r"a{51}_[0-9a-f]{12}", short_a)
    dotted = kiro_tool_name("server.tool:run")
    assert re.fullmatch(r"server_tool_run_[0-9a-f]{12}", dotted)


def test_long_names_are_mapped_back_in_requests_and_streams() -> None:
    long = "mcp__" + "very_long_server_name__" * 3 + "tool"
    tool = ir.Tool(long, "does things")
    call = ir.ToolCallPart("t1", long, {"x": 1})
    req = _simple(
        _user(ir.TextPart("go")),
        _assistant(call),
        _user(ir.ToolResultPart("t1", [ir.TextPart("ok")])),
        tools=[tool],
    )
    body, names, _ = render_request(req, "claude-sonnet-4-5", profile_arn=None, conversation_id=CONV_ID)
    short = kiro_tool_name(long)
    assert names == {short: long}
    assert body["conversationState"]["history"][1]["assistantResponseMessage"]["toolUses"][0]["name"] == short
    assert validate_kiro_request(body) is None
    events = _decode(
        [event_frame("toolUseEvent", {"toolUseId": "k1", "name": short, "input": "{}", "stop": True})], names
    )
    assert ir.ToolCallStart(0, "k1", long) in events


def test_profile_arn_and_inference_config_switches() -> None:
    req = _simple(_user(ir.TextPart("hi")), max_tokens=100, top_p=0.5)
    assert "profileArn" not in _render(req)
    assert _render(req, profile_arn="arn:x")["profileArn"] == "arn:x"
    assert _render(req)["inferenceConfig"] == {"maxTokens": 100, "topP": 0.5}
    assert "inferenceConfig" not in _render(req, options=KiroOptions(inference_config=False))


def test_empty_contents_get_placeholders() -> None:
    req = _simple(
        _user(ir.TextPart("   ")),
        _assistant(ir.ToolCallPart("t1", "Read", {})),
        _user(ir.ToolResultPart("t1", [])),
        tools=[ir.Tool("Read", "read")],
    )
    body = _render(req)
    state = body["conversationState"]
    assert state["history"][0]["userInputMessage"]["content"] == "Continue"
    assert state["history"][1]["assistantResponseMessage"]["content"] == ASSISTANT_PLACEHOLDER
    assert state["currentMessage"]["userInputMessage"]["content"] == "Tool results provided."
    assert validate_kiro_request(body) is None


def test_tool_choice_none_offers_only_tools_the_history_needs() -> None:
    tools = [ir.Tool("Read", "read"), ir.Tool("Write", "write")]
    plain = _simple(_user(ir.TextPart("hi")), tools=tools, tool_choice=ir.ToolChoice("none"))
    assert "userInputMessageContext" not in _render(plain)["conversationState"]["currentMessage"]["userInputMessage"]
    with_history = _simple(
        _user(ir.TextPart("hi")),
        _assistant(ir.ToolCallPart("t1", "Read", {})),
        _user(ir.ToolResultPart("t1", [ir.TextPart("x")])),
        tools=tools,
        tool_choice=ir.ToolChoice("none"),
    )
    body = _render(with_history)
    ctx = body["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
    assert [t["toolSpecification"]["name"] for t in ctx["tools"]] == ["Read"]
    assert validate_kiro_request(body) is None


def test_history_calls_to_refused_tools_become_text() -> None:
    req = _simple(
        _user(ir.TextPart("search")),
        _assistant(ir.ToolCallPart("ws1", "WebSearch", {"query": "kiro"})),
        _user(ir.ToolResultPart("ws1", [ir.TextPart("results")], name="WebSearch")),
        tools=[ir.Tool("WebSearch", "search")],
    )
    body, _, dropped = render_request(req, "claude-sonnet-4-5", profile_arn=None, conversation_id=CONV_ID)
    assert dropped == ["WebSearch"]
    assert validate_kiro_request(body) is None
    cur = body["conversationState"]["currentMessage"]["userInputMessage"]
    assert cur["content"] == "[Tool result for WebSearch ws1]\nresults"
    assert "toolUses" not in body["conversationState"]["history"][1]["assistantResponseMessage"]


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (ir.ImagePart(url="https://example.com/a.png"), "downloaded first"),
        (ir.ImagePart(media_type="image/bmp", data="Qk0="), "not supported"),
    ],
)
def test_unrepresentable_images(part: ir.ImagePart, match: str) -> None:
    with pytest.raises(TranslationError, match=match) as exc:
        _render(_simple(_user(ir.TextPart("look"), part)))
    assert exc.value.field == "messages[0].parts[1]"


def test_unrepresentable_parts() -> None:
    with pytest.raises(TranslationError, match="assistant turn"):
        _render(_simple(_user(ir.TextPart("a")), _assistant(ir.ImagePart("image/png", "AA=="))))
    with pytest.raises(TranslationError, match="at least one message"):
        _render(_simple())


# ---------------------------------------------------------------------------------------------
# The validator itself must catch each rule (the fake server relies on it).


def _valid_body() -> dict[str, Any]:
    return copy.deepcopy(_vector_body("claude_code_session"))


def _break_alternation(b: dict[str, Any]) -> None:
    h = b["conversationState"]["history"]
    h.insert(1, copy.deepcopy(h[0]))


def _end_with_user(b: dict[str, Any]) -> None:
    b["conversationState"]["history"].pop()


def _empty_content(b: dict[str, Any]) -> None:
    b["conversationState"]["history"][1]["assistantResponseMessage"]["content"] = " "


def _orphan_result(b: dict[str, Any]) -> None:
    b["conversationState"]["history"][2]["userInputMessage"]["userInputMessageContext"]["toolResults"][0][
        "toolUseId"
    ] = "nope"


def _dup_use(b: dict[str, Any]) -> None:
    b["conversationState"]["history"][3]["assistantResponseMessage"]["toolUses"][0]["toolUseId"] = "toolu_01"


def _long_name(b: dict[str, Any]) -> None:
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"][0][
        "toolSpecification"
    ]["name"] = "n" * 65


def _long_description(b: dict[str, Any]) -> None:
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"][0][
        "toolSpecification"
    ]["description"] = "d" * 10241


def _missing_tools(b: dict[str, Any]) -> None:
    del b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"]


def _cache_point(b: dict[str, Any]) -> None:
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"][0][
        "cachePoint"
    ] = {"type": "default"}


def _unanswered_use(b: dict[str, Any]) -> None:
    b["conversationState"]["history"][2]["userInputMessage"]["userInputMessageContext"]["toolResults"].pop()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_break_alternation, "alternation"),
        (_end_with_user, "history must end with an assistant entry"),
        (_empty_content, "empty content"),
        (_orphan_result, "answers no toolUse"),
        (_dup_use, "duplicate toolUseId"),
        (_long_name, "bad tool name"),
        (_long_description, "over 10240 bytes"),
        (_missing_tools, "TOOL_CONFIG_MISSING"),
        (_cache_point, "extra keys"),
        (_unanswered_use, "has no toolResult"),
    ],
)
def test_validator_rejects_broken_bodies(mutate: Any, reason: str) -> None:
    body = _valid_body()
    assert validate_kiro_request(body) is None
    mutate(body)
    problem = validate_kiro_request(body)
    assert problem is not None and reason in problem


# ---------------------------------------------------------------------------------------------
# Stream decoding

_TEXT_CALL_ID = re.compile(r"tooluse_[0-9a-f]{22}")


def _norm(events: list[ir.Event]) -> list[ir.Event]:
    """Text-form calls get random ids; replace them with a stable marker."""
    out: list[ir.Event] = []
    for ev in events:
        if isinstance(ev, ir.ToolCallStart) and _TEXT_CALL_ID.fullmatch(ev.id):
            ev = ir.ToolCallStart(ev.index, "<text-call>", ev.name)
        out.append(ev)
    return out


def _decode(
    frames: list[bytes], names: dict[str, str] | None = None, *, thinking: bool = False, window: int = 200_000
) -> list[ir.Event]:
    d = KiroStreamDecoder(thinking, names, window)
    events: list[ir.Event] = []
    for f in frames:
        events += d.feed(f)
    events += d.close()
    assert d.feed(b"x") == [] and d.close() == []  # finished decoders stay quiet
    _check_grammar(events)
    return _norm(events)


def _check_grammar(events: list[ir.Event]) -> None:
    """ir.py grammar: MessageStart first, calls contiguous with indexes 0..n-1, nothing after the end."""
    if events and not isinstance(events[0], ir.StreamError):
        assert isinstance(events[0], ir.MessageStart)
    assert sum(isinstance(e, ir.MessageStart) for e in events) <= 1
    open_index: int | None = None
    next_index = 0
    for i, ev in enumerate(events):
        if isinstance(ev, (ir.Finish, ir.StreamError)):
            assert i == len(events) - 1, "nothing may follow Finish/StreamError"
        if open_index is not None and not isinstance(ev, ir.StreamError):
            assert isinstance(ev, (ir.ToolCallArgsDelta, ir.ToolCallEnd)) and ev.index == open_index
        if isinstance(ev, ir.ToolCallStart):
            assert open_index is None and ev.index == next_index
            open_index, next_index = ev.index, next_index + 1
        elif isinstance(ev, ir.ToolCallEnd):
            open_index = None


GREP_ARGS = json.dumps({"pattern": 'a]b"c', "path": "src"}, ensure_ascii=False)
TRANSCRIPT_EVENTS: list[ir.Event] = [
    ir.MessageStart(),
    ir.ThinkingDelta("Let me check the file"),
    ir.ThinkingDelta(" — naïve 你好"),
    ir.TextDelta("I'll read it."),
    ir.ToolCallStart(0, "tooluse_1", "Read"),
    ir.ToolCallArgsDelta(0, '{"file_'),
    ir.ToolCallArgsDelta(0, 'path": "/tmp/ä.txt"}'),
    ir.ToolCallEnd(0),
    ir.TextDelta("Also "),
    ir.ToolCallStart(1, "<text-call>", "Grep"),
    ir.ToolCallArgsDelta(1, GREP_ARGS),
    ir.ToolCallEnd(1),
    ir.TextDelta(" done."),
    ir.TextDelta(" "),  # the repeated call (trailing comma, other key order) is removed, not emitted
    ir.TextDelta(" ok"),
    ir.TextDelta(" ok"),  # identical frames are real repeated tokens: kept
    ir.UsageUpdate(ir.Usage(input_tokens=125, output_tokens=42, cache_read_tokens=20, cache_write_tokens=5)),
    ir.Finish(ir.FinishReason.TOOL_CALLS),
]


def test_realistic_transcript() -> None:
    assert _decode(realistic_transcript(), thinking=True) == TRANSCRIPT_EVENTS


def test_transcript_under_hostile_write_splits() -> None:
    body = b"".join(realistic_transcript())
    cuts = tricky_cuts(body)
    assert len(cuts) > 40  # mid-prelude, mid-header and mid-UTF-8 cuts all present
    rng = random.Random(7)
    for max_size in (1, 3, 17, 64, 500):
        writes = split_writes(body, rng, max_size=max_size, cut_at=cuts)
        assert b"".join(writes) == body
        assert _decode(writes, thinking=True) == TRANSCRIPT_EVENTS


def test_thinking_tags_are_text_when_thinking_was_not_requested() -> None:
    events = _decode([event_frame("assistantResponseEvent", {"content": "<thinking>x</thinking>\n\nHi"})])
    assert [e for e in events if isinstance(e, ir.TextDelta)] == [ir.TextDelta("<thinking>x</thinking>\n\nHi")]


@pytest.mark.parametrize("quoted", ["the tag `</thinking>` ends it", 'write "</thinking> to end', "'</thinking>"])
def test_quoted_closing_tag_stays_inside_thinking(quoted: str) -> None:
    frames = [
        event_frame("assistantResponseEvent", {"content": f"<thinking>{quoted}"}),
        event_frame("assistantResponseEvent", {"content": "</thinking>\n\nAnswer"}),
    ]
    events = _decode(frames, thinking=True)
    thinking = "".join(e.text for e in events if isinstance(e, ir.ThinkingDelta))
    assert thinking == quoted
    assert [e for e in events if isinstance(e, ir.TextDelta)] == [ir.TextDelta("Answer")]


def test_text_without_thinking_block_when_thinking_requested() -> None:
    frames = [event_frame("assistantResponseEvent", {"content": c}) for c in ("\n", "<b>bold</b>", " x")]
    events = _decode(frames, thinking=True)
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "\n<b>bold</b> x"
    assert not any(isinstance(e, ir.ThinkingDelta) for e in events)


def test_reasoning_content_event() -> None:
    frames = [
        event_frame("reasoningContentEvent", {"text": "hmm"}),
        event_frame("reasoningContentEvent", {"signature": "sig=="}),
        event_frame("reasoningContentEvent", {"redactedContent": "opaque"}),
        event_frame("assistantResponseEvent", {"content": "Hi"}),
    ]
    assert _decode(frames)[1:5] == [
        ir.ThinkingDelta("hmm"),
        ir.ThinkingSignature("sig==", origin="kiro"),
        ir.ThinkingSignature("", origin="kiro", redacted="opaque"),
        ir.TextDelta("Hi"),
    ]


def test_wrapped_payloads_and_tool_uses_inside_assistant_events() -> None:
    frames = [
        event_frame("assistantResponseEvent", {"assistantResponseEvent": {"content": "Hi"}}),
        event_frame(
            "assistantResponseEvent", {"content": "", "toolUses": [{"toolUseId": "u1", "name": "Ls", "input": {}}]}
        ),
    ]
    assert _decode(frames)[1:6] == [
        ir.TextDelta("Hi"),
        ir.ToolCallStart(0, "u1", "Ls"),
        ir.ToolCallArgsDelta(0, "{}"),
        ir.ToolCallEnd(0),
        ir.UsageUpdate(ir.Usage(output_tokens=1, estimated=True)),  # (2 + 2 bytes + 3) // 4
    ]


def test_output_during_an_open_call_waits_for_it() -> None:
    tool = "toolUseEvent"
    frames = [
        event_frame(tool, {"toolUseId": "a", "name": "A", "input": '{"x": '}),
        event_frame("assistantResponseEvent", {"content": "between"}),
        event_frame(tool, {"toolUseId": "b", "name": "B", "input": "{}"}),
        event_frame(tool, {"toolUseId": "a", "input": "1}"}),
        event_frame(tool, {"toolUseId": "a", "stop": True}),
        event_frame(tool, {"toolUseId": "b", "stop": True}),
    ]
    assert _decode(frames)[1:-2] == [
        ir.ToolCallStart(0, "a", "A"),
        ir.ToolCallArgsDelta(0, '{"x": '),
        ir.ToolCallArgsDelta(0, "1}"),
        ir.ToolCallEnd(0),
        ir.TextDelta("between"),
        ir.ToolCallStart(1, "b", "B"),
        ir.ToolCallArgsDelta(1, "{}"),
        ir.ToolCallEnd(1),
    ]


def test_call_without_stop_ends_when_its_json_is_complete() -> None:
    frames = [
        event_frame("toolUseEvent", {"toolUseId": "a", "name": "A", "input": '{"x": 1}'}),
        event_frame("assistantResponseEvent", {"content": "after"}),
        event_frame("toolUseEvent", {"toolUseId": "a", "stop": True}),  # late stop for an ended call: ignored
    ]
    events = _decode(frames)
    assert events[1:5] == [
        ir.ToolCallStart(0, "a", "A"),
        ir.ToolCallArgsDelta(0, '{"x": 1}'),
        ir.ToolCallEnd(0),
        ir.TextDelta("after"),
    ]
    assert events[-1] == ir.Finish(ir.FinishReason.TOOL_CALLS)


def test_truncated_tool_json_finishes_with_length() -> None:
    frames = [event_frame("toolUseEvent", {"toolUseId": "a", "name": "Write", "input": '{"content": "abc'})]
    events = _decode(frames)
    assert events[-3:-1] == [ir.ToolCallEnd(0), events[-2]] and isinstance(events[-2], ir.UsageUpdate)
    assert events[-1] == ir.Finish(ir.FinishReason.LENGTH)


def test_stop_reason_max_tokens_finishes_with_length() -> None:
    frames = [
        event_frame("assistantResponseEvent", {"content": "cut"}),
        event_frame("messageStopEvent", {"stopReason": "MAX_TOKENS"}),
    ]
    assert _decode(frames)[-1] == ir.Finish(ir.FinishReason.LENGTH)


def test_plain_text_finishes_with_stop_and_estimated_usage() -> None:
    frames = [
        event_frame("assistantResponseEvent", {"content": "x" * 400}),
        event_frame("contextUsageEvent", {"contextUsagePercentage": 1.5}),
        event_frame("meteringEvent", {"usage": 3.5, "unit": "credit"}),  # credits, not tokens
    ]
    events = _decode(frames, window=100_000)
    assert events[-2:] == [
        ir.UsageUpdate(ir.Usage(input_tokens=1500 - 100, output_tokens=100, estimated=True)),
        ir.Finish(ir.FinishReason.STOP),
    ]


def test_real_usage_with_zero_output_is_completed_by_an_estimate() -> None:
    frames = [
        event_frame("assistantResponseEvent", {"content": "abcdefgh"}),
        event_frame("messageMetadataEvent", {"tokenUsage": {"inputTokens": 900, "outputTokens": 0}}),
    ]
    assert _decode(frames)[-2] == ir.UsageUpdate(ir.Usage(input_tokens=900, output_tokens=2, estimated=True))


@pytest.mark.parametrize(
    "pieces",
    [
        ['[Called Read with args: {"file_path": "a.txt"}]'],
        ["[Cal", "led Re", "ad with ar", 'gs: {"file_pa', 'th": "a.txt"', "}", "]"],
        list('[Called Read with args: {"file_path": "a.txt",}]'),
    ],
)
def test_text_form_call_in_any_split(pieces: list[str]) -> None:
    frames = [event_frame("assistantResponseEvent", {"content": p}) for p in ["Reading: ", *pieces, " now"]]
    events = _decode(frames, {"Read": "ReadFile"})
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "Reading:  now"
    calls = [e for e in events if isinstance(e, (ir.ToolCallStart, ir.ToolCallArgsDelta))]
    assert calls == [ir.ToolCallStart(0, "<text-call>", "ReadFile"), ir.ToolCallArgsDelta(0, '{"file_path": "a.txt"}')]
    assert events[-1] == ir.Finish(ir.FinishReason.TOOL_CALLS)


@pytest.mark.parametrize(
    "text",
    [
        "I [Called it] a day.",
        "[Called Read with args: not json]",
        "[Called Read with args: [1, 2]]",
        "trailing [Called Re",
        "[Called\nsomething else entirely",
    ],
)
def test_text_that_is_not_a_call_stays_text(text: str) -> None:
    frames = [event_frame("assistantResponseEvent", {"content": c}) for c in (text[:9], text[9:])]
    events = _decode(frames)
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == text
    assert not any(isinstance(e, ir.ToolCallStart) for e in events)


def test_text_call_repeating_a_native_call_is_dropped() -> None:
    frames = [
        event_frame("toolUseEvent", {"toolUseId": "n1", "name": "Read", "input": '{"file_path": "a"}', "stop": True}),
        event_frame("assistantResponseEvent", {"content": '[Called Read with args: {"file_path": "a"}]'}),
    ]
    events = _decode(frames)
    assert sum(isinstance(e, ir.ToolCallStart) for e in events) == 1
    assert not any(isinstance(e, ir.TextDelta) for e in events)


@pytest.mark.parametrize(
    ("frame", "status", "text"),
    [
        (
            exception_frame("ThrottlingException", "Too many requests"),
            429,
            "Kiro ThrottlingException: Too many requests",
        ),
        (exception_frame("ValidationException", "Input is too long."), 400, "prompt is too long"),
        (exception_frame("InternalServerException", "boom"), 500, "InternalServerException"),
        (error_frame("ModelStreamError", "stream broke"), 502, "Kiro ModelStreamError: stream broke"),
        (
            event_frame(
                "assistantResponseEvent",
                {"_type": "com.amazon.aws.codewhisperer#ValidationException", "message": "Improperly formed request."},
            ),
            400,
            "Kiro ValidationException: Improperly formed request.",
        ),
    ],
)
def test_in_band_errors(frame: bytes, status: int, text: str) -> None:
    before = event_frame("assistantResponseEvent", {"content": "partial"})
    after = event_frame("assistantResponseEvent", {"content": "ignored"})
    events = _decode([before, frame, after])
    assert events[:2] == [ir.MessageStart(), ir.TextDelta("partial")]
    assert len(events) == 3 and isinstance(events[2], ir.StreamError)
    assert events[2].status == status and text in events[2].message


def test_exception_before_any_content_has_no_message_start() -> None:
    events = _decode([exception_frame("ThrottlingException", "slow down")])
    assert len(events) == 1 and isinstance(events[0], ir.StreamError) and events[0].status == 429


def test_truncated_frame_at_end_is_an_error_not_a_finish() -> None:
    frames = [event_frame("assistantResponseEvent", {"content": "Hi"}), event_frame("messageStopEvent", {})[:-3]]
    events = _decode(frames)
    assert events[:2] == [ir.MessageStart(), ir.TextDelta("Hi")]
    assert isinstance(events[2], ir.StreamError) and "ended early" in events[2].message and len(events) == 3


def test_corrupt_frame_mid_stream() -> None:
    good = event_frame("assistantResponseEvent", {"content": "ok"})
    bad = bytearray(event_frame("assistantResponseEvent", {"content": "zz"}))
    bad[-6] ^= 1
    events = _decode([good + bytes(bad) + good])
    assert events[1] == ir.TextDelta("ok")
    assert isinstance(events[2], ir.StreamError) and "message CRC mismatch" in events[2].message and len(events) == 3


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"message":"Improperly formed request.","reason":null}', "prelude CRC mismatch"),
        (b"", "empty event stream"),
    ],
)
def test_not_an_event_stream(body: bytes, text: str) -> None:
    events = _decode([body])
    assert len(events) == 1 and isinstance(events[0], ir.StreamError) and text in events[0].message


def test_frames_without_json_payload() -> None:
    frames = [
        encode_message({":message-type": "event", ":event-type": "metricsEvent"}, b"not json"),
        encode_message({":message-type": "event", ":event-type": "assistantResponseEvent"}, b"not json"),
    ]
    events = _decode(frames)
    assert len(events) == 1 and isinstance(events[0], ir.StreamError) and "not JSON" in events[0].message


_event_payloads = st.fixed_dictionaries(
    {},
    optional={
        "content": st.text(alphabet='ab<>/[]{}":, thinkgCaledwrs\\', max_size=30),
        "toolUseId": st.sampled_from(["a", "b", ""]),
        "name": st.sampled_from(["X", "Y"]),
        "input": st.one_of(st.text(alphabet='{}":1a ', max_size=10), st.just({"k": 1})),
        "stop": st.booleans(),
        "text": st.text(max_size=5),
        "contextUsagePercentage": st.floats(0, 100),
    },
)
_event_types = st.sampled_from(
    ["assistantResponseEvent", "toolUseEvent", "reasoningContentEvent", "contextUsageEvent", "messageStopEvent", "x"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_event_types, _event_payloads), max_size=12), st.booleans(), st.binary(max_size=20), st.data()
)
def test_decoder_never_raises_and_keeps_the_grammar(
    events: list[tuple[str, dict[str, Any]]], thinking: bool, junk: bytes, data: st.DataObject
) -> None:
    body = b"".join(event_frame(t, p) for t, p in events)
    if data.draw(st.booleans()):
        body += junk
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    d = KiroStreamDecoder(thinking, {"X": "x_client"})
    out: list[ir.Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        out += d.feed(body[a:b])
    out += d.close()
    _check_grammar(out)
    assert isinstance(out[-1], (ir.Finish, ir.StreamError))


# ---------------------------------------------------------------------------------------------
# HTTP error classification (upstreams.md 2.13)


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (400, b'{"message":"Improperly formed request.","reason":null}', "bad_request", None),
        (
            400,
            b'{"message":"Input is too long.","reason":"CONTENT_LENGTH_EXCEEDS_THRESHOLD"}',
            "context_too_long",
            "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
        ),
        (401, b'{"message":"Unauthorized"}', "auth", None),
        (
            402,
            b'{"message":"You have reached the limit.","reason":"MONTHLY_REQUEST_COUNT"}',
            "quota",
            "MONTHLY_REQUEST_COUNT",
        ),
        (403, b'{"message":"The bearer token included in the request is invalid.","reason":null}', "auth", None),
        (403, b'{"message":"Account locked","reason":"TEMPORARILY_SUSPENDED"}', "suspended", "TEMPORARILY_SUSPENDED"),
        (403, b'{"message":"Your User ID (x) temporarily is suspended."}', "suspended", None),
        (429, b'{"message":"Too many requests, please wait before trying again."}', "throttled", None),
        (503, b"<html>Service Unavailable</html>", "transient", None),
        (404, b"", "bad_request", None),
    ],
)
def test_parse_error(status: int, body: bytes, kind: str, reason: str | None) -> None:
    err = parse_error(status, body)
    assert (err.status, err.kind, err.reason) == (status, kind, reason)
    assert err.message
    if body.startswith(b"{"):
        assert err.message == json.loads(body)["message"]
