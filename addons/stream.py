"""Streams the gateway relays itself.

mitmproxy cannot stream a response an addon makes, cannot answer a reset-before-headers in the
caller's dialect, cannot append an in-band error after an upstream cut and has no per-stream read
timeout. So the Upstream addon opens the upstream stream with its own client (core/http1.py), fails
over while no byte went out, and then re-targets the flow to `LoopbackRelay`: a small HTTP/1.1
server inside the gateway process on 127.0.0.1, which pumps the upstream body through the stream
translation and writes the client's stream back (chunked) for mitmproxy to relay as it comes
(`flow.response.stream` is a ChunkCounter). Once mitmproxy has written the head and what went through
it, the rest of the body goes straight to the client's socket (DirectClient: the hop through
mitmproxy cost more per event than bare mitmdump spends relaying an upstream); the end of the body
always goes through mitmproxy. Everything after the first byte is decided here: a cut, a reset, a
read timeout end the client's stream with its dialect's error event and a clean end of the body,
and silences get the dialect's keep-alive.

The per-chunk work only handles the new bytes, never raises, and never writes an empty chunk
(that would end the chunked body).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import ctx, http

from core.http1 import HttpError, StreamResponse
from translators import errors
from translators.accumulate import ResponseAccumulator
from translators.base import StreamDecoder, StreamEncoder
from translators.ir import Event, StreamError, TextDelta, ThinkingDelta, ToolCallStart
from translators.sse import SseEventRelay

logger = logging.getLogger(__name__)

_TOKEN_EVENTS = (TextDelta, ThinkingDelta, ToolCallStart)
# The header that names the relay job on the loopback request; only mitmproxy sends it.
RELAY_HEADER = "x-aiclient-relay"
# A job mitmproxy never came to fetch (the client left first) is dropped after this many seconds.
_UNCLAIMED_TTL = 60.0
# In-band errors are 502s: the upstream failed, not the caller.
_UPSTREAM_FAILED = 502


class _Observer:
    """Shared by both translators: feeds decoded events to the collector and logs upstream errors."""

    __slots__ = (
        "bytes_out",
        "collector",
        "cut",
        "dialect",
        "events_seen",
        "finished",
        "first_token_at",
        "gemini_json",
        "label",
        "tap",
        "tap_limit",
        "tap_upstream",
        "upstream_error",
    )

    def __init__(self, collector: ResponseAccumulator | None, label: str, dialect: str, gemini_json: bool) -> None:
        self.collector = collector
        self.label = label
        self.dialect = dialect  # the client's
        self.gemini_json = gemini_json
        self.events_seen = 0
        self.bytes_out = 0
        self.finished = False
        # Why the stream was ended by the gateway after bytes went out (cut, read timeout); None if not.
        self.cut: str | None = None
        # An error the upstream sent in the stream (in-band), once seen.
        self.upstream_error: StreamError | None = None
        # time.time() of the first text, thinking or tool-call event (time to first token).
        self.first_token_at: float | None = None
        # Set by an observer (the Inspect addon) to keep a copy of the client's bytes, up to tap_limit.
        self.tap: bytearray | None = None
        self.tap_limit = 0
        # The same for the upstream's bytes as they arrived (the inspector's "Upstream" view).
        self.tap_upstream: bytearray | None = None

    def observe(self, events: list[Event]) -> None:
        if not events:
            return
        if self.first_token_at is None and any(type(ev) in _TOKEN_EVENTS for ev in events):
            self.first_token_at = time.time()
        self.events_seen += len(events)
        if self.collector is not None:
            self.collector.feed(events)
        for ev in events:
            if type(ev) is StreamError and self.upstream_error is None:
                self.upstream_error = ev
                logger.warning("aiclient-mitm: upstream stream error (%s): %s", self.label, ev.message)

    def received(self, data: bytes) -> None:
        tap = self.tap_upstream
        if tap is not None and data and len(tap) < self.tap_limit:
            tap += data[: self.tap_limit - len(tap)]

    def emitted(self, out: bytes) -> None:
        self.bytes_out += len(out)
        tap = self.tap
        if tap is not None and out and len(tap) < self.tap_limit:
            tap += out[: self.tap_limit - len(tap)]

    def _sdk_error_tail(self, before: StreamError | None) -> bytes:
        """Responses clients: `response.failed` alone is yielded by the openai SDK, not raised; the
        `error` event after it makes the SDK raise. Once, when the upstream's error is first seen."""
        error = self.upstream_error
        if error is None or before is not None or self.dialect != "openai_responses":
            return b""
        return errors.responses_error_event(error.status if 400 <= error.status <= 599 else 502, error.message)

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        raise NotImplementedError

    def fail(self, message: str) -> bytes:
        raise NotImplementedError


class StreamTranscoder(_Observer):
    """Cross-dialect: upstream bytes -> IR events -> client dialect bytes."""

    __slots__ = ("decoder", "encoder")

    def __init__(
        self,
        decoder: StreamDecoder,
        encoder: StreamEncoder,
        collector: ResponseAccumulator | None,
        label: str,
        dialect: str = "",
        gemini_json: bool = False,
    ) -> None:
        super().__init__(collector, label, dialect, gemini_json)
        self.decoder = decoder
        self.encoder = encoder

    def feed(self, data: bytes) -> bytes:
        if self.finished:
            return b""
        if self.tap_upstream is not None:
            self.received(data)
        before = self.upstream_error
        try:
            events = self.decoder.feed(data)
            self.observe(events)
            out = self.encoder.feed(events) if events else b""
            if self.upstream_error is not before:
                out += self._sdk_error_tail(before)
        except Exception as e:  # the stream must end cleanly whatever happened
            logger.exception("aiclient-mitm: stream translation failed (%s)", self.label)
            return self.fail(f"the gateway failed to translate the upstream stream: {type(e).__name__}")
        self.emitted(out)
        return out

    def close(self) -> bytes:
        if self.finished:
            return b""
        before = self.upstream_error
        try:
            events = self.decoder.close()
            self.observe(events)
            out = self.encoder.feed(events) + self.encoder.close() + self._sdk_error_tail(before)
        except Exception as e:
            logger.exception("aiclient-mitm: stream translation failed (%s)", self.label)
            return self.fail(f"the gateway failed to translate the upstream stream: {type(e).__name__}")
        self.finished = True
        self.emitted(out)
        return out

    def fail(self, message: str) -> bytes:
        """Ends the client's stream with its dialect's error event (after bytes went out)."""
        if self.finished:
            return b""
        self.finished = True
        self.cut = message
        error = StreamError(message, _UPSTREAM_FAILED)
        try:
            out = self.encoder.feed([error]) + self.encoder.close()
        except Exception:
            logger.exception("aiclient-mitm: encoder failed while ending the stream (%s)", self.label)
            out = errors.stream_error_frame(self.dialect, _UPSTREAM_FAILED, message, gemini_json=self.gemini_json)
        if self.dialect == "openai_responses":
            out += errors.responses_error_event(_UPSTREAM_FAILED, message)
        self.emitted(out)
        return out


class StreamRelay(_Observer):
    """Same dialect: the upstream's SSE events go out as they are (minus empty data frames);
    the decoder only observes them, and a decoder failure stops the observing, not the stream."""

    __slots__ = ("decoder", "relay")

    def __init__(
        self,
        decoder: StreamDecoder,
        collector: ResponseAccumulator | None,
        label: str,
        dialect: str = "",
        gemini_json: bool = False,
    ) -> None:
        super().__init__(collector, label, dialect, gemini_json)
        self.decoder: StreamDecoder | None = decoder
        self.relay = SseEventRelay()

    def feed(self, data: bytes) -> bytes:
        if self.finished:
            return b""
        if self.tap_upstream is not None:
            self.received(data)
        try:
            out = self.relay.feed(data)
        except Exception:
            logger.exception("aiclient-mitm: stream relay failed (%s)", self.label)
            return self.fail("the gateway failed to relay the upstream stream")
        before = self.upstream_error
        self._watch(data)
        if self.upstream_error is not before:
            out += self._sdk_error_tail(before)
        self.emitted(out)
        return out

    def close(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        try:
            out = self.relay.close()
        except Exception:
            logger.exception("aiclient-mitm: stream relay failed (%s)", self.label)
            out = b""
        before = self.upstream_error
        self._watch(b"")
        error = self.upstream_error
        if before is None and error is not None and self.dialect != "openai_responses":
            # Only at its end did the decoder find the stream unfinished (cut short, or not the
            # stream its content type claims): the client gets the in-band error, not a clean end.
            # (Responses clients get theirs from _sdk_error_tail.)
            out += errors.stream_error_frame(
                self.dialect, _UPSTREAM_FAILED, error.message, gemini_json=self.gemini_json
            )
        out += self._sdk_error_tail(before)
        self.emitted(out)
        return out

    def fail(self, message: str) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        self.cut = message
        # A partial event held back by the relay is dropped: the client only ever gets whole events.
        out = errors.stream_error_frame(self.dialect, _UPSTREAM_FAILED, message, gemini_json=self.gemini_json)
        self.emitted(out)
        return out

    def _watch(self, data: bytes) -> None:
        if self.decoder is None:
            return
        try:
            self.observe(self.decoder.feed(data) if data else self.decoder.close())
        except Exception:
            logger.exception("aiclient-mitm: could not decode the relayed stream (%s)", self.label)
            self.decoder = None


# -- the loopback relay --------------------------------------------------------------------------


class ChunkCounter:
    """mitmproxy's stream callable for a relayed flow: passes every chunk on unchanged and counts
    its bytes, so the relay knows when all it sent through mitmproxy has been written to the client."""

    __slots__ = ("passed",)

    def __init__(self) -> None:
        self.passed = 0

    def __call__(self, data: bytes) -> bytes:
        self.passed += len(data)
        return data


@dataclass(slots=True, eq=False)
class DirectClient:
    """The client's connection, for writing the rest of a relayed stream's body to it directly.

    Through mitmproxy every chunk costs a loopback write and read, an HTTP/1 parse and a pass
    through its layers and stream callable: more CPU per event than mitmproxy spends relaying an
    upstream itself (bench/README.md). mitmproxy's HTTP/1 server frames a chunked body as
    `%x CRLF data CRLF` (proxy/layers/http/_http1.py), so once the head and every chunk sent through
    mitmproxy have reached the client's socket, the relay writes the same bytes itself; the end of
    the body still goes through mitmproxy, so it finishes the flow (response hook, keep-alive) as
    usual. Only for a plain-text HTTP/1.1 client connection with a chunked response: anything else
    (TLS or HTTP/2 to the client, `store_streamed_bodies`) keeps every chunk on the loopback path.
    """

    writer: asyncio.StreamWriter
    counter: ChunkCounter
    # mitmproxy closes a client connection that saw no event for `tcp_timeout` seconds (ClientLimits
    # sets it from limits.*), and bytes written here are no event to it: a chunk goes through
    # mitmproxy at least this often (a third of tcp_timeout), so a long healthy stream stays open.
    loopback_every: float


def client_writer(flow: http.HTTPFlow) -> asyncio.StreamWriter | None:
    """The asyncio writer of the flow's client connection, when writing a chunked body to it is
    byte-for-byte what mitmproxy would do (see DirectClient); None otherwise. Reads mitmproxy's
    Proxyserver connection table (12.3.1), so any change there falls back to the loopback path."""
    response = flow.response
    client = flow.client_conn
    if (
        response is None
        or flow.request.http_version != "HTTP/1.1"
        or response.http_version != "HTTP/1.1"
        or flow.request.method == "HEAD"
        or "chunked" not in response.headers.get("transfer-encoding", "").lower()
        or client.tls
        or client.tls_established
        or ctx.options.store_streamed_bodies
    ):
        return None
    server = ctx.master.addons.get("proxyserver")
    handler = getattr(server, "connections", {}).get(client.id)
    transports = getattr(handler, "transports", None)
    if not isinstance(transports, dict) or getattr(handler, "client", None) is not client:
        return None
    writer = getattr(transports.get(client), "writer", None)
    if not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
        return None
    return writer


@dataclass(slots=True, eq=False)
class RelayJob:
    """One opened upstream stream waiting for mitmproxy to fetch it from the loopback relay."""

    upstream: StreamResponse
    transcoder: StreamTranscoder | StreamRelay
    # Response head fields for the client (content-type, cache-control, CORS).
    headers: dict[str, str]
    read_timeout: float
    keepalive: float  # seconds of upstream silence between keep-alives; 0 = none
    keepalive_bytes: bytes
    # Called once when the stream is over: None when it ended cleanly, else why the gateway ended it.
    on_end: Callable[[str | None, bool], None]
    expiry: asyncio.TimerHandle | None = None
    ended: bool = False
    # Set when mitmproxy reported the client gone while the stream was being pumped.
    client_gone: bool = False
    # The client's own connection, once mitmproxy has sent the response head (see DirectClient).
    client: DirectClient | None = None
    # Body bytes written to mitmproxy over the loopback connection, and when it last got some.
    loopback_bytes: int = 0
    loopback_at: float = 0.0
    # Body bytes written straight to the client's connection.
    direct_bytes: int = 0

    def end(self, reason: str | None, client_gone: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        if self.expiry is not None:
            self.expiry.cancel()
        self.upstream.close()
        try:
            self.on_end(reason, client_gone)
        except Exception:
            logger.exception("aiclient-mitm: stream end bookkeeping failed")


class LoopbackRelay:
    """The in-process HTTP/1.1 server on 127.0.0.1 that serves opened upstream streams to mitmproxy.
    A job is served once, to the request that carries its one-time token; nothing else is answered."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._jobs: dict[str, RelayJob] = {}  # registered, not fetched yet
        self._active: dict[str, RelayJob] = {}  # being pumped
        self.port = 0

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20, backlog=4096)
            self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for job in [*self._jobs.values(), *self._active.values()]:
            job.end("the gateway is shutting down")
        self._jobs.clear()
        self._active.clear()
        if self._server is not None:
            self._server.close()
            self._server = None

    def register(self, job: RelayJob) -> str:
        token = secrets.token_urlsafe(18)
        self._jobs[token] = job
        job.expiry = asyncio.get_running_loop().call_later(_UNCLAIMED_TTL, self.drop, token)
        return token

    def drop(self, token: str) -> None:
        """The flow failed (the client left): a job nobody fetched is closed and accounted for; a job
        being pumped stops waiting for its upstream at once instead of at its next write."""
        job = self._jobs.pop(token, None)
        if job is not None:
            job.end("the client left before the stream started", client_gone=True)
            return
        job = self._active.get(token)
        if job is not None:
            job.client_gone = True
            job.upstream.close()

    def attach_client(self, token: str, writer: asyncio.StreamWriter | None, tcp_timeout: float) -> ChunkCounter:
        """mitmproxy is about to send the head of the job's response (responseheaders): the stream
        callable it should use, and the client's writer the relay may take over (None: it may not)."""
        counter = ChunkCounter()
        job = self._active.get(token) or self._jobs.get(token)
        if job is not None and writer is not None:
            job.client = DirectClient(writer, counter, loopback_every=max(0.1, tcp_timeout / 3))
        return counter

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                token, length = _parse_head(head)
                if length:
                    await reader.readexactly(length)
                job = self._jobs.pop(token, None) if token else None
                if job is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    await writer.drain()
                    return
                self._active[token] = job
                try:
                    clean = await self._pump(job, writer)
                finally:
                    self._active.pop(token, None)
                if not clean:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _pump(self, job: RelayJob, writer: asyncio.StreamWriter) -> bool:
        """Writes the job's client stream; True when the response ended cleanly (connection reusable)."""
        if job.expiry is not None:
            job.expiry.cancel()
        transcoder = job.transcoder
        upstream = job.upstream
        loop = asyncio.get_running_loop()
        fields = "".join(f"{k}: {v}\r\n" for k, v in job.headers.items())
        head = f"HTTP/1.1 200 OK\r\n{fields}transfer-encoding: chunked\r\n\r\n".encode("latin-1")
        read_timeout = job.read_timeout
        keepalive = job.keepalive if 0 < job.keepalive < read_timeout else read_timeout
        last = loop.time()
        reason: str | None = None
        try:
            if not upstream.body_received():
                # Nothing to send with the head yet: it goes out now. Otherwise it goes out with the
                # first events, in one write (mitmproxy then reads both at once: a loop turn less
                # before the client's first event).
                writer.write(head)
                head = b""
                await writer.drain()
            while True:
                try:
                    data = await upstream.read(min(keepalive, max(0.001, last + read_timeout - loop.time())))
                except TimeoutError:
                    if loop.time() - last >= read_timeout - 0.001:
                        reason = f"the upstream sent nothing for {read_timeout:g} s (read_timeout)"
                        out = transcoder.fail(reason)
                        break
                    if head:
                        writer.write(head)
                        head = b""
                    await _send(job, writer, job.keepalive_bytes, loop.time())
                    continue
                except HttpError as e:
                    reason = f"the upstream stream broke: {e}"
                    out = transcoder.fail(reason)
                    break
                if not data:
                    out = transcoder.close()
                    break
                last = loop.time()
                out = transcoder.feed(data)
                if head:
                    job.loopback_bytes += len(out)
                    job.loopback_at = last
                    writer.write(head + (_chunk(out) if out else b""))
                    head = b""
                    await writer.drain()
                elif out:
                    await _send(job, writer, out, last)
            # The last bytes and the end of the body go through mitmproxy in one write: it ends the
            # flow (and keeps the connection) before a client that stops reading at the last event
            # (an SDK raising on the error event) can close its side.
            job.loopback_bytes += len(out)
            writer.write(head + (_chunk(out) if out else b"") + b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, RuntimeError):
            # mitmproxy closed the loopback connection: the client went away.
            job.end("the client went away", client_gone=True)
            return False
        except BaseException:
            job.end("the gateway stopped relaying the stream")
            raise
        if job.direct_bytes:
            logger.debug(
                "aiclient-mitm: stream relayed, %d body bytes through mitmproxy, %d straight to the client",
                job.loopback_bytes,
                job.direct_bytes,
            )
        job.end(reason, client_gone=job.client_gone)
        return not job.client_gone


async def _send(job: RelayJob, loopback: asyncio.StreamWriter, data: bytes, now: float) -> None:
    """One chunk of the client's body: straight to the client once everything sent through mitmproxy
    has reached it (DirectClient), else through mitmproxy. Never reorders: a direct write only follows
    loopback bytes mitmproxy has already written to the client's socket."""
    client = job.client
    # passed > 0 also proves mitmproxy sent the head: it calls the counter only once it has.
    if (
        client is not None
        and 0 < client.counter.passed == job.loopback_bytes
        and now - job.loopback_at < client.loopback_every
    ):
        writer = client.writer
        if writer.is_closing():
            raise ConnectionResetError("the client's connection is closed")
        writer.write(_chunk(data))
        job.direct_bytes += len(data)
        if writer.transport.get_write_buffer_size():  # the socket took less than all: wait for it
            await writer.drain()
        return
    job.loopback_bytes += len(data)
    job.loopback_at = now
    loopback.write(_chunk(data))
    await loopback.drain()


def _chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing, byte for byte as mitmproxy's HTTP/1 server writes it."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _parse_head(head: bytes) -> tuple[str | None, int]:
    token: str | None = None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == RELAY_HEADER.encode():
            token = value.strip().decode("ascii", "replace")
    return token, length
