"""Start-up as a user does it: `mitmdump -s run.py` / `mitmweb -s run.py` with no listener flag.

mitmproxy 12 ignores a mode set by a script and would open its forward proxy on *:8080; run.py
re-executes it with the configured listener before anything listens (core/launch.py). These tests
watch the process's listening sockets from its start (the pid survives the exec) and assert that
only the configured address ever listened.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.gateway import REPO

BIN = Path(sys.executable).parent
KEY = "startup-client-key-1234"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, read from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr_hex, port_hex = cols[1].split(":")
                if table == "tcp":
                    addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
                else:
                    raw = bytes.fromhex(addr_hex)
                    addr = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
                found.add((addr, int(port_hex, 16)))
    return found


def start(
    argv: list[str], workdir: Path, until_port: int, timeout: float = 90, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, set]:
    """Starts the command and records every listening socket it ever had until `until_port` answers."""
    log = open(workdir / "out.log", "wb")  # closed with the process
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AICLIENT_")} | (env or {})
    proc = subprocess.Popen(
        argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env
    )
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen |= listening(proc.pid)
        if proc.poll() is not None:
            break
        if ("127.0.0.1", until_port) in seen:
            try:
                r = httpx2.get(f"http://127.0.0.1:{until_port}/health", timeout=2)
                if r.status_code == 200:
                    seen |= listening(proc.pid)
                    return proc, seen
            except httpx2.HTTPError:
                pass
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"did not come up on {until_port}: {(workdir / 'out.log').read_text()}")


RELAY = re.compile(r"internal stream relay on 127\.0\.0\.1:(\d+)")


def relay_port(workdir: Path) -> int:
    """The in-process stream relay's loopback port (addons/stream.py LoopbackRelay), as logged."""
    deadline = time.monotonic() + 30
    while not (m := RELAY.search((workdir / "out.log").read_text(errors="replace"))):
        assert time.monotonic() < deadline, "the stream relay's port was not logged"
        time.sleep(0.05)
    return int(m.group(1))


def assert_relay_serves_nothing_without_a_token(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 404 ")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions?t=guess HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 404 ")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": port}, "api_keys": [KEY]}))
    return path, port


def test_mitmdump_listens_only_on_the_configured_address(tmp_path, config):
    path, port = config
    proc, seen = start([str(BIN / "mitmdump"), "-s", str(REPO / "run.py"), "--set", f"config={path}"], tmp_path, port)
    try:
        relay = relay_port(tmp_path)
        # The configured listener, and the loopback stream relay that serves only its own tokens.
        assert seen | listening(proc.pid) == {("127.0.0.1", port), ("127.0.0.1", relay)}
        assert_relay_serves_nothing_without_a_token(relay)
        # Not a forward proxy: an absolute-form request for another host is not relayed anywhere.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 4"), head
        log = (tmp_path / "out.log").read_text()
        assert f"aiclient-mitm listening on http://127.0.0.1:{port}" in log
        assert "*:8080" not in log and "HTTP(S) proxy listening" not in log
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("setting", "loop"),
    [(None, "uvloop.Loop"), ("asyncio", "asyncio._UnixSelectorEventLoop")],
    ids=["default", "asyncio"],
)
def test_the_gateway_runs_on_uvloop_unless_told_otherwise(tmp_path, config, setting, loop):
    """The re-exec that sets the listener also picks the event loop (core/launch.py); the same
    command line, answering the same way on either."""
    path, port = config
    env = {"AICLIENT_MITM_EVENT_LOOP": setting} if setting else None
    argv = [str(BIN / "mitmdump"), "-s", str(REPO / "run.py"), "--set", f"config={path}"]
    proc, _ = start(argv, tmp_path, port, env=env)
    try:
        assert (
            f"aiclient-mitm listening on http://127.0.0.1:{port} (event loop: {loop})"
            in (tmp_path / "out.log").read_text()
        )
        r = httpx2.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=10,
        )
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    finally:
        stop(proc)


def test_mitmweb_listens_on_the_configured_address_and_its_inspector(tmp_path, config):
    path, port = config
    web = free_port()
    argv = [str(BIN / "mitmweb"), "-s", str(REPO / "run.py"), "--set", f"config={path}"]
    argv += ["--set", "web_open_browser=false", "--set", f"web_port={web}", "--set", "web_password=inspect-token"]
    proc, seen = start(argv, tmp_path, port)
    try:
        deadline = time.monotonic() + 60
        while ("127.0.0.1", web) not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen |= listening(proc.pid)
        assert seen == {("127.0.0.1", port), ("127.0.0.1", web), ("127.0.0.1", relay_port(tmp_path))}
        # mitmweb's REST API needs its token (mitmproxy >= 11.1.2): refused without, served with it.
        assert httpx2.get(f"http://127.0.0.1:{web}/flows", timeout=5).status_code == 403
        assert httpx2.get(f"http://127.0.0.1:{web}/flows?token=inspect-token", timeout=5).status_code == 200
    finally:
        stop(proc)


def test_listener_flags_given_by_the_user_win(tmp_path, config):
    path, _ = config
    other = free_port()
    argv = [str(BIN / "mitmdump"), "-s", str(REPO / "run.py"), "--set", f"config={path}"]
    argv += ["--mode", f"reverse:http://127.0.0.1:1@{other}", "--listen-host", "127.0.0.1"]
    proc, seen = start(argv, tmp_path, other)
    try:
        assert seen | listening(proc.pid) == {("127.0.0.1", other), ("127.0.0.1", relay_port(tmp_path))}
    finally:
        stop(proc)


def test_a_forward_proxy_mode_given_by_the_user_is_refused(tmp_path, config):
    path, _ = config
    other = free_port()
    argv = [str(BIN / "mitmdump"), "-s", str(REPO / "run.py"), "--set", f"config={path}"]
    argv += ["--mode", "regular", "--listen-host", "127.0.0.1", "--listen-port", str(other)]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: set = set()
    while proc.poll() is None:
        seen |= listening(proc.pid)
        time.sleep(0.005)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 1
    assert "only runs as a reverse proxy" in out
    assert "aiclient-mitm listening" not in out


def test_an_invalid_config_exits_before_anything_listens(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("providers: {openai-custom: {base_url: nope}}\n")
    argv = [str(BIN / "mitmdump"), "-s", str(REPO / "run.py"), "--set", f"config={path}"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: set = set()
    while proc.poll() is None:
        seen |= listening(proc.pid)
        time.sleep(0.005)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 1
    assert "providers.openai-custom.base_url: not a URL" in out
    assert seen == set() and "proxy listening" not in out
