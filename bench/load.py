"""The bench's load generator: asyncio + raw sockets, HTTP/1.1 keep-alive, precomputed requests.

Runs in its own process (pinned away from the proxy under test) and takes jobs as JSON lines on
stdin, answering each with one JSON line on stdout, so the orchestrator can read the proxy's CPU
counters right before and after a job. Every loop is bounded: by the job's duration, by
`max_requests`, and by a per-request timeout.

Job: {"host", "port", "request" (latin-1 text of the raw request bytes), "concurrency",
"duration" (s), "max_requests", "timeout" (s), "once" (each connection sends one request),
"ramp" (s over which connections are opened), "stagger" (s over which the connections' first
requests are spread; each connection then runs for `duration`), "notify_first" (print a progress line when every
connection has received its first body bytes)}.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Outcome:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, request sent -> last byte
    ttfb: list[float] = field(default_factory=list)  # seconds, request sent -> first body bytes
    body_bytes: int = 0
    connects: int = 0  # TCP connections opened (more than `concurrency`: the server closed some)
    first_error: str = ""


class _Response(asyncio.Protocol):
    """Reads responses of one keep-alive connection (content-length or chunked)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, float, bytes]] | None = None
        self.closed = False
        # Called once, at the first body bytes of the first response (the 1,000-streams run).
        self.on_first: Callable[[], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head_done = False
        self.length: int | None = None
        self.chunked = False
        self.until_eof = False
        self.t_first = 0.0
        self.body_len = 0
        self.sample = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_eof and self.head_done and exc is None:
            # A body without length or chunking ends with the connection (the server closes it).
            self.body_len = len(self.buf)
            self.sample = bytes(self.buf[:300])
            self.buf.clear()
            self._done()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed ({exc})"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, float, bytes]]:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except Exception as e:  # a broken response ends this request as an error
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(e)

    def _first(self) -> None:
        if not self.t_first:
            self.t_first = time.perf_counter()
            if self.on_first is not None:
                self.on_first()
                self.on_first = None

    def _parse(self) -> None:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.status = int(head[9:12])
            self.head_done = True
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self.length = int(head[i + 17 : j if j >= 0 else len(head)])
            self.chunked = b"transfer-encoding: chunked" in head
            self.until_eof = not self.chunked and self.length is None and self.status not in (204, 304)
        if self.until_eof:
            if buf:
                self._first()
            return
        if self.chunked:
            while True:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(buf[:nl]).split(b";")[0], 16)
                if size == 0:
                    if len(buf) < nl + 4:
                        return
                    del buf[: nl + 4]
                    return self._done()
                if len(buf) < nl + 2 + size + 2:
                    return
                self._first()
                if len(self.sample) < 300:
                    self.sample += bytes(buf[nl + 2 : nl + 2 + min(size, 300)])
                self.body_len += size
                del buf[: nl + 2 + size + 2]
        length = self.length or 0
        if buf and length:
            self._first()
        if len(buf) >= length:
            self.body_len = length
            self.sample = bytes(buf[: min(length, 300)])
            del buf[:length]
            self._done()

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.t_first, self.sample))


async def _connection(
    job: dict, out: Outcome, stop_at: float, budget: list[int], on_first: Callable[[], None], start_delay: float
) -> None:
    loop = asyncio.get_running_loop()
    request = job["request"].encode("latin-1")
    timeout = float(job.get("timeout", 30.0))
    once = bool(job.get("once"))
    proto: _Response | None = None
    first_pending = bool(job.get("notify_first"))
    if start_delay:
        await asyncio.sleep(start_delay)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            if proto is None or proto.closed:
                try:
                    out.connects += 1
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(_Response, job["host"], job["port"]), timeout
                    )
                except (OSError, TimeoutError) as e:
                    out.errors += 1
                    out.first_error = out.first_error or f"connect: {e!r}"
                    if first_pending:
                        on_first()  # this one will never see a first event: stop waiting for it
                        first_pending = False
                    await asyncio.sleep(0.05)
                    continue
                if first_pending:
                    proto.on_first = on_first
                    first_pending = False
            t0 = time.perf_counter()
            try:
                status, t_first, sample = await asyncio.wait_for(proto.send(request), timeout)
            except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                out.errors += 1
                out.first_error = out.first_error or f"request: {e!r}"
                if proto.transport is not None:
                    proto.transport.close()
                proto = None
                continue
            t1 = time.perf_counter()
            if status != 200:
                out.errors += 1
                out.first_error = out.first_error or f"status {status}: {sample[:300]!r}"
            else:
                out.ok += 1
                out.latencies.append(t1 - t0)
                out.ttfb.append((t_first or t1) - t0)
                out.body_bytes += proto.body_len
            if once:
                break
    finally:
        if proto is not None and proto.on_first is not None:
            proto.on_first()  # never got a first byte: stop waiting for this one
            proto.on_first = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


async def run_job(job: dict) -> dict:
    out = Outcome()
    conc = int(job["concurrency"])
    t_start = time.perf_counter()
    stop_at = t_start + float(job["duration"])
    budget = [int(job.get("max_requests", 1_000_000))]
    first_seen = asyncio.Event()
    pending_first = [conc]

    def on_first() -> None:
        pending_first[0] -= 1
        if pending_first[0] <= 0:
            first_seen.set()

    ramp = float(job.get("ramp", 0.0))
    tasks = []
    # Paced streams: spread the connections' first requests over one stream's length, so streams
    # start at a steady rate instead of all at once (TTFE would measure that burst otherwise).
    stagger = float(job.get("stagger", 0.0))
    for i in range(conc):
        delay = stagger * i / conc
        tasks.append(asyncio.create_task(_connection(job, out, stop_at + delay, budget, on_first, delay)))
        if ramp and i % 50 == 49:
            await asyncio.sleep(ramp * 50 / conc)
    if job.get("notify_first"):
        try:
            await asyncio.wait_for(first_seen.wait(), float(job.get("timeout", 30.0)))
            _emit({"progress": "first_events", "elapsed": time.perf_counter() - t_start, "waiting": pending_first[0]})
        except TimeoutError:
            _emit({"progress": "first_events_timeout", "waiting": pending_first[0]})
    hard = float(job["duration"]) + stagger + float(job.get("timeout", 30.0)) + 5.0
    _, not_done = await asyncio.wait(tasks, timeout=hard)
    for t in not_done:
        t.cancel()
    elapsed = time.perf_counter() - t_start
    return {
        "ok": out.ok,
        "errors": out.errors,
        "first_error": out.first_error,
        "elapsed": elapsed,
        "rps": out.ok / elapsed if elapsed else 0.0,
        "p50_ms": _pct(out.latencies, 50) * 1000,
        "p99_ms": _pct(out.latencies, 99) * 1000,
        "ttfb_p50_ms": _pct(out.ttfb, 50) * 1000,
        "ttfb_p99_ms": _pct(out.ttfb, 99) * 1000,
        "body_bytes": out.body_bytes,
        "connects": out.connects,
    }


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        job = json.loads(line)
        if job.get("quit"):
            return
        _emit({"result": await run_job(job)})


def main() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpus = os.environ.get("BENCH_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    asyncio.run(_main())


if __name__ == "__main__":
    main()
