"""Local token estimates (translators.tokens): the documented rules, with hand-computed numbers."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translators import ir
from translators.tokens import (
    IMAGE_TOKENS_MAX,
    MESSAGE_OVERHEAD,
    estimate_image_tokens,
    estimate_request_tokens,
    estimate_text_tokens,
    image_size,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("hello world", 3),  # 11 chars -> ceil(11 / 4)
        ("你好世界", 4),  # one per CJK character
        ("hi 你好", 3),  # 2 CJK + ceil(3 / 4)
        ("こんにちは", 5),  # kana
        ("안녕하세요", 5),  # hangul
        ("\uff0c\u3002", 2),  # fullwidth comma and CJK full stop
        ("😀", 1),  # other scripts count by characters
    ],
)
def test_text_rule(text: str, tokens: int) -> None:
    assert estimate_text_tokens(text) == tokens


@given(st.text(), st.text())
def test_text_estimate_is_positive_and_roughly_additive(a: str, b: str) -> None:
    assert (estimate_text_tokens(a) > 0) == bool(a)
    joined = estimate_text_tokens(a + b)
    # Only the rounding of the 4-char groups can differ.
    assert (
        estimate_text_tokens(a) + estimate_text_tokens(b) - 1
        <= joined
        <= estimate_text_tokens(a) + estimate_text_tokens(b)
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _png(width: int, height: int) -> str:
    return _b64(
        b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + b"\x08\x06\x00\x00\x00"
    )


def _gif(width: int, height: int) -> str:
    return _b64(b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 8)


def _jpeg(width: int, height: int, sof: int = 0xC0) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    frame = bytes((0xFF, sof)) + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x00" * 9
    return _b64(b"\xff\xd8" + app0 + b"\xff" + frame)  # the extra 0xFF is a legal fill byte


def _webp(chunk: bytes, payload: bytes) -> str:
    return _b64(b"RIFF" + b"\x00" * 4 + b"WEBP" + chunk + b"\x00" * 4 + payload + b"\x00" * 8)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_png(200, 100), (200, 100)),
        (_gif(750, 750), (750, 750)),
        (_jpeg(2000, 1000), (2000, 1000)),
        (_jpeg(300, 400, sof=0xC2), (300, 400)),
        (_webp(b"VP8X", b"\x00" * 4 + (999).to_bytes(3, "little") + (499).to_bytes(3, "little")), (1000, 500)),
        (_webp(b"VP8L", b"\x2f" + (63 | (31 << 14)).to_bytes(4, "little")), (64, 32)),
        (_webp(b"VP8 ", b"\x00" * 3 + b"\x9d\x01\x2a" + struct.pack("<HH", 300, 300)), (300, 300)),
        (_png(0, 10), None),
        (_b64(b"\x89PNG\r\n\x1a\n"), None),
        (_b64(b"%PDF-1.4 not an image"), None),
        ("not base64 at all!", None),
    ],
)
def test_image_size_from_headers(data: str, size: tuple[int, int] | None) -> None:
    assert image_size(data) == size


@pytest.mark.parametrize(
    ("part", "tokens"),
    [
        (ir.ImagePart("image/png", _png(200, 100)), 27),  # ceil(20000 / 750)
        (ir.ImagePart("image/gif", _gif(750, 750)), 750),
        (ir.ImagePart("image/png", _png(1, 1)), 1),
        (ir.ImagePart("image/png", _png(3000, 100)), 110),  # long edge scaled to 1568 first
        (ir.ImagePart("image/jpeg", _jpeg(2000, 1000)), IMAGE_TOKENS_MAX),  # capped
        (ir.ImagePart(url="https://example.com/a.png"), IMAGE_TOKENS_MAX),
        (ir.ImagePart("application/pdf", _b64(b"%PDF-1.4")), IMAGE_TOKENS_MAX),
    ],
)
def test_image_tokens(part: ir.ImagePart, tokens: int) -> None:
    assert estimate_image_tokens(part) == tokens


def test_request_counts_every_part_and_tool() -> None:
    req = ir.Request(
        model="m",
        system=[ir.TextPart("You are helpful.")],  # 16 chars: 4
        messages=[
            ir.Message("user", [ir.TextPart("Hello there")]),  # 3 + 3 overhead = 6
            # name 11 chars: 3, arguments {"city":"Paris"} 16 chars: 4, + 3 = 10
            ir.Message("assistant", [ir.ToolCallPart("call_1", "get_weather", {"city": "Paris"})]),
            # "18C": 1, URL image: 1600, + 3 = 1604
            ir.Message(
                "user", [ir.ToolResultPart("call_1", [ir.TextPart("18C"), ir.ImagePart(url="https://x/y.png")])]
            ),
            ir.Message("assistant", [ir.ThinkingPart("hmm"), ir.TextPart("ok")]),  # 1 + 1 + 3 = 5
        ],
        tools=[
            # name 3, description (18 chars) 5, schema as compact JSON (57 chars) 15: 23
            ir.Tool(
                "get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}
            ),
            # a built-in counts its definition: 50 chars of JSON -> 13
            ir.Tool(
                "web_search", kind="web_search_20250305", raw={"type": "web_search_20250305", "name": "web_search"}
            ),
        ],
    )
    assert estimate_request_tokens(req) == 4 + 6 + 10 + 1604 + 5 + 23 + 13


def test_request_never_zero() -> None:
    assert estimate_request_tokens(ir.Request(model="m", messages=[])) == 1
    assert estimate_request_tokens(ir.Request(model="m", messages=[ir.Message("user", [])])) == MESSAGE_OVERHEAD


@given(st.lists(st.text(max_size=40), min_size=1, max_size=5), st.text(min_size=1, max_size=40))
def test_request_estimate_grows_with_content(texts: list[str], extra: str) -> None:
    req = ir.Request(model="m", messages=[ir.Message("user", [ir.TextPart(t) for t in texts])])
    before = estimate_request_tokens(req)
    assert before == MESSAGE_OVERHEAD + sum(estimate_text_tokens(t) for t in texts)
    req.messages.append(ir.Message("assistant", [ir.TextPart(extra)]))
    assert estimate_request_tokens(req) == before + MESSAGE_OVERHEAD + estimate_text_tokens(extra)
