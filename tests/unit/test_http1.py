"""The pooled HTTP/1.1 client of the unary upstream path, against real sockets on loopback (plain and TLS)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.http1 import ConnectError, Http1Client, ReadTimeout, RemoteProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


class Server:
    """A loopback server counting connections; `handler` answers each connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_connect(reader, writer):
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1/x?q=1"


async def keep_alive_echo(reader, writer):
    while True:
        head, body = await read_request(reader)
        assert head.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()


def run(coro):
    return asyncio.run(coro)


def test_keep_alive_reuses_one_connection():
    async def main():
        client = Http1Client()
        async with Server(keep_alive_echo) as srv:
            for i in range(5):
                r = await client.post(srv.url, {"x-k": "v"}, b'{"n":%d}' % i, connect_timeout=5, read_timeout=5)
                assert (r.status_code, r.content) == (200, b'{"n":%d}' % i)
                assert r.headers["content-type"] == "application/json"
            await client.aclose()
            return srv.connections

    assert run(main()) == 1


def test_chunked_answer_and_a_server_that_closes_idle_connections():
    async def one_chunked_answer(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        # then close: the pooled connection must not be reused for the next request

    async def main():
        client = Http1Client()
        async with Server(one_chunked_answer) as srv:
            first = await client.post(srv.url, {}, b"{}", connect_timeout=5, read_timeout=5)
            await asyncio.sleep(0.05)
            second = await client.post(srv.url, {}, b"{}", connect_timeout=5, read_timeout=5)
            await client.aclose()
            return first.content, second.content, srv.connections

    assert run(main()) == (b"abcde", b"abcde", 2)


def test_failures_are_named():
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(2)

    async def cut(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def main():
        client = Http1Client()
        async with Server(silent) as srv:
            with pytest.raises(ReadTimeout):
                await client.post(srv.url, {}, b"{}", connect_timeout=5, read_timeout=0.2)
        async with Server(cut) as srv:
            with pytest.raises(RemoteProtocolError):
                await client.post(srv.url, {}, b"{}", connect_timeout=5, read_timeout=5)
            url = srv.url
        with pytest.raises(ConnectError):
            await client.post(url, {}, b"{}", connect_timeout=5, read_timeout=5)
        with pytest.raises(ConnectError):
            await client.post("ftp://127.0.0.1/x", {}, b"{}", connect_timeout=5, read_timeout=5)
        await client.aclose()

    run(main())


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only that certificate) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiclient-mitm test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def test_tls_verifies_the_server_and_reuses_the_connection(tmp_path):
    server_ctx, client_ctx = self_signed(tmp_path)

    async def main():
        async with Server(keep_alive_echo, tls=server_ctx) as srv:
            trusting = Http1Client(tls_context=client_ctx)
            for _ in range(3):
                r = await trusting.post(srv.url, {}, b'{"tls":true}', connect_timeout=5, read_timeout=5)
                assert r.content == b'{"tls":true}'
            await trusting.aclose()
            # The default client trusts the public CA bundle only: a self-signed upstream is refused.
            default = Http1Client()
            with pytest.raises(ConnectError):
                await default.post(srv.url, {}, b"{}", connect_timeout=5, read_timeout=5)
            await default.aclose()
            return srv.connections

    # One connection for the three requests; the refused handshake never reaches the handler.
    assert run(main()) == 1


def test_stream_reads_piece_by_piece_then_pools_the_connection():
    gate = asyncio.Event()

    async def slow_chunks(reader, writer):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")
            await writer.drain()

    async def main():
        client = Http1Client()
        async with Server(slow_chunks) as server:
            r = await client.stream(server.url + "/s", {}, b"{}", connect_timeout=2, read_timeout=2)
            assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
            assert await r.read(1) == b"hello"
            with pytest.raises(TimeoutError):  # a silence shorter than read_timeout: resumable
                await r.read(0.05)
            gate.set()
            assert await r.read(1) == b" world"
            assert await r.read(1) == b""
            r.close()
            again = await client.stream(server.url + "/s", {}, b"{}", connect_timeout=2, read_timeout=2)
            # The gate is open: both chunks arrive together and come out of one read, joined.
            assert await again.read(1) == b"hello world"
            assert await again.read(1) == b""
            assert server.connections == 1  # the finished stream's connection was reused
            again.close()
        await client.aclose()

    run(main())


def test_stream_error_status_is_read_whole_and_a_cut_is_named():
    async def refuse_then_cut(reader, writer):
        await read_request(reader)
        body = b'{"error":{"message":"slow down"}}'
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()

    async def main():
        client = Http1Client()
        async with Server(refuse_then_cut) as server:
            r = await client.stream(server.url, {}, b"{}", connect_timeout=2, read_timeout=2)
            assert r.status_code == 429 and b"slow down" in r.content
            s = await client.stream(server.url, {}, b"{}", connect_timeout=2, read_timeout=2)
            assert await s.read(1) == b"abc"
            with pytest.raises(RemoteProtocolError):
                await s.read(1)
            s.close()
        await client.aclose()

    run(main())


def test_connect_tunnel_through_an_http_proxy_sends_its_credentials():
    seen: list[bytes] = []

    async def tunnel(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        host, _, port = head.split(b" ")[1].decode().partition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def main():
        client = Http1Client()
        async with Server(keep_alive_echo) as upstream, Server(tunnel) as proxy:
            proxy_url = proxy.url.replace("http://", "http://us%40er:p%3Ass@")
            for _ in range(2):
                r = await client.post(upstream.url, {}, b"ping", connect_timeout=2, read_timeout=2, proxy=proxy_url)
                assert r.status_code == 200
            assert proxy.connections == 1 and upstream.connections == 1  # pooled per (upstream, proxy)
            port = upstream.server.sockets[0].getsockname()[1]
            assert seen[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode())
            assert b"Proxy-Authorization: Basic dXNAZXI6cDpzcw==" in seen[0]  # us@er:p:ss
            with pytest.raises(ConnectError) as e:
                await client.post(
                    upstream.url, {}, b"", connect_timeout=1, read_timeout=1, proxy="http://u:pw@127.0.0.1:1"
                )
            assert "via proxy http://127.0.0.1:1" in str(e.value) and "pw" not in str(e.value)
        await client.aclose()

    run(main())


def test_stream_read_deadlines_hold_whatever_the_order_of_timeouts():
    """One lazy timer per stream (StreamResponse._wait): after a long read that got its data early
    (its timer still armed), a shorter read times out on its own deadline; then data still arrives."""
    gate = asyncio.Event()

    async def trickle(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"1\r\na\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"2\r\nok\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main():
        client = Http1Client()
        async with Server(trickle) as server:
            r = await client.stream(server.url + "/s", {}, b"{}", connect_timeout=2, read_timeout=2)
            loop = asyncio.get_running_loop()
            assert await r.read(1.5) == b"a"  # arrives after 0.05 s: the 1.5 s timer stays armed
            for timeout in (0.1, 0.3):
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await r.read(timeout)
                took = loop.time() - started
                assert timeout - 0.01 <= took < timeout + 0.25, (timeout, took)
            loop.call_later(0.1, gate.set)
            assert await r.read(1) == b"ok"
            assert await r.read(1) == b""
            r.close()
        await client.aclose()

    run(main())
