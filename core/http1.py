"""A small pooled HTTP/1.1 client (asyncio streams) for the upstream requests, unary and streamed.

Outbound proxies (`proxy:` in config): http:// and https:// proxies get an HTTP CONNECT tunnel
(TLS to the upstream then runs inside it; asyncio does TLS-in-TLS for https proxies), socks5://
and socks4:// go through python-socks. Idle connections are pooled per (upstream, proxy).

Why not httpx on this path: one httpx request costs more CPU than mitmproxy's whole request
(bench/README.md): its connection pool looks at every pooled connection on every request, and
its cookie jar, auth/redirect layers and trace logging run each time. An upstream call needs
none of it: one POST with a JSON body, keep-alive, TLS with the CA bundle httpx would use, no
redirects, no cookies.

Why not h11 either (it did this until issue 21): its state machine cost about 10% of the gateway's
CPU per JSON request and 12% per event of a stream (bench/README.md), for a client that sends one
kind of request. The codec here is that one request (header names and values checked: no CR, LF
or NUL can reach the wire) and a strict reader of the answer: status line, header fields (no
obs-fold, token names), Content-Length / chunked / close-delimited framing as RFC 9112 says,
1xx skipped, heads over 64 KB refused; tests/vectors/http1 holds its golden cases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import select
import ssl
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import certifi
from python_socks.async_.asyncio import Proxy as SocksProxy

MAX_BODY = 64 * 1024 * 1024
_READ = 65536


class HttpError(Exception):
    """The exchange failed before a whole response arrived; the class name says how."""


class ConnectError(HttpError):
    pass


class ConnectTimeout(HttpError):
    pass


class ReadTimeout(HttpError):
    pass


class RemoteProtocolError(HttpError):
    pass


class ProxyRefused(Exception):
    """The outbound proxy answered CONNECT with something other than 2xx."""


# (scheme, host, port, proxy URL or ""): connections through different proxies are never mixed.
_Key = tuple[str, str, int, str]


def _proxy_name(proxy: str) -> str:
    """scheme://host:port of a proxy URL: what messages may say (never its credentials)."""
    parts = urllib.parse.urlsplit(proxy)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _via(proxy: str) -> str:
    return f" via proxy {_proxy_name(proxy)}" if proxy else ""


@dataclass(slots=True)
class Response:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


class _Conn:
    __slots__ = ("busy", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.busy = False  # an exchange is under way (a pooled connection never is)

    def usable(self) -> bool:
        if self.reader.at_eof() or self.writer.is_closing() or self.busy:
            return False
        # The server may have closed it (FIN) before the event loop noticed: an idle connection with
        # anything to read is closed or broken, so it is not reused.
        sock = self.writer.get_extra_info("socket")
        try:
            return sock is None or not select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        self.writer.close()


def _tls_context() -> ssl.SSLContext:
    """The CA bundle httpx and mitmproxy verify against (certifi is a dependency of both)."""
    return ssl.create_default_context(cafile=certifi.where())


class Http1Client:
    def __init__(self, max_idle_per_host: int = 64, tls_context: ssl.SSLContext | None = None) -> None:
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[_Key, deque[_Conn]] = {}
        self._tls = tls_context

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        proxy: str | None = None,
    ) -> Response:
        key, request = _request(url, headers, body, proxy)
        # An idle connection the server closed is never taken (see _Conn.usable); a failure on a
        # taken one is a failure of this request (the caller fails over, as with any other).
        conn = self._take(key) or await self._connect(key, connect_timeout)
        try:
            head, rest = await self._head(conn, request, read_timeout)
            response, reusable = await self._rest(conn, head, rest, read_timeout)
        except BaseException:
            conn.close()
            raise
        self._give_back(key, conn, reusable)
        return response

    async def stream(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
        proxy: str | None = None,
    ) -> StreamResponse | Response:
        """POSTs and returns once the response head arrived: a 2xx as a StreamResponse whose body is
        read chunk by chunk, any other status whole (an error body is small, and read to classify it)."""
        key, request = _request(url, headers, body, proxy)
        conn = self._take(key) or await self._connect(key, connect_timeout)
        try:
            head, rest = await self._head(conn, request, read_timeout)
            if not 200 <= head.status_code < 300:
                response, reusable = await self._rest(conn, head, rest, read_timeout)
                self._give_back(key, conn, reusable)
                return response
        except BaseException:
            conn.close()
            raise
        return StreamResponse(head, rest, self, key, conn)

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    def _take(self, key: _Key) -> _Conn | None:
        pool = self._idle.get(key)
        while pool:
            conn = pool.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _give_back(self, key: _Key, conn: _Conn, reusable: bool) -> None:
        """Keeps a connection whose exchange ended cleanly for the next request, if there is room."""
        conn.busy = False
        pool = self._idle.setdefault(key, deque())
        if reusable and len(pool) < self.max_idle_per_host:
            pool.append(conn)
        else:
            conn.close()

    async def _connect(self, key: _Key, timeout: float) -> _Conn:
        scheme, host, port, proxy = key
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or _tls_context()
        try:
            async with asyncio.timeout(timeout):
                if proxy:
                    reader, writer = await self._through_proxy(proxy, host, port, tls)
                else:
                    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port}{_via(proxy)} took longer than {timeout:g} s") from None
        except ProxyRefused as e:
            raise ConnectError(f"{e}") from None
        except OSError as e:
            raise ConnectError(f"cannot connect to {host}:{port}{_via(proxy)}: {e.strerror or e}") from None
        except Exception as e:  # python-socks' own errors; their text never holds the credentials
            raise ConnectError(f"cannot connect to {host}:{port}{_via(proxy)}: {type(e).__name__}: {e}") from None
        return _Conn(reader, writer)

    async def _through_proxy(
        self, proxy: str, host: str, port: int, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urllib.parse.urlsplit(proxy)
        if parts.scheme in ("socks5", "socks5h", "socks4", "socks4a"):
            sock = await SocksProxy.from_url(proxy).connect(host, port)
            return await asyncio.open_connection(sock=sock, ssl=tls, server_hostname=host if tls else None)
        proxy_tls = None
        if parts.scheme == "https":
            proxy_tls = self._tls = self._tls or _tls_context()
        proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
        reader, writer = await asyncio.open_connection(parts.hostname, proxy_port, ssl=proxy_tls)
        try:
            lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
            if parts.username is not None:
                user = urllib.parse.unquote(parts.username)
                password = urllib.parse.unquote(parts.password or "")
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                lines.append(f"Proxy-Authorization: Basic {token}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
            fields = status_line.split(" ", 2)
            if len(fields) < 2 or not fields[1].startswith("2"):
                raise ProxyRefused(f"proxy {_proxy_name(proxy)} refused CONNECT {host}:{port}: {status_line[:120]}")
            if tls is not None:
                await writer.start_tls(tls, server_hostname=host)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _head(self, conn: _Conn, request: bytes, timeout: float) -> tuple[ResponseHead, bytes]:
        """Sends the request and reads up to the final response head: the head, and the bytes
        after it (the start of the body)."""
        conn.busy = True
        data = b""
        with _reading(timeout):
            conn.writer.write(request)
            await conn.writer.drain()
            while True:
                end = _HEAD_END.search(data)
                if end is not None:
                    head = parse_response_head(data[: end.start()])
                    data = data[end.end() :]
                    if head.status_code >= 200:
                        return head, data
                    continue  # 1xx: the final head follows
                if len(data) > MAX_HEAD:
                    raise RemoteProtocolError(f"response head larger than {MAX_HEAD} bytes")
                async with asyncio.timeout(timeout):
                    more = await conn.reader.read(_READ)
                if not more:
                    raise RemoteProtocolError("the server closed the connection before answering")
                data += more

    async def _rest(self, conn: _Conn, head: ResponseHead, data: bytes, timeout: float) -> tuple[Response, bool]:
        """Reads the body after `_head`, whole: the response, and whether the connection may be reused."""
        body = head.body()
        chunks: list[bytes] = []
        size = 0
        with _reading(timeout):
            while True:
                if data:
                    piece = body.feed(data)
                    size += len(piece)
                    if size > MAX_BODY:
                        raise RemoteProtocolError(f"response body larger than {MAX_BODY} bytes")
                    chunks.append(piece)
                if body.done:
                    response = Response(head.status_code, head.headers, b"".join(chunks))
                    return response, body.reusable and head.keep_alive
                async with asyncio.timeout(timeout):
                    data = await conn.reader.read(_READ)
                if not data:
                    if body.until_close:
                        return Response(head.status_code, head.headers, b"".join(chunks)), False
                    raise RemoteProtocolError("the server closed the connection before the end of the response")


@contextlib.contextmanager
def _reading(timeout: float) -> Iterator[None]:
    """What reading a whole answer can raise, as the errors callers handle (once per request)."""
    try:
        yield
    except TimeoutError:
        raise ReadTimeout(f"no data for {timeout:g} s") from None
    except ConnectionError as e:
        raise RemoteProtocolError(f"connection lost: {e}") from None
    except (BadResponseHead, BodyFraming) as e:
        raise RemoteProtocolError(f"malformed response: {e}") from None


# -- the wire format -------------------------------------------------------------------------------

MAX_HEAD = 64 * 1024
# The empty line that ends a head (CRLF, or a bare LF as h11 and browsers accept).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TOKEN_BYTES = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?:[ \t]([^\r\n]*))?")
# What may not appear in a header value we send (it would end the field or the head).
_UNSAFE_VALUE = re.compile(r"[\x00\r\n]")


class BadResponseHead(Exception):
    """The upstream's status line or header fields are not HTTP/1.1."""


@dataclass(slots=True)
class ResponseHead:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool  # HTTP/1.1 without `connection: close`
    chunked: bool
    length: int | None  # Content-Length; None: chunked or close-delimited

    def body(self) -> StreamedBody:
        """The body's decoder, framed as RFC 9112 section 6.3 says for the answer to a POST."""
        if self.status_code in (204, 304):
            return StreamedBody(False, 0)
        return StreamedBody(self.chunked, self.length)


def parse_response_head(block: bytes) -> ResponseHead:
    """A response head (status line and fields, without the empty line). Raises BadResponseHead."""
    lines = block.split(b"\n")
    status = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if status is None:
        raise BadResponseHead(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            raise BadResponseHead("obsolete line folding in a header field")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_BYTES.fullmatch(name):
            raise BadResponseHead(f"bad header line {line[:60]!r}")
        value = value.strip(b" \t")
        if b"\x00" in value or b"\r" in value:
            raise BadResponseHead(f"bad value of header {name[:40]!r}")
        k = name.decode("ascii").lower()
        v = value.decode("latin-1")
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    version, code = status.group(1), int(status.group(2))
    coding = headers.get("transfer-encoding")
    length: int | None = None
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise BadResponseHead(f"unsupported transfer-encoding {coding[:40]!r}")
    elif "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not (only := values.pop()).isdigit() or len(only) > 19:
            raise BadResponseHead(f"bad content-length {headers['content-length'][:40]!r}")
        length = int(only)
    connection = headers.get("connection", "").lower()
    keep_alive = version == b"1" and "close" not in {t.strip() for t in connection.split(",")}
    return ResponseHead(code, headers, keep_alive, coding is not None, length)


class BodyFraming(Exception):
    """The upstream's body framing is broken (a bad chunk-size line, a chunk not ended by CRLF).
    `partial` is the payload decoded before the break, in the same feed."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class StreamedBody:
    """Decodes a streamed response body as it arrives: chunked (RFC 9112 section 7.1), Content-Length
    or close-delimited.

    A few slices per read (see the module's docstring for why not h11); used for every body, read
    whole or streamed. `feed()` returns all the payload in the bytes given (one write downstream per
    read); `done` is set at the body's end, `reusable` when nothing followed it."""

    __slots__ = ("_buf", "_chunked", "_left", "_state", "done", "reusable", "until_close")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)
    _MAX_LINE = 4096  # a chunk-size line with its extensions, or one trailer field

    def __init__(self, chunked: bool, length: int | None) -> None:
        self._buf = b""
        self._chunked = chunked
        self.until_close = not chunked and length is None
        self._state = self._SIZE if chunked else self._DATA
        self._left = 0 if chunked else (length or 0)
        self.done = not chunked and length == 0
        self.reusable = self.done

    def feed(self, data: bytes) -> bytes:
        """The payload in `data`; raises BodyFraming when the framing is broken."""
        if self.until_close:
            return data
        if self.done:
            self.reusable = self.reusable and not data
            return b""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        try:
            self._decode(data, out)
        except BodyFraming as e:
            e.partial = b"".join(out)
            raise
        return out[0] if len(out) == 1 else b"".join(out)

    def _decode(self, data: bytes, out: list[bytes]) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                if not self._chunked:
                    self._finish(pos == end)
                    break
                self._state = self._DATA_END
            elif state == self._SIZE:
                eol = data.find(b"\r\n", pos, pos + self._MAX_LINE + 2)
                if eol < 0:
                    self._keep(data, pos)
                    break
                size = data[pos:eol].split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise BodyFraming(f"bad chunk-size line {data[pos:eol][:40]!r}")
                self._left = int(size, 16)
                pos = eol + 2
                self._state = self._DATA if self._left else self._TRAILER
            elif state == self._DATA_END:
                if end - pos < 2:
                    self._keep(data, pos)
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BodyFraming("a chunk is not followed by CRLF")
                pos += 2
                self._state = self._SIZE
            else:  # _TRAILER: trailer fields up to an empty line
                eol = data.find(b"\r\n", pos, pos + self._MAX_LINE + 2)
                if eol < 0:
                    self._keep(data, pos)
                    break
                empty = eol == pos
                pos = eol + 2
                if empty:
                    self._finish(pos == end)
                    break

    def _finish(self, clean: bool) -> None:
        self.done = True
        self.reusable = clean

    def _keep(self, data: bytes, pos: int) -> None:
        rest = data[pos:]
        if len(rest) > self._MAX_LINE + 2:
            raise BodyFraming("a chunk-size or trailer line is too long")
        self._buf = rest


class StreamResponse:
    """A 2xx answer whose body is still arriving. `read()` gives the next piece; close() when done
    (a connection whose body was read to its end goes back to the pool, any other is closed)."""

    __slots__ = (
        "_body",
        "_client",
        "_conn",
        "_deadline",
        "_error",
        "_expired",
        "_keep_alive",
        "_key",
        "_pending",
        "_reader_task",
        "_timer",
        "headers",
        "status_code",
    )

    def __init__(self, head: ResponseHead, rest: bytes, client: Http1Client, key: _Key, conn: _Conn) -> None:
        self.status_code = head.status_code
        self.headers = head.headers
        self._keep_alive = head.keep_alive
        self._client = client
        self._key = key
        self._conn: _Conn | None = conn
        self._error: HttpError | None = None
        # The read deadline (see _wait): one timer per stream, pushed back lazily.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reader_task: asyncio.Task | None = None
        self._expired = False
        # The body bytes that came with the head are decoded first.
        self._pending = rest
        self._body = head.body()

    def body_received(self) -> bool:
        """Whether body bytes came with the head (the next read returns without waiting for the network)."""
        return bool(self._pending)

    async def read(self, timeout: float) -> bytes:
        """The body bytes that arrived since the last call (everything received, joined: one write
        downstream per read instead of one per upstream chunk), b"" at the clean end. Waits only when
        nothing is buffered. Raises TimeoutError (plain, and harmless: the read may be retried) when
        nothing arrived for `timeout` s, RemoteProtocolError when the body was cut or malformed."""
        conn = self._conn
        if conn is None:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return b""
        body = self._body
        data = self._pending
        self._pending = b""
        try:
            while True:
                if data:
                    out = body.feed(data)
                    if body.done:
                        self._end(conn)
                        return out
                    if out:
                        return out
                elif body.done:
                    self._end(conn)
                    return b""
                data = await self._wait(conn.reader, timeout)
                if not data:
                    if body.until_close:
                        self.close()
                        return b""
                    raise RemoteProtocolError("the upstream closed the connection in the middle of the body")
        except ConnectionError as e:
            raise RemoteProtocolError(f"connection lost: {e}") from None
        except BodyFraming as e:
            error = RemoteProtocolError(f"malformed response: {e}")
            if not e.partial:
                raise error from None
            # What arrived before the break goes out first; the next read raises.
            self.close()
            self._error = error
            return e.partial

    async def _wait(self, reader: asyncio.StreamReader, timeout: float) -> bytes:
        """reader.read() with a deadline. Not `asyncio.timeout()`: that arms and cancels a timer on
        every read (about 5% of a paced stream's CPU, bench/README.md). Here one timer per stream
        fires at most once per `timeout` and is re-armed then if reads moved the deadline on; only a
        read still waiting at the deadline is cancelled (and that cancellation becomes TimeoutError)."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or deadline < timer.when():  # a shorter timeout than the armed one's
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        task = self._reader_task = asyncio.current_task()
        try:
            return await reader.read(_READ)
        except asyncio.CancelledError:
            if self._expired and task is not None:
                self._expired = False
                if task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._reader_task = None

    def _expire(self) -> None:
        self._timer = None
        task = self._reader_task
        if task is None:
            return  # no read waiting: the next read arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        self._expired = True
        task.cancel()

    def _end(self, conn: _Conn) -> None:
        """The body ended: the connection goes back to the pool if nothing followed the body and the
        exchange allows keep-alive, else it is closed."""
        self._conn = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._client._give_back(self._key, conn, self._body.reusable and self._keep_alive)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _request(url: str, headers: dict[str, str], body: bytes, proxy: str | None) -> tuple[_Key, bytes]:
    """The pool key and the whole POST as bytes. A header that could not be sent as it is (a name
    that is not a token, a CR, LF or NUL in a value, a character outside Latin-1) fails the request
    here, naming the header but never its value."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"unsupported URL {parts.scheme}://{parts.hostname or ''}")
    key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), proxy or "")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \t\r\n\x00"):
        raise ConnectError("the upstream URL's path has whitespace or control characters")
    lines = [f"POST {target} HTTP/1.1", f"host: {parts.netloc.rpartition('@')[2]}", f"content-length: {len(body)}"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length"):
            continue
        if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise ConnectError(f"header {name[:40]!r} cannot be sent to the upstream as it is")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ConnectError("a header of the upstream request is not Latin-1 text") from None
    return key, head + body
