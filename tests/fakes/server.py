"""A small reusable fake HTTP upstream for end-to-end tests.

Why hand-rolled on http.server: the fakes must misbehave on purpose (split UTF-8 across writes, drop the
connection mid-stream, answer 429 with retry-after, hang) in ways a web framework would smooth over.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

FAULT_KINDS = frozenset(
    {
        "status",
        "reset_before_headers",
        "reset_mid_stream",
        "hang",
        "overloaded_mid_stream",
        "stall_mid_stream",
        "error_mid_stream",
    }
)


@dataclass
class Fault:
    """One scripted misbehaviour; every request consumes at most one from `FakeServer.faults`.

    "status" answers `status` with `body` (default: the fake's own error shape) and `headers`;
    "reset_before_headers" resets the TCP connection (RST) without answering; "reset_mid_stream" sends
    `after_events` stream events (or half of a JSON body) then closes without the chunked terminator;
    "hang" holds the connection `seconds` then closes it unanswered; "overloaded_mid_stream" is Claude's;
    "stall_mid_stream" sends `after_events` events, goes silent for `seconds`, then goes on;
    "error_mid_stream" sends `after_events` events, then the upstream's own in-band error event
    (`FakeServer.stream_error_event`) and a clean end of the body.
    """

    status: int = 500
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "status"
    after_events: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")


@dataclass
class RecordedRequest:
    """What a fake received, for assertions (`json` is None when the body is empty or not JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None


class HttpError(Exception):
    """Raised while handling; rendered by the fake's `error_payload` so each upstream keeps its own shape."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details


def sse_event(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    """One SSE event; JSON is compact with raw UTF-8, as the real APIs send it."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines = [f"event: {event}"] if event else []
    lines.append(f"data: {payload}")
    return (eol.join(lines) + eol + eol).encode()


class Exchange:
    """One request being answered: the recorded request, its stream-level fault and the response writers."""

    def __init__(self, fake: FakeServer, handler: _Handler, request: RecordedRequest, fault: Fault | None) -> None:
        self.request = request
        self.fault = fault
        self._fake = fake
        self._handler = handler
        self._rng = random.Random(f"{fake.seed}:{len(fake.requests)}")

    def send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """A complete JSON (or raw bytes) answer; a reset_mid_stream fault cuts it in half."""
        if isinstance(payload, bytes):
            data = payload
        else:
            data = json.dumps(payload, ensure_ascii=False, indent=self._fake.json_indent).encode()
        self._start(status, {"content-type": "application/json", "content-length": str(len(data))}, headers)
        if self.fault is not None and self.fault.kind == "reset_mid_stream":
            self._write(data[: len(data) // 2])
            self._handler.close_connection = True
            return
        self._write(data)

    def send_sse(self, events: Iterable[bytes], headers: dict[str, str] | None = None) -> None:
        """Streams events with chunked encoding; every item of `events` (comments too) counts as one event."""
        base = {"content-type": "text/event-stream", "cache-control": "no-cache", "transfer-encoding": "chunked"}
        self._start(200, base, headers)
        kind = self.fault.kind if self.fault is not None else None
        limit = self.fault.after_events if kind in ("reset_mid_stream", "error_mid_stream") else None
        stall_at = self.fault.after_events if kind == "stall_mid_stream" else None
        for count, event in enumerate(events):
            if count == limit:
                break
            if count == stall_at:
                self._fake._stopping.wait(self.fault.seconds)
            for piece in self._pieces(event):
                self._write(b"%x\r\n%s\r\n" % (len(piece), piece))
                if self._fake.write_delay:
                    time.sleep(self._fake.write_delay)
        if kind == "error_mid_stream":
            error = self._fake.stream_error_event()
            self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(error), error))
            return
        if limit is not None:
            self._handler.close_connection = True  # FIN without the 0-size chunk: an incomplete body
            return
        self._write(b"0\r\n\r\n")

    def reset(self) -> None:
        """Drops the connection with a TCP RST (SO_LINGER 0) instead of a clean EOF."""
        sock = self._handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self._handler.close_connection = True

    def _start(self, status: int, base: dict[str, str], extra: dict[str, str] | None) -> None:
        headers = {**base, **{k.lower(): v for k, v in (extra or {}).items()}}
        self._handler.send_response(status)
        for name, value in headers.items():
            self._handler.send_header(name, value)
        self._handler.end_headers()

    def _write(self, data: bytes) -> None:
        self._handler.wfile.write(data)

    def _pieces(self, event: bytes) -> list[bytes]:
        """Splits at seeded random offsets, always including one inside a multi-byte character if any."""
        if not self._fake.split_writes or len(event) < 2:
            return [event]
        cuts = set(self._rng.sample(range(1, len(event)), min(2, len(event) - 1)))
        continuation = [i for i, byte in enumerate(event) if 0x80 <= byte < 0xC0]
        if continuation:
            cuts.add(self._rng.choice(continuation))
        bounds = [0, *sorted(cuts), len(event)]
        return [event[a:b] for a, b in itertools.pairwise(bounds)]


class FakeServer:
    """Base of every fake: subclasses implement `handle` (routing + validation) and `error_payload`."""

    invalid_json_message = "Invalid JSON body."
    json_indent: int | None = None

    def __init__(self, *, split_writes: bool = False, write_delay: float = 0.0, seed: int = 0) -> None:
        self.split_writes = split_writes
        self.write_delay = write_delay
        self.seed = seed
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self.connections_opened = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> Self:
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def clear(self) -> None:
        """Forgets recorded requests and pending faults (for fakes shared across tests)."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    # -- for subclasses -------------------------------------------------------------------------
    def handle(self, ex: Exchange) -> None:
        raise NotImplementedError

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        raise NotImplementedError

    def stream_error_event(self) -> bytes:
        """The error event this upstream sends inside a 200 stream (fault "error_mid_stream")."""
        raise NotImplementedError

    def new_id(self, prefix: str, length: int = 24) -> str:
        """Deterministic ids (same seed, same sequence of requests -> same ids)."""
        digest = hashlib.sha256(f"{type(self).__name__}:{self.seed}:{prefix}:{next(self._ids)}".encode()).hexdigest()
        return prefix + digest[:length]

    # -- plumbing ---------------------------------------------------------------------------------
    def _track(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._open.add(sock)
                self.connections_opened += 1
            else:
                self._open.discard(sock)

    def _serve(self, handler: _Handler) -> None:
        body = _read_body(handler)
        split = urlsplit(handler.path)
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        json_error = False
        if body:
            try:
                request.json = json.loads(body)
            except ValueError:
                json_error = True
        try:
            fault = self.faults.popleft()
        except IndexError:
            fault = None
        with self._lock:
            ex = Exchange(self, handler, request, fault)
            self.requests.append(request)
        try:
            if fault is not None and fault.kind == "status":
                body_out = fault.body if fault.body is not None else self.error_payload(_status_error(fault.status))
                ex.send_json(body_out, status=fault.status, headers=fault.headers)
            elif fault is not None and fault.kind == "reset_before_headers":
                ex.reset()
            elif fault is not None and fault.kind == "hang":
                self._stopping.wait(fault.seconds)
                handler.close_connection = True
            elif json_error:
                raise HttpError(400, self.invalid_json_message)
            else:
                self.handle(ex)
        except HttpError as err:
            ex.send_json(self.error_payload(err), status=err.status, headers=err.headers)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True


def _status_error(status: int) -> HttpError:
    messages = {
        429: "Rate limit exceeded.",
        500: "Internal server error.",
        503: "Service unavailable.",
        529: "Overloaded",
    }
    return HttpError(status, messages.get(status, f"Upstream error {status}."))


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Reads the whole request body, Content-Length or chunked, so keep-alive stays in sync."""
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes must leave as separate segments
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, opened=True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, opened=False)
        super().finish()

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: tests read `.requests` instead of logs."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        """Skips HTTPServer's reverse-DNS lookup of the bind address."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away or the fault closed the socket
        super().handle_error(request, client_address)
