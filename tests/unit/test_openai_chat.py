"""OpenAI Chat Completions codec: golden vectors (tests/vectors/openai_chat) and properties.

The vector runner, IR (de)serialisation and strategies here are reused by test_openai_responses.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.strategies import TRICKY_TEXT
from translators import ir
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, TranslationError
from translators.openai_chat import UNDECODABLE, ChatEncoder, codec
from translators.signatures import encode_tool_call_id
from translators.sse import dumps

VECTORS = Path(__file__).parents[1] / "vectors"

# ---------------------------------------------------------------------------------------------
# IR <-> JSON for vectors: {"_": "<IR class>", <fields that differ from their defaults>}


def dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"_": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if default is dataclasses.MISSING or value != default or type(value) is not type(default):
                out[f.name] = dump(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def load(obj: Any) -> Any:
    if isinstance(obj, list):
        return [load(x) for x in obj]
    if isinstance(obj, dict):
        if "_" not in obj:
            return {k: load(v) for k, v in obj.items()}
        kwargs = {k: load(v) for k, v in obj.items() if k != "_"}
        for key in ("finish_reason", "reason"):
            if key in kwargs:
                kwargs[key] = ir.FinishReason(kwargs[key])
        return getattr(ir, obj["_"])(**kwargs)
    return obj


def load_vectors(dialect: str) -> list[dict[str, Any]]:
    """Every vector of a dialect; a file holds one vector or a list of them."""
    vectors: list[dict[str, Any]] = []
    for path in sorted((VECTORS / dialect).glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        vectors.extend(data if isinstance(data, list) else [data])
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    return vectors


def sse_frames(raw: bytes, named: bool) -> list[Any]:
    """Client bytes -> frames, asserting the framing byte for byte: `data: <compact JSON>` (or
    [DONE]) blocks, with `event: <type>` first when `named`, each ended by a blank line."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), text[-50:]
    frames: list[Any] = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        if named:
            assert len(lines) == 2 and lines[0].startswith("event: "), block
        else:
            assert len(lines) == 1, block
        assert lines[-1].startswith("data: ") and lines[-1] != "data: ", block
        payload = lines[-1][6:]
        if payload == "[DONE]":
            frames.append(payload)
            continue
        obj = json.loads(payload)
        assert payload == dumps(obj), "frames must be compact JSON"
        if named:
            assert obj["type"] == lines[0][7:]
        frames.append(obj)
    return frames


def encoder_for(codec_: Any, options: dict[str, Any]) -> Any:
    opts = EncoderOptions(**options.get("encoder", {"model": "client-model"}))
    if "custom_tools" in options:
        opts.custom_tools = frozenset(options["custom_tools"])
    return codec_.encoder(opts)


def transcode(codec_: Any, chunks: list[bytes], options: dict[str, Any]) -> tuple[list[ir.Event], bytes]:
    """Upstream pieces -> (all decoder events, client bytes from this dialect's encoder)."""
    decoder, encoder = codec_.decoder(), encoder_for(codec_, options)
    events: list[ir.Event] = []
    raw = b""
    for chunk in chunks:
        batch = decoder.feed(chunk)
        events += batch
        raw += encoder.feed(batch)
    batch = decoder.close()
    events += batch
    raw += encoder.feed(batch) + encoder.close()
    return events, raw


def stream_chunks(vector: dict[str, Any]) -> list[bytes]:
    pieces = vector["input"]
    return [p.encode("utf-8") for p in ([pieces] if isinstance(pieces, str) else pieces)]


def stamp(body: dict[str, Any]) -> dict[str, Any]:
    """The creation time of a unary response is `now`: check it is, then zero it for comparison."""
    key = "created" if "created" in body else "created_at"
    assert isinstance(body[key], int) and abs(body[key] - time.time()) < 300
    return {**body, key: 0}


def run_vector(codec_: Any, vector: dict[str, Any], named: bool) -> None:
    kind, data, expected = vector["kind"], vector["input"], vector["expected"]
    options = vector.get("options", {})
    if kind == "request":
        req = codec_.parse_request(data)
        assert dump(req) == expected["ir"]
        assert codec_.render_request(req, options.get("model", "upstream-model")) == expected["upstream"]
    elif kind == "render_request":
        assert codec_.render_request(load(data), options.get("model", "upstream-model")) == expected
    elif kind == "request_error":
        with pytest.raises(TranslationError) as info:
            codec_.parse_request(data)
        assert info.value.field == expected["field"]
        assert expected["message"] in info.value.message
        assert info.value.status == 400
    elif kind == "response":
        resp = codec_.parse_response(data)
        assert dump(resp) == expected["ir"]
        kwargs = {"custom_tools": set(options["custom_tools"])} if "custom_tools" in options else {}
        assert stamp(codec_.render_response(resp, "client-model", **kwargs)) == expected["client"]
    elif kind == "render_response":
        kwargs = {"custom_tools": set(options["custom_tools"])} if "custom_tools" in options else {}
        assert stamp(codec_.render_response(load(data), "client-model", **kwargs)) == expected
    elif kind == "stream":
        events, raw = transcode(codec_, stream_chunks(vector), options)
        assert [dump(e) for e in events] == expected["events"]
        assert sse_frames(raw, named) == expected["client"]
    elif kind == "encode":
        encoder = encoder_for(codec_, options)
        raw = encoder.feed(load(data)) + encoder.close()
        assert sse_frames(raw, named) == expected["client"]
        assert encoder.close() == b""
    else:
        raise AssertionError(f"unknown vector kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Strategies (shared)

TEXT = st.text(min_size=1, max_size=12)
NAME = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
ARGS = st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4)
IMAGES = st.sampled_from(
    [
        ir.ImagePart(url="https://example.com/cat.png"),
        ir.ImagePart(url="https://example.com/dog.jpg", detail="low"),
        ir.ImagePart(media_type="image/png", data="iVBORw0KGgo="),
    ]
)


@st.composite
def conversations(draw: st.DrawFn) -> ir.Request:
    """Alternating turns; every call is answered, results first in the next user turn."""
    messages: list[ir.Message] = []
    pending: list[ir.ToolCallPart] = []
    for turn in range(draw(st.integers(1, 4))):
        user: list[ir.Part] = [
            ir.ToolResultPart(c.id, [ir.TextPart(t) for t in draw(st.lists(TEXT, max_size=2))], name=c.name)
            for c in pending
        ]
        user += draw(st.lists(TEXT.map(ir.TextPart) | IMAGES, min_size=0 if pending else 1, max_size=3))
        messages.append(ir.Message("user", user))
        assistant: list[ir.Part] = [ir.TextPart(t) for t in draw(st.lists(TEXT, max_size=2))]
        calls = draw(st.lists(st.tuples(NAME, ARGS), min_size=0 if assistant else 1, max_size=3))
        pending = [ir.ToolCallPart(f"call_{turn}_{i}", name, args) for i, (name, args) in enumerate(calls)]
        messages.append(ir.Message("assistant", assistant + pending))
    return ir.Request(model="m", messages=messages, system=[ir.TextPart(t) for t in draw(st.lists(TEXT, max_size=2))])


def project(req: ir.Request) -> tuple[str, list[tuple[str, list[tuple[Any, ...]]]]]:
    """What a round trip must keep: system text, and per turn its text, images, calls and results."""
    turns = []
    for msg in req.messages:
        items: list[tuple[Any, ...]] = []
        for p in msg.parts:
            if isinstance(p, ir.TextPart):
                items.append(("text", p.text))
            elif isinstance(p, ir.ImagePart):
                items.append(("image", p.media_type, p.data, p.url, p.detail))
            elif isinstance(p, ir.ToolCallPart):
                items.append(("call", p.id, p.name, p.arguments))
            elif isinstance(p, ir.ToolResultPart):
                items.append(
                    ("result", p.tool_call_id, p.name, "".join(c.text for c in p.content if isinstance(c, ir.TextPart)))
                )
        turns.append((msg.role, items))
    return "\n\n".join(p.text for p in req.system), turns


SIGNATURE = st.from_regex(r"[A-Za-z0-9+/]{1,16}", fullmatch=True)


@st.composite
def event_streams(draw: st.DrawFn) -> list[ir.Event]:
    """Grammatical event sequences as a decoder would emit them."""
    events: list[ir.Event] = [ir.MessageStart("up-1", "m")]
    calls = 0
    for kind in draw(st.lists(st.sampled_from(["text", "thinking", "signature", "redacted", "call"]), max_size=6)):
        if kind == "text":
            events += [ir.TextDelta(t) for t in draw(st.lists(TEXT, min_size=1, max_size=3))]
        elif kind == "thinking":
            events += [ir.ThinkingDelta(t) for t in draw(st.lists(TEXT, min_size=1, max_size=3))]
        elif kind == "signature":
            events.append(ir.ThinkingSignature(draw(SIGNATURE), draw(st.sampled_from(["openai", "claude", "gemini"]))))
        elif kind == "redacted":
            events.append(ir.ThinkingSignature("", "claude", redacted=draw(SIGNATURE)))
        else:
            signed = draw(st.booleans())
            events.append(
                ir.ToolCallStart(
                    calls,
                    f"call_{calls}",
                    draw(NAME),
                    draw(SIGNATURE) if signed else None,
                    "gemini" if signed else None,
                )
            )
            text = dumps(draw(ARGS))
            cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=3)))
            events += [
                ir.ToolCallArgsDelta(calls, text[a:b])
                for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)
                if text[a:b]
            ]
            events.append(ir.ToolCallEnd(calls))
            calls += 1
    usage = ir.Usage(
        *draw(st.tuples(*[st.integers(0, 10**6)] * 2)),
        cache_read_tokens=draw(st.integers(0, 100)),
        reasoning_tokens=draw(st.integers(0, 100)),
    )
    events.append(ir.UsageUpdate(usage))
    events.append(
        ir.Finish(
            draw(
                st.sampled_from(
                    [
                        ir.FinishReason.STOP,
                        ir.FinishReason.LENGTH,
                        ir.FinishReason.TOOL_CALLS,
                        ir.FinishReason.CONTENT_FILTER,
                    ]
                )
            )
        )
    )
    return events


# Anything an encoder may be handed, grammatical or not.
ANY_EVENT = st.one_of(
    st.builds(ir.MessageStart, st.text(max_size=5), st.text(max_size=5)),
    st.builds(ir.TextDelta, st.text(max_size=5)),
    st.builds(ir.ThinkingDelta, st.text(max_size=5)),
    st.builds(
        ir.ThinkingSignature, st.text(max_size=5), st.none() | st.just("gemini"), st.none() | st.text(max_size=3)
    ),
    st.builds(ir.ToolCallStart, st.integers(-1, 3), st.text(max_size=5), st.text(max_size=5)),
    st.builds(ir.ToolCallArgsDelta, st.integers(-1, 3), st.text(max_size=5)),
    st.builds(ir.ToolCallEnd, st.integers(-1, 3)),
    st.builds(ir.UsageUpdate, st.builds(ir.Usage, st.integers(0, 9), st.integers(0, 9))),
    st.builds(ir.Finish, st.sampled_from(list(ir.FinishReason))),
    st.builds(ir.StreamError, st.text(max_size=5), st.sampled_from([400, 429, 500, 529])),
)


# Any JSON value where a field is expected: decoders must cope with every one of them.
ODD = st.sampled_from([None, True, -1, 1.5, "", "x", [], [0], {}, {"a": 1}])


def fields(bad: Any = ODD, /, **optional: Any) -> Any:
    """Objects with some of the given fields, each either plausible or `bad`."""
    return st.fixed_dictionaries({}, optional={k: v | bad for k, v in optional.items()})


def assert_decoded_cleanly(events: list[ir.Event]) -> None:
    """One terminal event, last; calls contiguous; and the decoder's safety net never needed."""
    terminal = [e for e in events if isinstance(e, (ir.Finish, ir.StreamError))]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    assert not (isinstance(events[-1], ir.StreamError) and events[-1].message.startswith(UNDECODABLE)), events[-1]
    open_calls: set[int] = set()
    for e in events:
        if isinstance(e, ir.ToolCallStart):
            assert not open_calls
            open_calls.add(e.index)
        elif isinstance(e, (ir.ToolCallArgsDelta, ir.ToolCallEnd)):
            assert open_calls == {e.index}
            if isinstance(e, ir.ToolCallEnd):
                open_calls.clear()
        else:  # a failure may cut a call short; nothing else may interrupt one
            assert not open_calls or isinstance(e, ir.StreamError)


def accumulate(events: list[ir.Event]) -> ir.Response:
    acc = ResponseAccumulator()
    acc.feed(events)
    return acc.response()


# ---------------------------------------------------------------------------------------------
# Golden vectors

# Golden vectors, 1-byte re-chunking and the request round trip run for both OpenAI codecs in
# tests/unit/test_openai_codecs.py.


@given(event_streams(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_encoder_then_decoder_keeps_content(events: list[ir.Event], include_usage: bool) -> None:
    """Our client stream, read back by our upstream decoder, says the same thing."""
    encoder = codec.encoder(EncoderOptions(model="m", include_usage=include_usage, response_id="chatcmpl-1", created=1))
    raw = encoder.feed(events) + encoder.close()
    decoder = codec.decoder()
    back = accumulate(decoder.feed(raw) + decoder.close())
    sent = accumulate(events)

    def texts(resp: ir.Response, kind: type) -> str:
        return "".join(p.text for p in resp.parts if isinstance(p, kind))

    def calls(resp: ir.Response) -> list[tuple[Any, ...]]:
        return [
            (p.id, p.name, p.arguments, p.signature, p.signature_origin)
            for p in resp.parts
            if isinstance(p, ir.ToolCallPart)
        ]

    assert texts(back, ir.TextPart) == texts(sent, ir.TextPart)
    assert texts(back, ir.ThinkingPart) == texts(sent, ir.ThinkingPart)
    assert calls(back) == calls(sent)
    expected = sent.finish_reason
    if calls(sent) and expected is ir.FinishReason.STOP:
        expected = ir.FinishReason.TOOL_CALLS
    assert back.finish_reason is expected
    u = sent.usage
    wanted = (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) if include_usage else (0,) * 4
    got = back.usage
    assert (got.input_tokens, got.output_tokens, got.cache_read_tokens, got.reasoning_tokens) == wanted


@given(st.lists(st.lists(ANY_EVENT, max_size=6), max_size=4), st.booleans())
@settings(max_examples=200, deadline=None)
def test_encoder_output_is_always_well_formed(batches: list[list[ir.Event]], include_usage: bool) -> None:
    """Whatever it is fed: valid frames, one id, contiguous tool indexes, and [DONE] exactly once, last."""
    encoder = codec.encoder(EncoderOptions(model="m", include_usage=include_usage, created=1))
    raw = b"".join(encoder.feed(batch) for batch in batches) + encoder.close()
    assert encoder.close() == b""
    assert encoder.feed([ir.TextDelta("late")]) == b""
    frames = sse_frames(raw, named=False)
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    body = frames[:-1]
    errored = "error" in body[-1]
    if errored:
        assert set(body[-1]["error"]) == {"message", "type", "param", "code"}
        body = body[:-1]
    assert all("error" not in f for f in body)
    if not body:
        return
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({f["id"] for f in body}) == 1
    assert all(("usage" in f) == include_usage for f in body)
    seen: list[int] = []
    for f in body:
        for call in f["choices"][0]["delta"].get("tool_calls", []) if f["choices"] else []:
            if "id" in call:
                assert call["index"] == len(seen)
                seen.append(call["index"])
            else:
                assert call["index"] in seen
    finishes = [f for f in body if f["choices"] and f["choices"][0]["finish_reason"]]
    if errored:
        assert finishes == []
        return
    assert finishes == [body[-2] if include_usage else body[-1]]
    assert finishes[0]["choices"][0]["delta"] == {}
    if include_usage:
        assert body[-1]["choices"] == [] and body[-1]["usage"]["total_tokens"] >= 0


@given(
    st.lists(
        st.binary(max_size=30)
        | st.sampled_from(
            [
                b"data: ",
                b"data:",
                b"\n",
                b"\r\n",
                b"\n\n",
                b"[DONE]",
                b": ping\n\n",
                b'{"choices":[{"delta":{"content":"x"}}]}',
                b'{"error":{"message":"boom"}}',
                b'{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{"}}]}}]}',
                b'{"choices":[{"finish_reason":"stop","delta":{}}]}',
                b"\xe4\xb8",
            ]
        ),
        max_size=20,
    )
)
@settings(max_examples=200, deadline=None)
def test_decoder_never_raises_and_always_terminates(pieces: list[bytes]) -> None:
    decoder = codec.decoder()
    events = [e for p in pieces for e in decoder.feed(p)] + decoder.close()
    assert_decoded_cleanly(events)
    assert decoder.feed(b'data: {"choices":[{"delta":{"content":"late"}}]}\n\n') == []


CHAT_CHUNKS = fields(
    id=st.just("c1"),
    model=st.just("m"),
    usage=fields(prompt_tokens=st.integers(0, 9), prompt_tokens_details=fields(cached_tokens=st.integers(0, 9))),
    choices=st.lists(
        fields(
            finish_reason=st.sampled_from(["stop", "length", "tool_calls"]),
            delta=fields(
                content=st.text(max_size=3),
                reasoning_content=st.text(max_size=3),
                tool_calls=st.lists(
                    fields(
                        index=st.integers(0, 2),
                        id=st.sampled_from(["call_1", "call_2"]),
                        function=fields(name=st.just("f"), arguments=st.sampled_from(['{"a":', "1}", "{}"])),
                    )
                    | ODD,
                    max_size=2,
                ),
            ),
        )
        | ODD,
        max_size=2,
    ),
)


@given(st.lists(CHAT_CHUNKS, max_size=8), st.booleans())
@settings(max_examples=300, deadline=None)
def test_decoder_copes_with_odd_json_shapes(chunks: list[Any], done: bool) -> None:
    decoder = codec.decoder()
    raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n" if done else "")
    assert_decoded_cleanly(decoder.feed(raw.encode()) + decoder.close())


# ---------------------------------------------------------------------------------------------
# Focused checks


def test_codec_surface() -> None:
    assert (codec.name, codec.stream_content_type, codec.accepts_image_urls) == (
        "openai_chat",
        "text/event-stream",
        True,
    )
    assert codec.error_body(429, "slow down", "rate_limit_exceeded") == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    }
    assert codec.error_message(b'{"error":{"message":"bad key","type":"invalid_request_error"}}') == "bad key"


def test_only_sent_sampling_params_are_rendered() -> None:
    req = codec.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert codec.render_request(req, "up") == {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
    req = codec.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "top_p": 0, "stream": True}
    )
    body = codec.render_request(req, "up")
    assert (body["temperature"], body["top_p"], body["stream_options"]) == (0, 0, {"include_usage": True})


def test_keyword_overrides_win_over_body() -> None:
    req = codec.parse_request(
        {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True}, model="b", stream=False
    )
    assert (req.model, req.stream) == ("b", False)


def test_tool_call_ids_carry_signatures_to_the_client() -> None:
    resp = ir.Response("r1", "m", [ir.ToolCallPart("call_9", "f", {"a": 1}, "sig/+=", "gemini")])
    call = codec.render_response(resp, "m")["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == encode_tool_call_id("call_9", "sig/+=", "gemini") != "call_9"
    back = codec.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
            ],
        }
    )
    assert back.messages[1].parts == [ir.ToolCallPart("call_9", "f", {"a": 1}, "sig/+=", "gemini")]
    assert back.messages[2].parts[0].tool_call_id == "call_9"


def test_encoder_survives_lone_surrogates() -> None:
    encoder = codec.encoder(EncoderOptions(model="m", response_id="x", created=1))
    raw = encoder.feed([ir.MessageStart(), ir.TextDelta("a\ud800b"), ir.Finish(ir.FinishReason.STOP)])
    assert sse_frames(raw, named=False)[1]["choices"][0]["delta"]["content"] == "a?b"


def test_decoder_holds_text_until_open_calls_finish() -> None:
    """Text arriving mid-call must not split the call's events (the grammar keeps them contiguous)."""
    decoder = codec.decoder()
    events = decoder.feed(
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c0",'
        b'"function":{"name":"f","arguments":"{\\"a"}}]}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"note"}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\":1}"}}]}}]}\n\n'
        b'data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n'
    )
    assert [dump(e) for e in events] == [
        {"_": "MessageStart"},
        {"_": "ToolCallStart", "index": 0, "id": "c0", "name": "f"},
        {"_": "ToolCallArgsDelta", "index": 0, "delta": '{"a'},
        {"_": "ToolCallArgsDelta", "index": 0, "delta": '":1}'},
        {"_": "ToolCallEnd", "index": 0},
        {"_": "TextDelta", "text": "note"},
        {"_": "Finish", "reason": "tool_calls"},
    ]


@settings(max_examples=300, deadline=None)
@given(
    TRICKY_TEXT,
    st.sampled_from(["content", "reasoning_content"]),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["chatcmpl-1", 'id"with\\quote', "é"]),
)
@example("", "content", False, "\x00", "chatcmpl-1")  # a model holding the template's own marker
def test_the_text_chunk_template_writes_what_the_generic_chunk_writes(text, field, include_usage, model, response_id):
    encoder = ChatEncoder(EncoderOptions(model=model, include_usage=include_usage, response_id=response_id))
    encoder._started = True
    assert encoder._text_chunk(field, text) == encoder._chunk({field: text})
    assert encoder._text_chunk(field, text[::-1]) == encoder._chunk({field: text[::-1]})  # the cached template
