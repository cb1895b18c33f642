"""Request smuggling (CVE-2025-43859 and its relatives): malformed framing is refused, never forwarded.

h11 before 0.16 accepted `5\\r\\nhelloXX0\\r\\n\\r\\n` as the body `hello`, so a front proxy and the
gateway could disagree on where a request ends. Each case sends a valid key and a chat request whose
framing is broken; the gateway must answer 400 or close the connection, and no upstream may see it.
"""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

from tests.conftest import CLIENT_KEY, Fakes
from tests.gateway import GatewayProcess

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()
HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
    "Content-Type: application/json\r\n{framing}\r\n"
)


def chunked(body: bytes, *, sep: bytes = b"\r\n", after_data: bytes = b"\r\n", size: str | None = None) -> bytes:
    return (size or f"{len(body):x}").encode() + sep + body + after_data + b"0" + sep + sep


CASES = {
    # The CVE's own example: bytes after the chunk's data instead of its CRLF terminator.
    "bad chunk terminator": ("Transfer-Encoding: chunked\r\n", chunked(BODY, after_data=b"XX")),
    "bad chunk terminator, one byte": ("Transfer-Encoding: chunked\r\n", chunked(BODY, after_data=b"X\n")),
    "bare LF in chunk framing": ("Transfer-Encoding: chunked\r\n", chunked(BODY, sep=b"\n", after_data=b"\n")),
    "oversized chunk-size line": (
        "Transfer-Encoding: chunked\r\n",
        chunked(BODY, size="0" * 70_000 + f"{len(BODY):x}"),
    ),
    "chunk size not hex": ("Transfer-Encoding: chunked\r\n", chunked(BODY, size="zz")),
    "chunk size with a 0x prefix": ("Transfer-Encoding: chunked\r\n", chunked(BODY, size=f"0x{len(BODY):x}")),
    "Content-Length and Transfer-Encoding together": (
        f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n",
        chunked(BODY),
    ),
    "two different Content-Lengths": (f"Content-Length: {len(BODY)}\r\nContent-Length: 5\r\n", BODY),
    "Transfer-Encoding other than chunked": ("Transfer-Encoding: gzip, identity\r\n", BODY),
    "obfuscated Transfer-Encoding": ("Transfer-Encoding : chunked\r\n", chunked(BODY)),
}


def send_raw(gateway: GatewayProcess, data: bytes) -> bytes:
    """Everything the gateway answers until it closes the connection or stays silent for 3 s."""
    url = urllib.parse.urlsplit(gateway.url)
    received = b""
    with socket.create_connection((url.hostname, url.port), timeout=3) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_framing_is_refused_and_never_forwarded(gateway: GatewayProcess, fakes: Fakes, case: str) -> None:
    framing, body = CASES[case]
    answer = send_raw(gateway, HEAD.format(key=CLIENT_KEY, framing=framing).encode() + body)
    statuses = [line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    # Refused: a 4xx, or the connection closed without an answer; never a 2xx for any part of it.
    assert all(s.startswith(b"4") for s in statuses), answer[:300]
    assert fakes.request_count() == 0


def test_the_same_request_well_framed_is_served(gateway: GatewayProcess, fakes: Fakes) -> None:
    """The control: the cases above fail because of their framing, not their content."""
    answer = send_raw(
        gateway, HEAD.format(key=CLIENT_KEY, framing="Transfer-Encoding: chunked\r\n").encode() + chunked(BODY)
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert fakes.request_count() == 1
