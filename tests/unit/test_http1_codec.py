"""The HTTP/1.1 codec of core/http1.py: response heads against golden vectors (tests/vectors/http1),
the request it writes (nothing unsafe reaches the wire), and whole responses read through a real
loopback socket however the server splits its writes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.http1 import BadResponseHead, ConnectError, Http1Client, _request, parse_response_head

VECTORS = Path(__file__).parent.parent / "vectors" / "http1"
HEADS = json.loads((VECTORS / "response_heads.json").read_text())["cases"]


def _framing(head) -> str:
    if head.chunked:
        return "chunked"
    body = head.body()
    return "close" if body.until_close else f"length:{0 if body.done else head.length}"


@pytest.mark.parametrize("case", HEADS, ids=[c["name"] for c in HEADS])
def test_response_heads(case):
    block = case["head"].encode("latin-1")
    if "error" in case:
        with pytest.raises(BadResponseHead, match=case["error"]):
            parse_response_head(block)
        return
    head = parse_response_head(block)
    assert head.status_code == case["status"]
    assert head.headers == case["headers"]
    assert head.keep_alive is case["keep_alive"]
    assert _framing(head) == case["framing"]


def test_the_request_on_the_wire():
    key, wire = _request(
        "https://api.example.com:8443/v1/messages?beta=true",
        {"x-api-key": "sk-1", "Host": "evil", "content-length": "999", "anthropic-beta": "a,b"},
        b'{"x":1}',
        None,
    )
    assert key == ("https", "api.example.com", 8443, "")
    assert wire == (
        b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: api.example.com:8443\r\ncontent-length: 7\r\n"
        b'x-api-key: sk-1\r\nanthropic-beta: a,b\r\n\r\n{"x":1}'
    )


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"x-a": "1\r\nx-injected: 2"}, "x-a"),
        ({"x-a": "1\n"}, "x-a"),
        ({"x-a": "\x00"}, "x-a"),
        ({"bad name": "1"}, "bad name"),
        ({"x-a:": "1"}, "x-a:"),
    ],
)
def test_a_header_that_would_change_the_request_is_refused_by_name_only(headers, named):
    with pytest.raises(ConnectError) as info:
        _request("http://127.0.0.1:9/v1/x", headers, b"", None)
    assert named in str(info.value)
    assert all(v not in str(info.value) for v in headers.values() if len(v) > 2)


def test_a_header_outside_latin1_is_refused():
    with pytest.raises(ConnectError, match="Latin-1"):
        _request("http://127.0.0.1:9/v1/x", {"x-a": "日本"}, b"", None)


async def _serve_split(answer: bytes, cuts: list[int]) -> tuple[int, bytes, int]:
    """Serves `answer` to two requests in a row, written in pieces at `cuts`; the client's status,
    body and the number of connections it used."""
    connections = 0
    points = sorted({c % (len(answer) + 1) for c in cuts})
    pieces = [answer[a:b] for a, b in zip([0, *points], [*points, len(answer)], strict=True)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Http1Client()
    try:
        results = [
            await client.post(f"http://127.0.0.1:{port}/x", {}, b"{}", connect_timeout=2, read_timeout=2)
            for _ in range(2)
        ]
    finally:
        await client.aclose()
        server.close()
    assert results[0] == results[1]
    return results[0].status_code, results[0].content, connections


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=50), max_size=6),
    st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_whole_answers_read_however_they_are_split(chunks, cuts, chunked, informational):
    body = b"".join(chunks)
    head = b"HTTP/1.1 100 Continue\r\n\r\n" if informational else b""
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        head += b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    else:
        framed = body
        head += b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
    status, content, connections = asyncio.run(_serve_split(head + framed, cuts))
    assert (status, content) == (200, body)
    assert connections == 1  # both answers ended cleanly: the connection was kept
