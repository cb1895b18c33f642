"""The request boundary (translators/validate.py): golden vectors of hostile bodies, the nesting
scan against the real parser, and the streaming decoders' running limit."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import brotli
import pytest
from backports import zstd
from hypothesis import given, settings
from hypothesis import strategies as st

from core.body_decode import BodyDecodeError, BodyTooLarge, decode_body
from translators import validate

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "hostile" / "bodies.json").read_text())


@pytest.mark.parametrize("case", VECTORS, ids=[f"{i}-{c['dialect']}" for i, c in enumerate(VECTORS)])
def test_golden_bodies(case: dict) -> None:
    raw = case["body"].encode("utf-8")
    if case["error"] is None:
        validate.check_types(case["dialect"], validate.load_object(raw, 64))
        return
    with pytest.raises(validate.InvalidBody) as err:
        validate.check_types(case["dialect"], validate.load_object(raw, 64))
    assert case["error"] in str(err.value)


@pytest.mark.parametrize("depth", [63, 64])
def test_nesting_up_to_the_limit_is_accepted(depth: int) -> None:
    body = b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    validate.load_object(body, 64)


@pytest.mark.parametrize("body", [b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}", b"[" * 5_000_000, b'{"a":' * 100_000])
def test_deeper_nesting_is_refused_before_parsing(body: bytes) -> None:
    with pytest.raises(validate.InvalidBody, match="nests deeper than 64 levels"):
        validate.load_object(body, 64)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet='ab"\\[]{}', max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k"[{\\', max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.integers(min_value=1, max_value=8))
def test_byte_scan_agrees_with_the_parsed_depth(value: object, limit: int) -> None:
    body = json.dumps(value).encode()
    assert validate.nesting_depth_exceeds(body, limit) == (_depth(value) > limit)


COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}


@pytest.mark.parametrize("coding", sorted(COMPRESS))
def test_decoders_round_trip_and_stop_at_the_limit(coding: str) -> None:
    data = json.dumps({"text": "x" * 5000}).encode()
    assert decode_body(COMPRESS[coding](data), coding, len(data)) == data
    with pytest.raises(BodyTooLarge):
        decode_body(COMPRESS[coding](data), coding, len(data) - 1)
    with pytest.raises(BodyDecodeError) as err:
        decode_body(COMPRESS[coding](data)[:-7], coding, 10 * len(data))
    assert err.value.status == 400 and coding in str(err.value)


def test_a_bomb_is_refused_without_decoding_it_whole() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024))  # ~200 KiB on the wire
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, "gzip", 1024 * 1024)


def test_stacked_and_unknown_encodings() -> None:
    data = b'{"a": 1}'
    assert decode_body(brotli.compress(gzip.compress(data)), "gzip, br", 100) == data
    assert decode_body(data, "identity", 100) == data
    with pytest.raises(BodyDecodeError) as err:
        decode_body(data, "compress", 100)
    assert err.value.status == 415 and "compress" in str(err.value)
