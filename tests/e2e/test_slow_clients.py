"""Slow and idle clients against a real gateway with small limits: slowloris-style raw sockets are
closed on time (with or without a key), connections past max_connections are refused at once, and a
slow reader of a streamed answer still gets all of it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import CLIENT_KEY, OPENAI_KEY, Fakes, api_key_providers
from tests.fakes import brain
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.gateway import GatewayProcess, start_gateway
from tests.rawhttp import address, exchange, request_bytes

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5
MAX_CONNECTIONS = 60
# The watcher ticks every quarter of the shortest limit; a loaded CI machine gets some slack.
SLACK = 2.5

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = (b"authorization", f"Bearer {CLIENT_KEY}".encode())
JSON = (b"content-type", b"application/json")


@pytest.fixture(scope="module")
def slow_gateway(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("slow-gateway")
    gw = start_gateway(
        workdir,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": api_key_providers(fakes),
            "limits": {
                "header_timeout": HEADER_TIMEOUT,
                "body_timeout": BODY_TIMEOUT,
                "idle_timeout": IDLE_TIMEOUT,
                "max_connections": MAX_CONNECTIONS,
            },
        },
    )
    yield gw
    gw.stop()


def _connect(gw: GatewayProcess) -> socket.socket:
    return socket.create_connection(address(gw.url), timeout=10)


def _closed_after(sock: socket.socket, limit: float, drip: bytes = b"", every: float = 0.25) -> float:
    """Seconds until the server closes the connection (reading and dripping bytes meanwhile);
    fails the test if it stays open past `limit`."""
    start = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if drip:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
    pytest.fail(f"connection still open after {limit}s")


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/chat/com", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"],
    ids=["nothing", "half-request-line", "half-head"],
)
def test_incomplete_head_is_closed_after_header_timeout(slow_gateway: GatewayProcess, sent: bytes) -> None:
    with _connect(slow_gateway) as sock:
        sock.sendall(sent)
        took = _closed_after(sock, HEADER_TIMEOUT + SLACK)
    assert took >= HEADER_TIMEOUT * 0.8


def test_dripped_head_is_closed_although_bytes_keep_coming(slow_gateway: GatewayProcess) -> None:
    """Slowloris: one header byte every 0.25 s keeps the connection busy but never completes the head."""
    with _connect(slow_gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nx-a: ")
        took = _closed_after(sock, HEADER_TIMEOUT + SLACK, drip=b"a")
    assert took >= HEADER_TIMEOUT * 0.8


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "no-key"])
def test_stalled_body_is_closed_and_nothing_forwarded(
    slow_gateway: GatewayProcess, fakes: Fakes, with_key: bool
) -> None:
    body = json.dumps(CHAT).encode()
    headers = [AUTH, JSON] if with_key else [JSON]
    data = request_bytes("POST", b"/v1/chat/completions", headers, body)
    before = fakes.request_count()
    with _connect(slow_gateway) as sock:
        sock.sendall(data[: len(data) - len(body) // 2])
        took = _closed_after(sock, BODY_TIMEOUT + SLACK)
    assert took >= BODY_TIMEOUT * 0.8
    assert fakes.request_count() == before


def test_body_bytes_that_keep_coming_are_not_cut(slow_gateway: GatewayProcess, fakes: Fakes) -> None:
    """body_timeout is between bytes: a body trickling in over 2x the limit is still read and answered."""
    body = json.dumps(CHAT).encode()
    data = request_bytes("POST", b"/v1/chat/completions", [AUTH, JSON], body)
    cut = len(data) - len(body)
    with _connect(slow_gateway) as sock:
        sock.sendall(data[:cut])
        pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
        step = (BODY_TIMEOUT * 2.2) / len(pieces)
        for piece in pieces:
            time.sleep(step)
            sock.sendall(piece)
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_idle_keep_alive_connection_is_closed(slow_gateway: GatewayProcess) -> None:
    body = json.dumps(CHAT).encode()
    data = request_bytes("POST", b"/v1/chat/completions", [AUTH, JSON], body).replace(
        b"connection: close", b"connection: keep-alive"
    )
    with _connect(slow_gateway) as sock:
        sock.sendall(data)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        took = _closed_after(sock, IDLE_TIMEOUT + SLACK)
    assert took >= IDLE_TIMEOUT * 0.6


def test_connections_past_the_limit_are_refused_at_once_and_all_freed(slow_gateway: GatewayProcess) -> None:
    held = [_connect(slow_gateway) for _ in range(200)]
    try:
        time.sleep(0.5)
        refused = 0
        for sock in held[MAX_CONNECTIONS + 10 :]:
            sock.settimeout(2)
            try:
                if sock.recv(1) == b"":
                    refused += 1
            except ConnectionResetError:
                refused += 1
            except TimeoutError:
                pass
        assert refused == len(held) - MAX_CONNECTIONS - 10
        # The held ones are closed by header_timeout, then the gateway serves again.
        time.sleep(HEADER_TIMEOUT + SLACK)
    finally:
        for sock in held:
            sock.close()
    chat = request_bytes("POST", b"/v1/chat/completions", [AUTH, JSON], json.dumps(CHAT).encode())
    answer = exchange(slow_gateway.url, chat)
    assert answer.status == 200


def test_slow_reader_of_a_stream_gets_all_of_it(slow_gateway: GatewayProcess) -> None:
    body = json.dumps({**CHAT, "stream": True}).encode()
    with _connect(slow_gateway) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes("POST", b"/v1/chat/completions", [AUTH, JSON], body))
        time.sleep(max(HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT) + 1.5)
        received = bytearray()
        sock.settimeout(10)
        while not received.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            received += chunk
            time.sleep(0.01)
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in received


def test_a_stream_longer_than_tcp_timeout_is_not_cut_while_events_flow(tmp_path: Path) -> None:
    """The relay writes most of a stream straight to the client's socket (addons/stream.py
    DirectClient), which mitmproxy's inactivity watchdog (tcp_timeout, here 2 s) does not see: a
    chunk still goes through mitmproxy every third of tcp_timeout, so a stream that keeps sending
    for three times as long arrives whole."""
    slow = FakeOpenAIChat(api_key=OPENAI_KEY, write_delay=0.1).start()  # ~60 events: ~6 s
    gw = start_gateway(
        tmp_path,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": {
                "openai-custom": {"base_url": f"{slow.url}/v1", "accounts": [{"label": "oa", "api_key": OPENAI_KEY}]}
            },
            "limits": {"header_timeout": 1, "body_timeout": 1, "idle_timeout": 1, "write_timeout": 1.5},
        },
    )
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "long please"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        took = time.monotonic() - started
    finally:
        gw.stop()
        slow.stop()
    assert text == brain.LONG_TEXT
    assert took > 3 * 2, f"the stream took {took:.1f} s: not long enough to outlive tcp_timeout"
