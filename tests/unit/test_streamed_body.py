"""StreamedBody, the streamed-body decoder of core/http1.py: golden vectors (tests/vectors/http1) fed
whole, then every vector and random bodies re-chunked at random points (the decoder must not care
where reads split the bytes)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.http1 import BodyFraming, StreamedBody

CASES = json.loads((Path(__file__).parent.parent / "vectors" / "http1" / "streamed_bodies.json").read_text())["cases"]


def _wire(case: dict) -> bytes:
    if case["wire"] == "LONG":
        return b"1" * 5000
    return case["wire"].encode("latin-1")


def _body(framing: str) -> StreamedBody:
    if framing == "chunked":
        return StreamedBody(True, None)
    if framing == "close":
        return StreamedBody(False, None)
    return StreamedBody(False, int(framing.removeprefix("length:")))


def _decode(case: dict, pieces: list[bytes]) -> tuple[bytes, StreamedBody, BodyFraming | None]:
    body = _body(case["framing"])
    out = b""
    for piece in pieces:
        try:
            out += body.feed(piece)
        except BodyFraming as e:
            return out + e.partial, body, e
    return out, body, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_vectors_fed_whole(case):
    out, body, error = _decode(case, [_wire(case)])
    assert out == case["body"].encode("latin-1")
    if "error" in case:
        assert error is not None and case["error"] in str(error)
    else:
        assert error is None
        assert (body.done, body.reusable) == (case["done"], case["reusable"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.lists(st.integers(min_value=0, max_value=6000), max_size=12))
def test_golden_vectors_rechunked(case, cuts):
    wire = _wire(case)
    out, body, error = _decode(case, _split(wire, cuts))
    expected = case["body"].encode("latin-1")
    if "error" in case:
        # Split reads may stop before the break; never past it, never with other bytes.
        assert expected.startswith(out)
        assert error is not None or not body.done
    else:
        assert error is None and out == expected
        assert (body.done, body.reusable) == (case["done"], case["reusable"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    st.lists(st.integers(min_value=0, max_value=20000), max_size=20),
)
def test_any_chunked_body_decodes_to_its_payload_however_it_is_read(chunks, cuts):
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    body = StreamedBody(True, None)
    out = b"".join(body.feed(piece) for piece in _split(wire, cuts))
    assert out == b"".join(chunks)
    assert body.done and body.reusable
