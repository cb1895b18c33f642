"""What a broken upstream answer and every failure path leave behind, through the real gateway:
garbage relayed as a 200 is a 502 (unary) or ends with an in-band error (stream), and after any mix of
failures, with nothing running, every account's in_flight in /pool is back to 0."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, Fakes
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway
from tests.rawhttp import address, request_bytes

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi there"}]}
CLAUDE = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
GARBAGE = b"<html><body>502 Bad Gateway</body></html>"


@pytest.fixture(scope="module")
def gw(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("hostile-upstream"),
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": {
                "openai-custom": {
                    "base_url": f"{fakes.openai.url}/v1",
                    "accounts": [{"label": "a", "api_key": OPENAI_KEY}, {"label": "b", "api_key": OPENAI_KEY}],
                    "read_timeout": 1.0,
                },
                "claude-custom": {
                    "base_url": fakes.claude.url,
                    "accounts": [{"label": "c", "api_key": CLAUDE_KEY}],
                    "read_timeout": 1.0,
                },
            },
            "models": {"claude-sonnet-4-5": "claude-custom:claude-sonnet-4-5"},
            "retry": {"max_attempts": 2, "max_wait": 0},
            "cooldown": {"transient": 0},
        },
    )
    yield gateway
    gateway.stop()


def in_flight(gw: GatewayProcess) -> dict[str, int]:
    data = httpx2.get(f"{gw.url}/pool", headers=AUTH, timeout=30).json()
    return {f"{p}/{a['label']}": a["in_flight"] for p, accts in data["providers"].items() for a in accts}


def wait_all_idle(gw: GatewayProcess, seconds: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while True:
        counts = in_flight(gw)
        if not any(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def test_unary_passthrough_garbage_is_a_502_in_the_callers_dialect(gw: GatewayProcess, fakes: Fakes) -> None:
    fakes.claude.faults.extend([Fault(status=200, body=GARBAGE), Fault(status=200, body=GARBAGE)])
    r = httpx2.post(f"{gw.url}/v1/messages", headers=AUTH, json=CLAUDE, timeout=30)
    assert r.status_code == 502
    assert r.json()["type"] == "error" and "unreadable" in r.json()["error"]["message"]
    assert len(fakes.claude.requests) >= 1


def test_unary_passthrough_garbage_fails_over_to_the_next_account(gw: GatewayProcess, fakes: Fakes) -> None:
    fakes.openai.faults.append(Fault(status=200, body=GARBAGE))
    r = httpx2.post(f"{gw.url}/v1/chat/completions", headers=AUTH, json=CHAT, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert len(fakes.openai.requests) == 2


@pytest.mark.parametrize(
    ("path", "body", "fake", "marker"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}, "openai", b'data: {"error"'),
        ("/v1/messages", {**CLAUDE, "stream": True}, "claude", b"event: error"),
    ],
    ids=["openai_chat", "claude"],
)
def test_stream_passthrough_garbage_ends_with_an_in_band_error(
    gw: GatewayProcess, fakes: Fakes, path: str, body: dict, fake: str, marker: bytes
) -> None:
    getattr(fakes, fake).faults.append(Fault(status=200, body=GARBAGE, headers={"content-type": "text/event-stream"}))
    r = httpx2.post(f"{gw.url}{path}", headers=AUTH, json=body, timeout=30)
    assert r.status_code == 200  # the head went out before the body showed what it was
    assert marker in r.content and b"ended before finishing" in r.content


def test_a_good_passthrough_stream_gets_no_error_appended(gw: GatewayProcess) -> None:
    streams = (("/v1/chat/completions", {**CHAT, "stream": True}), ("/v1/messages", {**CLAUDE, "stream": True}))
    for path, body in streams:
        r = httpx2.post(f"{gw.url}{path}", headers=AUTH, json=body, timeout=30)
        assert r.status_code == 200 and b"error" not in r.content, r.content[-300:]


def _client_gone_mid_request(gw: GatewayProcess, body: dict) -> None:
    """Sends a request and hangs up before the (hanging) upstream answers."""
    data = request_bytes(
        "POST", b"/v1/chat/completions", [(b"authorization", AUTH["authorization"].encode())], json.dumps(body).encode()
    )
    with socket.create_connection(address(gw.url), timeout=5) as sock:
        sock.sendall(data)
        time.sleep(0.3)


def test_in_flight_is_zero_after_every_failure_path(gw: GatewayProcess, fakes: Fakes) -> None:
    faults = [
        Fault(status=500),
        Fault(status=429, headers={"retry-after": "1"}),
        Fault(kind="reset_before_headers"),
        Fault(kind="hang", seconds=1.5),  # past read_timeout
        Fault(status=200, body=GARBAGE),
        Fault(status=400),
    ]
    for stream in (False, True):
        for fault in faults:
            fakes.openai.faults.clear()
            fakes.openai.faults.append(fault)
            r = httpx2.post(f"{gw.url}/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": stream}, timeout=30)
            assert r.status_code != 500, (fault, r.text)
    fakes.openai.faults.clear()
    fakes.openai.faults.append(Fault(kind="reset_mid_stream", after_events=2))
    cut = httpx2.post(f"{gw.url}/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True}, timeout=30)
    assert b'"error"' in cut.content  # ends in-band
    for stream in (False, True):
        fakes.openai.faults.clear()
        fakes.openai.faults.append(Fault(kind="hang", seconds=0.8))
        _client_gone_mid_request(gw, {**CHAT, "stream": stream})
    fakes.openai.faults.clear()
    assert wait_all_idle(gw) == {"openai-custom/a": 0, "openai-custom/b": 0, "claude-custom/c": 0}
