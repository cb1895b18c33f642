"""Outbound proxies through real proxy processes on loopback: mitmdump in regular mode (an HTTP
CONNECT proxy that wants a password) and in socks5 mode. Each proxy's own log records what went
through it; per-account wins over per-provider wins over global."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY
from tests.drivers import ChatDriver
from tests.gateway import GatewayProcess, start_gateway

MITMDUMP = Path(sys.executable).parent / "mitmdump"
PROXY_PASSWORD = "pr0xy-s3cret-77"


@dataclass
class ProxyProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy(workdir: Path, mode: str, scheme: str, *extra: str) -> ProxyProcess:
    port = _free_port()
    log_path = workdir / f"{mode}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(MITMDUMP), "--mode", f"{mode}@{port}", "--listen-host", "127.0.0.1", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "listening at" in log_path.read_text(errors="replace"):
            return ProxyProcess(f"{scheme}://127.0.0.1:{port}", proc, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"proxy {mode} did not start:\n{log_path.read_text(errors='replace')}")


@dataclass
class Setup:
    gw: GatewayProcess
    http: ProxyProcess
    socks: ProxyProcess


@pytest.fixture(scope="module")
def setup(fakes, tmp_path_factory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("proxy")
    http_proxy = _start_proxy(workdir, "regular", "http", "--set", f"proxyauth=user:{PROXY_PASSWORD}")
    socks_proxy = _start_proxy(workdir, "socks5", "socks5")
    authed = http_proxy.url.replace("http://", f"http://user:{PROXY_PASSWORD}@")
    config = {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "proxy": socks_proxy.url,  # global: claude-custom has no other
        "providers": {
            "openai-custom": {  # the provider's proxy
                "base_url": f"{fakes.openai.url}/v1",
                "proxy": authed,
                "accounts": [{"label": "oa", "api_key": OPENAI_KEY}],
            },
            "claude-custom": {"base_url": fakes.claude.url, "accounts": [{"label": "cl", "api_key": CLAUDE_KEY}]},
            "openaiResponses-custom": {  # the account's proxy wins over the global one
                "base_url": f"{fakes.responses.url}/v1",
                "accounts": [{"label": "rs", "api_key": RESPONSES_KEY, "proxy": authed}],
            },
        },
    }
    gw = start_gateway(workdir / "gw", config)
    yield Setup(gw, http_proxy, socks_proxy)
    gw.stop()
    for p in (http_proxy, socks_proxy):
        p.proc.terminate()
        p.proc.wait(timeout=10)


def _seen(proxy: ProxyProcess, path: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path in proxy.log():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_each_upstream_call_goes_through_its_proxy(setup, fakes, stream):
    for provider in ("openai-custom", "claude-custom", "openaiResponses-custom"):
        assert ChatDriver(setup.gw.url, provider).text("hi there", stream) == "Hello! You said: hi there"
    assert _seen(setup.http, "/v1/chat/completions")  # provider's proxy
    assert _seen(setup.http, "/v1/responses")  # account's proxy
    assert _seen(setup.socks, "/v1/messages")  # global proxy
    assert "/v1/messages" not in setup.http.log()
    assert "/v1/responses" not in setup.socks.log() and "/v1/chat/completions" not in setup.socks.log()


def test_the_proxy_password_is_sent_but_never_logged(setup, fakes):
    ChatDriver(setup.gw.url, "openai-custom").text("hi there", True)
    assert "<< 407" not in setup.http.log()  # the proxy accepted the credentials (no 407 answer logged)
    assert PROXY_PASSWORD not in setup.gw.log()


def test_an_unreachable_proxy_is_a_502_naming_it_without_its_password(fakes, tmp_path):
    port = _free_port()  # nothing listens there
    config = {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": {
            "openai-custom": {
                "base_url": f"{fakes.openai.url}/v1",
                "proxy": f"http://user:{PROXY_PASSWORD}@127.0.0.1:{port}",
                "accounts": [{"label": "oa", "api_key": OPENAI_KEY}],
            }
        },
        "retry": {"max_attempts": 1},
        "cooldown": {"transient": 0},
    }
    gw = start_gateway(tmp_path, config)
    try:
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as e:
                ChatDriver(gw.url, "openai-custom").text("hi there", stream)
            assert e.value.status_code == 502
            assert f"via proxy http://127.0.0.1:{port}" in str(e.value)
            assert PROXY_PASSWORD not in str(e.value)
        assert PROXY_PASSWORD not in gw.log()
        assert not fakes.openai.requests
    finally:
        gw.stop()
