"""A raw-socket HTTP/1.1 client for hostile-input tests: sends exactly the bytes it is given (bad
UTF-8 in headers, broken framing, trailers) and always gives up after a bounded time."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(slots=True)
class RawAnswer:
    status: int  # 0: the connection closed without a status line
    head: bytes
    body: bytes
    seconds: float


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_bytes(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", *, framing: str = "length"
) -> bytes:
    """One request; framing "length" adds Content-Length, "chunked" sends the body in two chunks,
    "trailers" does that and ends with a trailer field, "none" adds nothing."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    lines += [k + b": " + v for k, v in headers]
    if framing == "length":
        lines.append(b"content-length: " + str(len(body)).encode())
        payload = body
    elif framing in ("chunked", "trailers"):
        lines.append(b"transfer-encoding: chunked")
        half = len(body) // 2
        chunks = [c for c in (body[:half], body[half:]) if c]
        payload = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n"
        payload += b"x-checksum: abc\r\n\r\n" if framing == "trailers" else b"\r\n"
    else:
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def _complete(data: bytes) -> bool:
    """A whole answer is in (its framing says so), even if the server keeps the connection open."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    fields = head.lower()
    if b"\r\ntransfer-encoding: chunked" in fields:
        return body.endswith(b"0\r\n\r\n")
    for line in fields.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def exchange(url: str, data: bytes, timeout: float = 20.0) -> RawAnswer:
    """Sends data and reads until the answer is complete or the server closes; raises TimeoutError
    past the timeout."""
    start = time.monotonic()
    deadline = start + timeout
    with socket.create_connection(address(url), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything (413)
        received = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete answer within {timeout}s (got {bytes(received[:200])!r})")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise TimeoutError(f"no complete answer within {timeout}s (got {bytes(received[:200])!r})") from None
            if not chunk:
                break
            received += chunk
            if _complete(bytes(received)):
                break
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status = 0
    if head.startswith(b"HTTP/1.1 ") and head[9:12].isdigit():
        status = int(head[9:12])
    return RawAnswer(status, head, body, time.monotonic() - start)
