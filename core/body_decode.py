"""Content-Encoding of request bodies, decoded with a running size limit.

mitmproxy's `Request.content` decodes a whole gzip/deflate/br/zstd body into memory before anyone
can look at its size: a 400 KiB gzip body becomes 400 MiB. Here each step decompresses piece by
piece and stops as soon as the output passes the limit, so a bomb costs at most `limit` bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli

try:  # Python 3.14 has it in the standard library; mitmproxy pulls in the backport before that.
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd

_IN_CHUNK = 64 * 1024


class BodyDecodeError(Exception):
    """The body cannot be decoded; `status` says whose fault and how to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(BodyDecodeError):
    def __init__(self, limit: int, encoding: str) -> None:
        super().__init__(
            413, f"request body decoded from {encoding} is larger than the gateway's limit of {limit} bytes"
        )


def _zlib_steps(data: bytes, limit: int, wbits: int) -> bytes:
    """gzip (wbits 31, several members allowed) or zlib/raw deflate, bounded by limit."""
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        pending = data
        while pending:
            piece, pending = pending[:_IN_CHUNK], pending[_IN_CHUNK:]
            while piece:
                out += d.decompress(piece, limit - len(out) + 1)
                if len(out) > limit:
                    raise OverflowError
                piece = d.unconsumed_tail
            if d.eof:
                pending = d.unused_data + pending
                break
        if not d.eof:
            out += d.flush(limit - len(out) + 1)
            if len(out) > limit:
                raise OverflowError
            raise ValueError("truncated stream")
        if wbits != 31 or not pending.strip(b"\0"):
            return bytes(out)
        data = pending  # another gzip member follows


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib_steps(data, limit, 31)


def _deflate(data: bytes, limit: int) -> bytes:
    # RFC 9110 says zlib-wrapped; some clients send raw deflate (mitmproxy accepts both as well).
    try:
        return _zlib_steps(data, limit, 15)
    except zlib.error:
        return _zlib_steps(data, limit, -15)


def _br(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    pending = data
    while pending:
        piece, pending = pending[:_IN_CHUNK], pending[_IN_CHUNK:]
        out += d.process(piece, output_buffer_limit=limit - len(out) + 1)
        while len(out) <= limit and not d.can_accept_more_data():
            out += d.process(b"", output_buffer_limit=limit - len(out) + 1)
        if len(out) > limit:
            raise OverflowError
    if not d.is_finished():
        raise ValueError("truncated stream")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    d = zstd.ZstdDecompressor()
    out = bytearray()
    pending = data
    while pending and not d.eof:
        piece, pending = pending[:_IN_CHUNK], pending[_IN_CHUNK:]
        out += d.decompress(piece, limit - len(out) + 1)
        while len(out) <= limit and not d.needs_input and not d.eof:
            out += d.decompress(b"", limit - len(out) + 1)
        if len(out) > limit:
            raise OverflowError
    if not d.eof:
        raise ValueError("truncated stream")
    return bytes(out)


DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _br,
    "zstd": _zstd,
}


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with every listed Content-Encoding undone (last applied first), never more than limit
    bytes at any step. Raises BodyTooLarge (413), or BodyDecodeError: 415 for an encoding we do not
    know, 400 for a body that is not valid in its declared encoding."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = DECODERS.get(coding)
        if decoder is None:
            shown = coding.encode("ascii", "backslashreplace").decode()[:40]
            known = ", ".join(["identity", *DECODERS])
            raise BodyDecodeError(415, f"unsupported Content-Encoding {shown!r} (supported: {known})")
        try:
            data = decoder(data, limit)
        except OverflowError:
            raise BodyTooLarge(limit, coding) from None
        except (zlib.error, brotli.error, zstd.ZstdError, ValueError, EOFError) as e:
            raise BodyDecodeError(400, f"request body is not valid {coding} (Content-Encoding): {e}") from None
    return data
