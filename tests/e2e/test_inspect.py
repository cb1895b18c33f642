"""`mitmweb -s run.py`: what the inspector shows, read through mitmweb's own REST API.

Flow comments name the route and attempts; streamed answers have a body (the client's view,
bounded by inspect.stream_body_max); the SSE content view lists events; no upstream credential
is visible, and flows can be saved (their metadata is plain data once finished).
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml
from mitmproxy import contentviews
from mitmproxy import io as mitm_io

from addons.context import Gateway
from addons.flow_inspect import Inspect, SseContentview, mask_header, mask_url
from auth.client_keys import plain_key_name
from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY, Fakes, api_key_providers
from tests.drivers import MODEL, ClaudeDriver

REPO = Path(__file__).resolve().parents[2]
MITMWEB = Path(sys.executable).parent / "mitmweb"
BODY_MAX = 4096


@dataclass
class Web:
    proxy: str
    api: str
    proc: subprocess.Popen[bytes]

    def flows(self) -> list[dict]:
        return httpx2.get(f"{self.api}/flows", headers=WEB_AUTH, timeout=10).json()

    def flow(self, marker: str, timeout: float = 10.0) -> dict:
        """The finished flow whose request carried `marker`."""
        deadline = time.monotonic() + timeout
        while True:
            for f in self.flows():
                if f.get("response") and "·" in f.get("comment", "") and " ms" in f["comment"]:
                    body = httpx2.get(
                        f"{self.api}/flows/{f['id']}/request/content.data", headers=WEB_AUTH, timeout=10
                    ).content
                    if marker.encode() in body:
                        return f
            assert time.monotonic() < deadline, f"no finished flow for {marker}"
            time.sleep(0.05)

    def body(self, flow_id: str) -> bytes:
        return httpx2.get(f"{self.api}/flows/{flow_id}/response/content.data", headers=WEB_AUTH, timeout=10).content


# mitmweb's REST API needs its token (mitmproxy >= 11.1.2); a fixed one instead of the random default.
WEB_TOKEN = "inspect-test-token"
WEB_AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    workdir = tmp_path_factory.mktemp("mitmweb")
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": api_key_providers(fakes),
        "inspect": {"stream_body_max": BODY_MAX},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log_path = workdir / "mitmweb.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(MITMWEB), "-s", str(REPO / "run.py"), "--set", f"config={workdir / 'config.yaml'}",
             "--set", "web_open_browser=false", "--set", "web_host=127.0.0.1", "--set", f"web_port={port}",
             "--set", f"web_password={WEB_TOKEN}"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (m := re.search(r"aiclient-mitm listening on (http://\S+)", log_path.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        yield Web(m.group(1), f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_chat(proxy: str, provider: str, prompt: str) -> bytes:
    """The raw bytes a Chat client receives for a streamed request."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with (
        httpx2.Client(timeout=10) as client,
        client.stream(
            "POST",
            f"{proxy}/{provider}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        ) as r,
    ):
        assert r.status_code == 200
        return r.read()


@pytest.mark.parametrize("provider", ["claude-custom", "openai-custom"], ids=["transcoded", "passthrough"])
def test_streamed_flow_shows_the_clients_body_and_names_the_route(web, fakes, provider):
    marker = uuid.uuid4().hex[:10]
    received = stream_chat(web.proxy, provider, f"hi there {marker}")
    flow = web.flow(marker)
    account = {"claude-custom": "cl", "openai-custom": "oa"}[provider]
    comment = flow["comment"]
    assert comment.startswith(
        f"openai_chat → {provider}/{account}/{MODEL} · stream · attempts: {provider}/{account} 200"
    )
    assert " · ok " in comment and "first token" in comment
    assert comment.endswith(f" · key {plain_key_name(CLIENT_KEY.encode())}")
    assert web.body(flow["id"]) == received
    url = f"{web.api}/flows/{flow['id']}/response/content/auto.json"  # mitmweb's own choice of view
    view = httpx2.get(url, headers=WEB_AUTH, timeout=10).json()
    events = received.count(b"data: ")
    assert view["view_name"] == "SSE" and view["syntax_highlight"] == "yaml"
    lines = view["text"].splitlines()
    assert lines[0] == f"# SSE: {events} events"
    headings = [line for line in lines if re.fullmatch(r"# \d+ \S+", line)]
    assert len(headings) == events and headings[0].startswith("# 1 ")
    assert marker in view["text"]


def test_streamed_body_is_bounded(web, fakes):
    marker = uuid.uuid4().hex[:10]
    received = stream_chat(web.proxy, "claude-custom", f"long please {marker}")
    assert len(received) > BODY_MAX
    assert web.body(web.flow(marker)["id"]) == received[:BODY_MAX]


def test_unary_flow_comment(web, fakes):
    marker = uuid.uuid4().hex[:10]
    msg = ClaudeDriver(web.proxy, "openai-custom").ask([{"role": "user", "content": f"hi {marker}"}], stream=False)
    assert ClaudeDriver.text_of(msg) == f"Hello! You said: hi {marker}"
    flow = web.flow(marker)
    assert flow["comment"].startswith(f"claude → openai-custom/oa/{MODEL} · attempts: openai-custom/oa 200 · ok ")
    assert json.loads(web.body(flow["id"]))["content"][0]["text"] == f"Hello! You said: hi {marker}"


def test_no_credential_is_visible_and_flows_can_be_saved(web, fakes):
    marker = uuid.uuid4().hex[:10]
    stream_chat(web.proxy, "claude-custom", f"hi there {marker}")
    stream_chat(web.proxy, "openaiResponses-custom", f"hi there {marker}")
    stream_chat(web.proxy, "openai-custom", f"hi there {marker}")
    web.flow(marker)
    time.sleep(0.2)
    listing = json.dumps(web.flows())
    dump = httpx2.get(f"{web.api}/flows/dump", headers=WEB_AUTH, timeout=10)
    assert dump.status_code == 200
    for secret in (CLIENT_KEY, OPENAI_KEY, CLAUDE_KEY, RESPONSES_KEY):
        assert secret not in listing and secret.encode() not in dump.content
    flows = list(mitm_io.FlowReader(io.BytesIO(dump.content)).stream())
    relayed = [f for f in flows if marker.encode() in (f.request.content or b"")]
    assert len(relayed) == 3
    for f in relayed:
        summary = f.metadata["aiclient.flow"]
        assert summary["status"] == "ok" and summary["client_dialect"] == "openai_chat"
        assert summary["usage"]["output_tokens"] > 0
        upstream = f.metadata["aiclient.upstream_request"]
        assert upstream["url"].startswith("http://127.0.0.1:")
        assert upstream["body"]["model"] == MODEL
        secret_headers = {k: v for k, v in upstream["headers"].items() if k.lower() in ("authorization", "x-api-key")}
        assert secret_headers and all("********" in v for v in secret_headers.values())
        assert f.request.headers.get("authorization", f.request.headers.get("x-api-key", "")).endswith("********")


def test_sse_view_and_masking_helpers():
    data = b'event: a\ndata: {"x": [1, 2]}\n\n: keep-alive\n\ndata: plain text\n\n'
    sse = contentviews.Metadata(content_type="text/event-stream")
    Inspect(Gateway()).load(None)  # registers the view, as when mitmweb loads run.py
    view = contentviews.registry.get_view(data, sse)  # mitmproxy's own choice for an event stream
    assert isinstance(view, SseContentview)
    texts = view.prettify(data, sse).splitlines()
    assert texts[0] == "# SSE: 2 events" and "# 1 a" in texts and '    "x": [' in texts
    assert "# 2 message" in texts and texts[-1] == "plain text"
    assert view.render_priority(data, contentviews.Metadata(content_type="application/json")) == 0
    assert mask_header("Authorization", "Bearer sk-123") == "Bearer ********"
    assert mask_header("x-api-key", "sk-123") == "********"
    assert mask_header("x-goog-api-key", "k") == "********"
    assert mask_header("content-type", "application/json") == "application/json"
    masked = mask_url("https://h/v1/models/x:generateContent?alt=sse&key=AIzaSECRET")
    assert "AIzaSECRET" not in masked and "alt=sse" in masked
