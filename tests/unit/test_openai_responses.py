"""OpenAI Responses codec: golden vectors (tests/vectors/openai_responses) and properties."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_openai_chat import (
    ANY_EVENT,
    ODD,
    accumulate,
    assert_decoded_cleanly,
    dump,
    event_streams,
    fields,
    sse_frames,
)
from translators import ir
from translators.base import EncoderOptions, TranslationError
from translators.openai_responses import codec

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


@given(event_streams())
@settings(max_examples=150, deadline=None)
def test_encoder_then_decoder_keeps_everything(events: list[ir.Event]) -> None:
    """Responses items carry every part in order, thinking signatures included."""
    encoder = codec.encoder(EncoderOptions(model="m", response_id="resp_1", created=1))
    raw = encoder.feed(events) + encoder.close()
    decoder = codec.decoder()
    back = accumulate(decoder.feed(raw) + decoder.close())
    sent = accumulate(events)
    assert dump(back.parts) == dump(sent.parts)
    expected = {ir.FinishReason.TOOL_CALLS: ir.FinishReason.STOP}.get(sent.finish_reason, sent.finish_reason)
    if expected is ir.FinishReason.STOP and any(isinstance(p, ir.ToolCallPart) for p in sent.parts):
        expected = ir.FinishReason.TOOL_CALLS
    assert back.finish_reason is expected
    assert dump(back.usage) == dump(sent.usage)
    assert back.id == "resp_1"


@given(st.lists(st.lists(ANY_EVENT, max_size=6), max_size=4))
@settings(max_examples=200, deadline=None)
def test_encoder_output_is_always_well_formed(batches: list[list[ir.Event]]) -> None:
    """Whatever it is fed: sequence numbers 0..n-1, every item closed in order, one terminal event, last."""
    encoder = codec.encoder(EncoderOptions(model="m", created=1))
    raw = b"".join(encoder.feed(batch) for batch in batches) + encoder.close()
    assert encoder.close() == b""
    assert encoder.feed([ir.TextDelta("late")]) == b""
    frames = sse_frames(raw, named=True)
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    assert [f["type"] for f in frames[:2]] == ["response.created", "response.in_progress"]
    assert [f["type"] in TERMINAL for f in frames] == [False] * (len(frames) - 1) + [True]
    final = frames[-1]["response"]
    assert len({frames[0]["response"]["id"], final["id"]}) == 1
    open_item: int | None = None
    added = 0
    for f in frames[2:-1]:
        if f["type"] == "response.output_item.added":
            assert open_item is None and f["output_index"] == added
            open_item, added = added, added + 1
        elif f["type"] == "response.output_item.done":
            assert f["output_index"] == open_item
            assert final["output"][open_item] == f["item"]
            open_item = None
        else:
            assert f["output_index"] == open_item
    assert len(final["output"]) == added
    if final["status"] != "failed":
        assert open_item is None
        assert all(item.get("status", "completed") == "completed" for item in final["output"])


@given(
    st.lists(
        st.binary(max_size=30)
        | st.sampled_from(
            [
                b"event: response.created\n",
                b"data: ",
                b"\n",
                b"\r\n",
                b"\n\n",
                b": ping\n\n",
                b'data: {"type":"response.output_text.delta","output_index":0,"delta":"x"}\n\n',
                b'data: {"type":"response.output_item.added","output_index":1,'
                b'"item":{"type":"function_call","call_id":"c","name":"f"}}\n\n',
                b'data: {"type":"response.function_call_arguments.delta","output_index":1,"delta":"{"}\n\n',
                b'data: {"type":"response.completed","response":{"status":"completed"}}\n\n',
                b'data: {"type":"error","message":"boom"}\n\n',
                b"\xe4\xb8",
            ]
        ),
        max_size=20,
    )
)
@settings(max_examples=200, deadline=None)
def test_decoder_never_raises_and_always_terminates(pieces: list[bytes]) -> None:
    decoder = codec.decoder()
    assert_decoded_cleanly([e for p in pieces for e in decoder.feed(p)] + decoder.close())


RESPONSE_TYPES = [
    "response.created", "response.output_item.added", "response.output_item.done", "response.output_text.delta",
    "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
    "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
]  # fmt: skip


def response_events(bad: Any) -> Any:
    """Non-terminal upstream events in any order, their fields plausible or `bad`."""
    item = fields(
        bad,
        type=st.sampled_from(["function_call", "custom_tool_call", "message", "reasoning"]),
        call_id=st.just("call_1"),
        name=st.just("f"),
        arguments=st.just("{}"),
        input=st.just("x"),
        summary=st.lists(fields(bad, text=st.just("s")) | bad, max_size=2),
        content=st.lists(fields(bad, type=st.just("output_text"), text=st.just("t")) | bad, max_size=2),
        encrypted_content=st.just("gAAAA"),
    )
    return fields(
        bad,
        output_index=st.integers(0, 2),
        summary_index=st.integers(0, 2),
        delta=st.just("d"),
        arguments=st.just('{"a":1}'),
        input=st.just("i"),
        item=item,
    ).flatmap(lambda e: st.sampled_from(RESPONSE_TYPES).map(lambda t: {"type": t, **e}))


def terminal_events(bad: Any) -> Any:
    response = fields(
        bad,
        id=st.just("resp_1"),
        status=st.sampled_from(["completed", "incomplete", "failed"]),
        usage=fields(bad, input_tokens=st.integers(0, 9), input_tokens_details=fields(bad, cached_tokens=st.just(1))),
        error=fields(bad, code=st.just("server_error"), message=st.just("m")),
        incomplete_details=fields(bad, reason=st.just("content_filter")),
    )
    kinds = st.sampled_from(["response.completed", "response.incomplete", "response.failed"])
    return st.tuples(kinds, response | bad).map(lambda tr: {"type": tr[0], "response": tr[1]})


def decode_events(events: list[dict[str, Any]], last: dict[str, Any] | None) -> None:
    decoder = codec.decoder()
    raw = "".join(f"data: {json.dumps(e)}\n\n" for e in [*events, *([last] if last else [])])
    assert_decoded_cleanly(decoder.feed(raw.encode()) + decoder.close())


@given(st.lists(response_events(ODD), max_size=12), st.none() | terminal_events(ODD))
@settings(max_examples=300, deadline=None)
def test_decoder_copes_with_odd_json_shapes(events: list[dict[str, Any]], last: dict[str, Any] | None) -> None:
    decode_events(events, last)


# Fully populated events of random type, index and order: only the ordering is wrong.
ORDERED_EVENTS = st.builds(
    lambda t, i, s, k: {
        "type": t, "output_index": i, "summary_index": s, "delta": "d", "arguments": '{"a":1}', "input": "i",
        "item": {"type": k, "call_id": f"call_{i}", "name": "f", "arguments": "{}", "input": "x",
                 "summary": [{"text": "s"}], "content": [{"type": "output_text", "text": "t"}],
                 "encrypted_content": "gAAAA"},
    },
    st.sampled_from(RESPONSE_TYPES),
    st.integers(0, 2),
    st.integers(0, 2),
    st.sampled_from(["function_call", "custom_tool_call", "message", "reasoning"]),
)  # fmt: skip


@given(st.lists(ORDERED_EVENTS, max_size=12), st.none() | terminal_events(st.nothing()))
@settings(max_examples=300, deadline=None)
def test_decoder_keeps_calls_contiguous_in_any_event_order(
    events: list[dict[str, Any]], last: dict[str, Any] | None
) -> None:
    decode_events(events, last)


# ---------------------------------------------------------------------------------------------
# Focused checks


def test_codec_surface() -> None:
    assert (codec.name, codec.stream_content_type, codec.accepts_image_urls) == (
        "openai_responses",
        "text/event-stream",
        True,
    )
    assert codec.error_body(404, "no such model", "model_not_found") == {
        "error": {"message": "no such model", "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    }
    assert codec.error_message(b'{"error":{"message":"quota","type":"insufficient_quota"}}') == "quota"


def test_previous_response_id_is_refused_with_a_reason() -> None:
    with pytest.raises(TranslationError) as info:
        codec.parse_request({"model": "m", "input": "hi", "previous_response_id": "resp_1"})
    assert info.value.field == "previous_response_id" and "not supported" in info.value.message


def test_function_tools_always_state_strict() -> None:
    """Responses reads a missing `strict` as true, which would reject ordinary client schemas."""
    req = ir.Request("m", [ir.Message("user", [ir.TextPart("x")])], tools=[ir.Tool("f")])
    assert codec.render_request(req, "m")["tools"] == [
        {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "strict": False}
    ]


def test_custom_tool_round_trip_through_a_function_upstream() -> None:
    """A Codex freeform tool becomes a one-string function upstream and a custom_tool_call again."""
    req = codec.parse_request({"model": "m", "input": "patch it", "tools": [{"type": "custom", "name": "apply_patch"}]})
    assert req.tools[0].parameters["properties"]["input"]["type"] == "string"
    resp = ir.Response("resp_x", "m", [ir.ToolCallPart("call_1", "apply_patch", {"input": "*** Begin Patch"})])
    item = codec.render_response(resp, "m", custom_tools={"apply_patch"})["output"][0]
    assert (item["type"], item["input"], item["call_id"]) == ("custom_tool_call", "*** Begin Patch", "call_1")
    plain = codec.render_response(resp, "m")["output"][0]
    assert (plain["type"], plain["arguments"]) == ("function_call", '{"input":"*** Begin Patch"}')
