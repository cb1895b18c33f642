"""The bench's fake upstream: one asyncio server that answers every dialect with precomputed bytes.

Why not tests/fakes: those validate requests strictly and run a thread per connection, which is
right for correctness tests and far too expensive here -- the fake must cost next to nothing so
that what the bench measures is the proxy in front of it.

The dialect comes from the path (/chat/completions, /messages, :generateContent, v1internal for the
Code Assist envelope, /generateAssistantResponse for Kiro); a stream is asked by `"stream":true`, a
streamGenerateContent path, or (Kiro) the `bench n=N p=P` marker, which also sets the event count
and pace. Run as `python -m bench.fake_upstream PORT_FILE`; it prints nothing and serves until killed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from bench.payloads import MARKER, json_answer, stream_answer

_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
_DEFAULT_EVENTS = 50


def _dialect(path: bytes) -> str | None:
    if b"/chat/completions" in path:
        return "openai_chat"
    if b"/messages" in path:
        return "claude"
    if b"enerateContent" in path:
        return "code_assist" if b"v1internal" in path else "gemini"
    if b"generateAssistantResponse" in path or b"SendMessage" in path:
        return "kiro"
    return None


def _wants_stream(dialect: str, path: bytes, body: bytes) -> bool:
    if dialect in ("gemini", "code_assist"):
        return b"streamGenerateContent" in path
    if dialect == "kiro":
        return MARKER.search(body) is not None
    return b'"stream":true' in body or b'"stream": true' in body


class FakeUpstream(asyncio.Protocol):
    """One keep-alive connection: reads a request, writes the precomputed answer."""

    __slots__ = ("buf", "busy", "transport")

    _json_cache: dict[str, bytes] = {}

    def __init__(self) -> None:
        self.buf = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17 : j if j >= 0 else len(lower)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            path = head.split(b" ", 2)[1]
            self._answer(path, body)

    def _answer(self, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        dialect = _dialect(path)
        if dialect is None:
            self.transport.write(_NOT_FOUND)
            return
        if not _wants_stream(dialect, path, body):
            data = self._json_cache.get(dialect)
            if data is None:
                data = self._json_cache[dialect] = json_answer(dialect)
            self.transport.write(data)
            return
        m = MARKER.search(body)
        n, pace = (int(m.group(1)), int(m.group(2))) if m else (_DEFAULT_EVENTS, 0)
        self.busy = True
        asyncio.get_running_loop().create_task(self._stream(dialect, n, pace / 1000.0))

    async def _stream(self, dialect: str, n: int, pace: float) -> None:
        head, pieces = stream_answer(dialect, max(1, n))
        t = self.transport
        if t is None:
            return
        t.write(head)
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if self.transport is None:
                return
            t.write(piece)
            if i < last:
                # Unpaced: still one write per event (a real upstream flushes each event).
                await asyncio.sleep(pace)
        self.busy = False
        self._next()


async def serve(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)
    async with server:
        await server.serve_forever()


def main() -> None:
    _raise_fd_limit()
    asyncio.run(serve(sys.argv[1]))


def _raise_fd_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
