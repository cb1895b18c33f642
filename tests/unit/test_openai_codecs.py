"""What both OpenAI codecs (Chat Completions and Responses) must satisfy, run for each: their golden
vectors, stream vectors fed 1 byte at a time and at random cut points, and the request round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_openai_chat import (
    conversations,
    dump,
    load_vectors,
    project,
    run_vector,
    sse_frames,
    stream_chunks,
    transcode,
)
from translators import get_codec, ir

# dialect -> whether its SSE events carry `event:` lines
DIALECTS = {"openai_chat": False, "openai_responses": True}
VECTORS = [(d, v) for d in DIALECTS for v in load_vectors(d)]
STREAM_VECTORS = [(d, v) for d, v in VECTORS if v["kind"] == "stream"]


def ids(cases: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{d}-{v['name']}" for d, v in cases]


@pytest.mark.parametrize(("dialect", "vector"), VECTORS, ids=ids(VECTORS))
def test_vector(dialect: str, vector: dict[str, Any]) -> None:
    run_vector(get_codec(dialect), vector, named=DIALECTS[dialect])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_vectors_cover_every_kind(dialect: str) -> None:
    kinds = {v["kind"] for d, v in VECTORS if d == dialect}
    assert kinds == {"request", "render_request", "request_error", "response", "render_response", "stream", "encode"}


@pytest.mark.parametrize(("dialect", "vector"), STREAM_VECTORS, ids=ids(STREAM_VECTORS))
def test_stream_one_byte_pieces(dialect: str, vector: dict[str, Any]) -> None:
    whole = b"".join(stream_chunks(vector))
    pieces = [whole[i : i + 1] for i in range(len(whole))]
    events, raw = transcode(get_codec(dialect), pieces, vector.get("options", {}))
    assert [dump(e) for e in events] == vector["expected"]["events"]
    assert sse_frames(raw, named=DIALECTS[dialect]) == vector["expected"]["client"]


@pytest.mark.parametrize(("dialect", "vector"), STREAM_VECTORS, ids=ids(STREAM_VECTORS))
@given(data=st.data())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_stream_rechunking_property(dialect: str, vector: dict[str, Any], data: st.DataObject) -> None:
    codec = get_codec(dialect)
    whole = b"".join(stream_chunks(vector))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(whole) - 1), max_size=40)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert transcode(codec, pieces, vector.get("options", {})) == transcode(codec, [whole], vector.get("options", {}))


@pytest.mark.parametrize("dialect", DIALECTS)
@given(req=conversations())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_request_round_trip_property(dialect: str, req: ir.Request) -> None:
    codec = get_codec(dialect)
    body = json.loads(json.dumps(codec.render_request(req, "m")))  # through real JSON
    assert project(codec.parse_request(body)) == project(req)
