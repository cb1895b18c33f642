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
from tests.fakes.server import Fault

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

    def view(self, flow_id: str, side: str, name: str) -> dict:
        """A content view of one side of a flow, as mitmweb's UI fetches it."""
        url = f"{self.api}/flows/{flow_id}/{side}/content/{name}.json"
        return httpx2.get(url, headers=WEB_AUTH, timeout=10).json()


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
        # The flow shows the client's own request (its key was removed on arrival), at the gateway's URL.
        assert not {"authorization", "x-api-key"} & {k.lower() for k in f.request.headers}
        assert f.request.port == int(web.proxy.rsplit(":", 1)[1]) and f.request.port != 1


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
    assert mask_header("Set-Cookie", "session=abc") == "********"  # upstream answers are shown too
    assert mask_header("content-type", "application/json") == "application/json"
    masked = mask_url("https://h/v1/models/x:generateContent?alt=sse&key=AIzaSECRET")
    assert "AIzaSECRET" not in masked and "alt=sse" in masked


# -- both sides of every exchange ---------------------------------------------------------------------


def gateway_port(web: Web) -> int:
    return int(web.proxy.rsplit(":", 1)[1])


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_translated_flow_shows_both_sides(web, fakes, stream):
    """Client request (Chat) and client response on the flow; the upstream request as sent (Claude
    Messages, key masked) and the upstream's answer as received in the "Upstream" view."""
    marker = uuid.uuid4().hex[:10]
    if stream:
        received = stream_chat(web.proxy, "claude-custom", f"both sides {marker}")
    else:
        r = httpx2.post(
            f"{web.proxy}/claude-custom/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": f"both sides {marker}"}]},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            timeout=10,
        )
        assert r.status_code == 200
        received = r.content
    flow = web.flow(marker)
    request = flow["request"]
    # What the client asked, never the reverse-proxy placeholder http://127.0.0.1:1/...
    assert (request["host"], request["port"], request["path"]) == (
        "127.0.0.1",
        gateway_port(web),
        "/claude-custom/v1/chat/completions",
    )
    assert flow["comment"].startswith(f"openai_chat → claude-custom/cl/{MODEL}")
    client_request = httpx2.get(f"{web.api}/flows/{flow['id']}/request/content.data", headers=WEB_AUTH).json()
    assert client_request["messages"][0]["content"] == f"both sides {marker}"  # the Chat body the client sent
    assert web.body(flow["id"]) == received  # the client's response

    upstream_request = web.view(flow["id"], "request", "upstream")
    text = upstream_request["text"]
    assert upstream_request["view_name"] == "Upstream"
    assert f"POST {fakes.claude.url}/v1/messages" in text
    assert "x-api-key: ********" in text and CLAUDE_KEY not in text
    assert '"max_tokens"' in text and marker in text  # the Claude Messages body as rendered

    upstream_response = web.view(flow["id"], "response", "upstream")["text"]
    assert "HTTP 200" in upstream_response
    if stream:
        assert "event: message_start" in upstream_response and "content_block_delta" in upstream_response
    else:
        assert '"type": "message"' in upstream_response and f"You said: both sides {marker}" in upstream_response


def test_locally_answered_flows_say_why(web, fakes):
    marker = uuid.uuid4().hex[:10]
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    bad_key = httpx2.post(
        f"{web.proxy}/v1/chat/completions?m={marker}", json={}, headers={"authorization": "Bearer wrong"}, timeout=10
    )
    assert bad_key.status_code == 401

    def ask(text: str) -> httpx2.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        return httpx2.post(f"{web.proxy}/openai-custom/v1/chat/completions", json=body, headers=auth, timeout=10)

    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "600"}))
    try:
        assert ask(f"upstream limit {marker}").status_code == 429
        assert ask(f"cooling {marker}").status_code == 429  # answered by the gateway, no upstream call
    finally:
        reset = httpx2.post(f"{web.proxy}/admin/accounts/openai-custom/oa/reset", headers=auth, timeout=10)
        assert reset.status_code == 200

    deadline = time.monotonic() + 10
    while not (refused := [f for f in web.flows() if marker in f["request"]["path"] and f.get("comment")]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert refused[0]["comment"].startswith("refused 401: invalid API key"), refused[0]["comment"]
    assert refused[0]["request"]["port"] == gateway_port(web)
    assert "no upstream request" in web.view(refused[0]["id"], "request", "upstream")["text"]

    upstream_limited = web.flow(f"upstream limit {marker}")
    assert " · 429 upstream openai-custom answered 429: Rate limit" in upstream_limited["comment"]
    upstream = web.view(upstream_limited["id"], "response", "upstream")["text"]
    assert "HTTP 429" in upstream and "retry-after: 600" in upstream

    cooling = web.flow(f"cooling {marker}")
    assert "· 429 every account of openai-custom is cooling down" in cooling["comment"], cooling["comment"]
    assert "no upstream request" in web.view(cooling["id"], "request", "upstream")["text"]

    admin_flow = next(f for f in web.flows() if f["request"]["path"] == "/admin/accounts/openai-custom/oa/reset")
    assert admin_flow["comment"] == "local: admin_account · 200"


def test_the_comment_column_is_shown(web):
    options = httpx2.get(f"{web.api}/options", headers=WEB_AUTH, timeout=10).json()
    assert "comment" in options["web_columns"]["value"]
