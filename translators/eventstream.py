"""AWS event-stream framing (`application/vnd.amazon.eventstream`): incremental decoder + encoder.

Frame: total length u32, headers length u32, prelude CRC32 (of the first 8 bytes), headers,
payload, message CRC32 (of everything before it). All big-endian; CRC is zlib's IEEE CRC-32.

Error policy: any CRC mismatch or impossible length raises `EventStreamError` and the decoder
stays failed. Peers (kiro.rs) resync instead -- skip one byte after a bad prelude, skip a frame
after a bad message CRC. We do not: the body arrives over TLS, so a mismatch means a bug or a
body that is not an event stream at all, never line noise; resyncing would silently drop or
misread model output (a lost text frame corrupts the answer without anyone noticing), while a
loud error reaches the client and the account pool.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

MAX_FRAME = 16 * 1024 * 1024
MIN_FRAME = 16
_HCACHE_MAX = 64

_PRELUDE = struct.Struct("!III")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# value type -> fixed-width struct (2 byte, 3 short, 4 int, 5 long, 8 timestamp)
_FIXED = {
    2: struct.Struct("!b"),
    3: struct.Struct("!h"),
    4: struct.Struct("!i"),
    5: struct.Struct("!q"),
    8: struct.Struct("!q"),
}


class EventStreamError(ValueError):
    """The byte stream is not a well-formed AWS event stream."""


# Integer header types other than int32, so a decoded header re-encodes to the same bytes.
class Byte(int):
    pass


class Short(int):
    pass


class Long(int):
    pass


class Timestamp(int):
    """Milliseconds since the epoch (header type 8), kept as an int: no datetime on the hot path."""


HeaderValue = bool | int | str | bytes | uuid.UUID
_INT_WRAP: dict[int, type[int]] = {2: Byte, 3: Short, 4: int, 5: Long, 8: Timestamp}


@dataclass(slots=True)
class EventStreamMessage:
    headers: dict[str, object]
    payload: bytes


class EventStreamDecoder:
    """Bytes in any split -> whole frames. feed() returns the frames it completed.

    An error found after some good frames of the same feed() is held back: those frames are
    returned first and the error is raised by the next feed()/close(), so nothing before the bad
    spot is lost. close() raises EventStreamError when the stream ends inside a frame.
    """

    __slots__ = ("_base", "_buf", "_error", "_hcache")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: EventStreamError | None = None
        self._base = 0  # stream offset of the first buffered byte, for error messages
        # A stream repeats a handful of header blocks (one per event type): decode each once.
        self._hcache: dict[bytes, dict[str, object]] = {}

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data  # common case: parse the chunk in place, copy only its tail
        out: list[EventStreamMessage] = []
        hcache = self._hcache
        off = 0
        n = len(src)
        try:
            with memoryview(src) as mv:
                while n - off >= 12:
                    total, hlen, pcrc = _PRELUDE.unpack_from(src, off)
                    if zlib.crc32(mv[off : off + 8]) != pcrc:
                        raise EventStreamError(
                            f"prelude CRC mismatch at stream offset {self._base + off} (not an event stream?)"
                        )
                    if total < MIN_FRAME or total > MAX_FRAME:
                        raise EventStreamError(f"impossible frame length {total}")
                    if hlen > total - MIN_FRAME:
                        raise EventStreamError(f"headers length {hlen} exceeds frame length {total}")
                    end = off + total
                    if end > n:
                        break
                    (mcrc,) = _U32.unpack_from(src, end - 4)
                    if zlib.crc32(mv[off : end - 4]) != mcrc:
                        raise EventStreamError(f"message CRC mismatch in the frame at stream offset {self._base + off}")
                    hstart = off + 12
                    hend = hstart + hlen
                    hkey = bytes(mv[hstart:hend])
                    cached = hcache.get(hkey)
                    if cached is None:
                        cached = _decode_headers(src, hstart, hend)
                        if len(hcache) >= _HCACHE_MAX:
                            hcache.clear()
                        hcache[hkey] = cached
                    out.append(EventStreamMessage(cached.copy(), bytes(mv[hend : end - 4])))
                    off = end
        except EventStreamError as exc:
            self._error = exc
            self._buf = bytearray()
            if out:
                return out
            raise
        self._base += off
        if src is buf:
            if off:
                del buf[:off]
        elif off < n:
            self._buf = bytearray(src[off:])
        return out

    def close(self) -> None:
        """End of stream: raises if it stopped inside a frame (or failed earlier)."""
        if self._error is not None:
            raise self._error
        if self._buf:
            have = len(self._buf)
            need = _U32.unpack_from(self._buf, 0)[0] if have >= 4 else 12
            self._buf = bytearray()
            raise EventStreamError(f"stream truncated inside a frame ({have} of {need} bytes)")


def _decode_headers(src: bytes | bytearray, pos: int, end: int) -> dict[str, object]:
    headers: dict[str, object] = {}
    try:
        while pos < end:
            nlen = src[pos]
            name = src[pos + 1 : pos + 1 + nlen].decode("ascii")
            pos += 1 + nlen
            vtype = src[pos]
            pos += 1
            value: object
            if vtype == 7 or vtype == 6:
                (vlen,) = _U16.unpack_from(src, pos)
                raw = src[pos + 2 : pos + 2 + vlen]
                pos += 2 + vlen
                value = raw.decode("utf-8") if vtype == 7 else bytes(raw)
            elif vtype == 0 or vtype == 1:
                value = vtype == 0
            elif vtype in _FIXED:
                fmt = _FIXED[vtype]
                value = _INT_WRAP[vtype](fmt.unpack_from(src, pos)[0])
                pos += fmt.size
            elif vtype == 9:
                value = uuid.UUID(bytes=bytes(src[pos : pos + 16]))
                pos += 16
            else:
                raise EventStreamError(f"unknown header value type {vtype} for {name!r}")
            if pos > end:
                raise EventStreamError(f"header {name!r} overruns the header block")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, EventStreamError):
            raise
        raise EventStreamError(f"malformed headers: {exc}") from None
    return headers


def _encode_header(out: bytearray, name: str, value: HeaderValue) -> None:
    raw_name = name.encode("ascii")
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name length must be 1..255: {name!r}")
    out.append(len(raw_name))
    out += raw_name
    t = type(value)
    if t is bool:
        out.append(0 if value else 1)
    elif t is str or t is bytes or t is bytearray:
        raw = value.encode("utf-8") if t is str else bytes(value)  # type: ignore[union-attr, arg-type]
        if len(raw) > 0xFFFF:
            raise ValueError(f"header {name!r} value longer than 65535 bytes")
        out.append(7 if t is str else 6)
        out += _U16.pack(len(raw))
        out += raw
    elif isinstance(value, uuid.UUID):
        out.append(9)
        out += value.bytes
    elif isinstance(value, int):
        vtype = {Byte: 2, Short: 3, Long: 5, Timestamp: 8}.get(t, 4)  # type: ignore[call-overload]
        out.append(vtype)
        out += _FIXED[vtype].pack(value)
    else:
        raise TypeError(f"unsupported header value type {t.__name__} for {name!r}")


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One frame. Plain int = int32; use Byte/Short/Long/Timestamp for the other integer types."""
    hblock = bytearray()
    for name, value in headers.items():
        _encode_header(hblock, name, value)
    total = MIN_FRAME + len(hblock) + len(payload)
    if total > MAX_FRAME:
        raise ValueError(f"frame of {total} bytes exceeds {MAX_FRAME}")
    prelude = struct.pack("!II", total, len(hblock))
    body = prelude + _U32.pack(zlib.crc32(prelude)) + bytes(hblock) + payload
    return body + _U32.pack(zlib.crc32(body))
