"""SseEventRelay (translators/sse.py), the same-dialect stream relay: whole events out byte for byte,
empty `data:` events dropped, however the upstream's bytes are split into reads."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from translators.sse import SseEventRelay

_EMPTY = [b"data:\n\n", b"data: \n\n", b"data: \r\n\r\n", b"\n\n", b"data:\r\n\r\n"]
_FULL = [
    b'data: {"a":1}\n\n',
    b'data:{"b":"x"}\r\n\r\n',
    b"event: message_start\ndata: {}\n\n",
    b"data: [DONE]\n\n",
    b": keep-alive\n\n",
    b"data: plain text\r\n\r\n",
    b'data: {"text":"line\\nbreak"}\n\n',
]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_EMPTY + _FULL), max_size=40),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_whole_events_pass_and_empty_ones_are_dropped_however_split(events, cuts):
    wire = b"".join(events)
    relay = SseEventRelay()
    out = b"".join(relay.feed(piece) for piece in _split(wire, cuts)) + relay.close()
    assert out == b"".join(e for e in events if e not in _EMPTY)


def test_a_partial_event_waits_for_its_blank_line():
    relay = SseEventRelay()
    assert relay.feed(b'data: {"a":1}\n\ndata: {"b"') == b'data: {"a":1}\n\n'
    assert relay.feed(b":2}\n\n") == b'data: {"b":2}\n\n'
    assert relay.feed(b"data: \n\n") == b""
