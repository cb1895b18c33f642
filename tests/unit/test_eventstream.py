"""AWS event-stream framing: reference vectors, every header type, CRC/length errors, any split."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.eventstream import (
    Byte,
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
    Long,
    Short,
    Timestamp,
    encode_message,
)

# upstreams.md 2.8, first vector: no headers, payload {"foo": "bar"}.
VECTOR_1 = bytes.fromhex("0000001e 00000000 baf2f68a") + b'{"foo": "bar"}' + bytes.fromhex("ae7258e4")
KIRO_HEADERS = {":event-type": "assistantResponseEvent", ":content-type": "application/json", ":message-type": "event"}


def _str_header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack("!H", len(raw)) + raw


def _frame(header_block: bytes, payload: bytes) -> bytes:
    """A frame built by hand (not by encode_message), so decoder tests do not trust the encoder."""
    prelude = struct.pack("!II", 16 + len(header_block) + len(payload), len(header_block))
    body = prelude + struct.pack("!I", zlib.crc32(prelude)) + header_block + payload
    return body + struct.pack("!I", zlib.crc32(body))


def _decode_all(data: bytes) -> list[EventStreamMessage]:
    d = EventStreamDecoder()
    out = d.feed(data)
    d.close()
    return out


def test_reference_vector_without_headers() -> None:
    assert len(VECTOR_1) == 30
    assert encode_message({}, b'{"foo": "bar"}') == VECTOR_1
    assert _decode_all(VECTOR_1) == [EventStreamMessage({}, b'{"foo": "bar"}')]


def test_reference_vector_with_three_string_headers() -> None:
    block = b"".join(_str_header(k, v) for k, v in KIRO_HEADERS.items())
    frame = _frame(block, b'{"content":"Hi"}')
    assert len(frame) == 124
    assert frame[:12] == bytes.fromhex("0000007c 0000005c 3bddcf78")
    assert frame[-4:] == bytes.fromhex("b02babdc")
    assert encode_message(KIRO_HEADERS, b'{"content":"Hi"}') == frame
    [msg] = _decode_all(frame)
    assert msg.headers == KIRO_HEADERS and list(msg.headers) == list(KIRO_HEADERS)
    assert msg.payload == b'{"content":"Hi"}'


ALL_TYPES: dict[str, object] = {
    "t": True,
    "f": False,
    "b": Byte(-7),
    "s": Short(-300),
    "i": 70000,
    "l": Long(-(2**40)),
    "by": b"\x00\xff\x10",
    "str": "héllo",
    "ts": Timestamp(1_700_000_000_123),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}
# The same headers laid out by hand from the type table (name_len, name, type, value).
ALL_TYPES_BLOCK = (
    b"\x01t\x00"
    + b"\x01f\x01"
    + b"\x01b\x02"
    + struct.pack("!b", -7)
    + b"\x01s\x03"
    + struct.pack("!h", -300)
    + b"\x01i\x04"
    + struct.pack("!i", 70000)
    + b"\x01l\x05"
    + struct.pack("!q", -(2**40))
    + b"\x02by\x06\x00\x03\x00\xff\x10"
    + b"\x03str\x07\x00\x06"
    + "héllo".encode()
    + b"\x02ts\x08"
    + struct.pack("!q", 1_700_000_000_123)
    + b"\x01u\x09"
    + uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
)


def test_every_header_type_decodes_and_round_trips() -> None:
    frame = _frame(ALL_TYPES_BLOCK, b"{}")
    [msg] = _decode_all(frame)
    assert msg.headers == ALL_TYPES
    assert {k: type(v) for k, v in msg.headers.items()} == {k: type(v) for k, v in ALL_TYPES.items()}
    assert encode_message(ALL_TYPES, b"{}") == frame  # encoder writes the table's layout
    assert encode_message(msg.headers, msg.payload) == frame  # and a decoded frame re-encodes exactly


def test_prelude_crc_mismatch_is_a_clear_error() -> None:
    bad = bytearray(VECTOR_1)
    bad[8] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude CRC mismatch"):
        EventStreamDecoder().feed(bytes(bad))


def test_message_crc_mismatch_is_a_clear_error() -> None:
    bad = bytearray(VECTOR_1)
    bad[15] ^= 0x20  # inside the payload
    with pytest.raises(EventStreamError, match="message CRC mismatch"):
        EventStreamDecoder().feed(bytes(bad))


def _prelude(total: int, hlen: int) -> bytes:
    head = struct.pack("!II", total, hlen)
    return head + struct.pack("!I", zlib.crc32(head))


@pytest.mark.parametrize(
    ("total", "hlen", "match"),
    [
        (12, 0, "impossible frame length 12"),
        (16 * 1024 * 1024 + 1, 0, "impossible frame length"),
        (40, 30, "headers length 30 exceeds frame length 40"),
    ],
)
def test_impossible_lengths_fail_on_the_prelude_alone(total: int, hlen: int, match: str) -> None:
    # Only the 12 prelude bytes arrive: a 16 MiB+ claim must fail now, not buffer forever.
    with pytest.raises(EventStreamError, match=match):
        EventStreamDecoder().feed(_prelude(total, hlen))


def test_unknown_header_type_and_header_overrun() -> None:
    with pytest.raises(EventStreamError, match="unknown header value type 10"):
        _decode_all(_frame(b"\x01x\x0a", b""))
    overrun = b"\x01x\x07\x00\x09abc"  # string claims 9 bytes, block has 3
    with pytest.raises(EventStreamError, match="overruns"):
        _decode_all(_frame(overrun, b"payload"))


def test_truncated_frame_at_end_of_stream() -> None:
    d = EventStreamDecoder()
    assert d.feed(VECTOR_1 + VECTOR_1[:-1]) == [EventStreamMessage({}, b'{"foo": "bar"}')]
    assert d.pending == 29
    with pytest.raises(EventStreamError, match=r"truncated inside a frame \(29 of 30 bytes\)"):
        d.close()


def test_truncated_prelude_at_end_of_stream() -> None:
    d = EventStreamDecoder()
    assert d.feed(VECTOR_1[:5]) == []
    with pytest.raises(EventStreamError, match="truncated"):
        d.close()


def test_clean_end_of_stream() -> None:
    d = EventStreamDecoder()
    assert len(d.feed(VECTOR_1 * 3)) == 3
    d.close()  # no exception
    assert d.pending == 0


def test_error_after_good_frames_returns_them_first_then_stays_failed() -> None:
    bad = bytearray(VECTOR_1)
    bad[-1] ^= 0xFF
    d = EventStreamDecoder()
    assert len(d.feed(VECTOR_1 + VECTOR_1 + bytes(bad))) == 2
    with pytest.raises(EventStreamError, match="message CRC"):
        d.feed(VECTOR_1)
    with pytest.raises(EventStreamError, match="message CRC"):
        d.close()


def test_shared_header_blocks_are_not_aliased() -> None:
    frame = encode_message(KIRO_HEADERS, b"{}")
    first, second = _decode_all(frame + frame)
    first.headers[":event-type"] = "changed"
    assert second.headers == KIRO_HEADERS


def test_one_byte_writes() -> None:
    frames = [encode_message(KIRO_HEADERS, f'{{"content":"ü{i}"}}'.encode()) for i in range(5)] + [VECTOR_1]
    data = b"".join(frames)
    d = EventStreamDecoder()
    got = [m for i in range(len(data)) for m in d.feed(data[i : i + 1])]
    d.close()
    assert got == _decode_all(data) and len(got) == 6


_header_values = st.one_of(
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-128, 127).map(Byte),
    st.integers(-(2**15), 2**15 - 1).map(Short),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    st.integers(0, 2**62).map(Timestamp),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.uuids(),
)
_frames = st.builds(
    encode_message,
    st.dictionaries(st.text("abcdefghij:-", min_size=1, max_size=12), _header_values, max_size=5),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=8), st.data())
def test_any_split_decodes_identically(frames: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(frames)
    expected = _decode_all(whole)
    assert len(expected) == len(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=40)))
    d = EventStreamDecoder()
    got: list[EventStreamMessage] = []
    for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True):
        got += d.feed(whole[a:b])
    d.close()
    assert got == expected
    assert [encode_message(m.headers, m.payload) for m in got] == frames  # type-preserving round trip
