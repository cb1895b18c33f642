"""Self-tests of the fake upstreams in tests/fakes: auth, validation rules, unary shapes, stream grammars, faults.

The e2e suite trusts these fakes to be as strict as the real services, so each rule is pinned here with plain httpx.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.fakes import brain
from tests.fakes.claude import FakeClaude
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.fakes.openai_responses import FakeOpenAIResponses
from tests.fakes.server import FakeServer, Fault

KEY = "test-key-123"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="
PNG_SIZE = len(base64.b64decode(PNG_B64))
CHAT_HEADERS = {"authorization": f"Bearer {KEY}"}
CLAUDE_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": KEY}
GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
GEMINI_STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
LONG_PROMPT = "word " * 120


# -- fixtures and helpers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as c:
        yield c


def _shared(fake: FakeServer) -> Iterator[FakeServer]:
    with fake:
        yield fake


@pytest.fixture(scope="module")
def _chat() -> Iterator[FakeServer]:
    yield from _shared(FakeOpenAIChat(api_key=KEY))


@pytest.fixture(scope="module")
def _claude() -> Iterator[FakeServer]:
    yield from _shared(FakeClaude(api_key=KEY))


@pytest.fixture(scope="module")
def _responses() -> Iterator[FakeServer]:
    yield from _shared(FakeOpenAIResponses(api_key=KEY))


@pytest.fixture(scope="module")
def _gemini() -> Iterator[FakeServer]:
    yield from _shared(FakeGemini(api_key=KEY))


@pytest.fixture
def chat(_chat: FakeOpenAIChat) -> FakeOpenAIChat:
    _chat.clear()
    return _chat


@pytest.fixture
def claude(_claude: FakeClaude) -> FakeClaude:
    _claude.clear()
    return _claude


@pytest.fixture
def responses(_responses: FakeOpenAIResponses) -> FakeOpenAIResponses:
    _responses.clear()
    return _responses


@pytest.fixture
def gemini(_gemini: FakeGemini) -> FakeGemini:
    _gemini.clear()
    return _gemini


def parse_sse(raw: bytes) -> list[dict[str, str]]:
    """Frames as {field: value}; a comment line becomes {"comment": ...}, `data:` with no value {"data": ""}."""
    frames = []
    for block in re.split(r"\r\n\r\n|\n\n", raw.decode()):
        if not block.strip():
            continue
        frame = {}
        for line in re.split(r"\r?\n", block):
            name, _, value = line.partition(":")
            frame[name or "comment"] = value.removeprefix(" ")
        frames.append(frame)
    return frames


def chat_body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": list(messages) or [{"role": "user", "content": "hi"}], **extra}


def claude_body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    messages_ = list(messages) or [{"role": "user", "content": "hi"}]
    return {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": messages_, **extra}


def gemini_body(*contents: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"contents": list(contents) or [{"role": "user", "parts": [{"text": "hi"}]}], **extra}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def gemini_user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CLAUDE_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
GEMINI_PARAMS = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}
GEMINI_TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": GEMINI_PARAMS}]}]


def assistant_call(*ids: str, arguments: Any = '{"city": "Paris"}') -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": "get_weather", "arguments": arguments}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def tool_message(call_id: str, content: str = "Sunny") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_use(*ids: str) -> dict[str, Any]:
    blocks = [{"type": "tool_use", "id": i, "name": "get_weather", "input": {"city": "Paris"}} for i in ids]
    return {"role": "assistant", "content": blocks}


def tool_result(*ids: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "Sunny"} for i in ids]}


def gemini_calls(*names: str, signature: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"functionCall": {"name": n, "args": {"city": "Paris"}}} for n in names]
    if signature:
        parts[0]["thoughtSignature"] = signature
    return {"role": "model", "parts": parts}


def gemini_responses(*names: str, response: Any = None) -> dict[str, Any]:
    value = {"result": "Sunny"} if response is None else response
    return {"role": "user", "parts": [{"functionResponse": {"name": n, "response": value}} for n in names]}


# -- brain --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "text", "calls"),
    [
        (brain.Prompt(text="hi"), "Hello! You said: hi", 0),
        (brain.Prompt(text="weather?", tools=["w"]), "", 1),
        (brain.Prompt(text="use a tool", tools=[]), "Hello! You said: use a tool", 0),
        (brain.Prompt(text="parallel weather", tools=["w"]), "", 2),
        (brain.Prompt(text="x", images=[brain.Image("image/png", 68)]), "I see 1 image(s): image/png 68 bytes", 0),
        (brain.Prompt(text="unicode"), brain.UNICODE_TEXT, 0),
        (brain.Prompt(text="long"), brain.LONG_TEXT, 0),
        (
            brain.Prompt(tool_results=[brain.ToolResult("a"), brain.ToolResult("b", is_error=True)], tools=["w"]),
            "Tool results: a; b (error)",
            0,
        ),
    ],
)
def test_brain_rules(prompt: brain.Prompt, text: str, calls: int) -> None:
    answer = brain.answer(prompt)
    assert (answer.text, len(answer.tool_calls)) == (text, calls)
    assert answer.finish == ("tool_calls" if calls else "stop")


REMINDER = "<system-reminder>\nUse the weather tool when you can.\n</system-reminder>\n"


@pytest.mark.parametrize(
    ("prompt", "call"),
    [
        (
            brain.Prompt(text="Read the file /w/notes.txt now", tools=["Agent", "Read"]),
            ("Read", {"file_path": "/w/notes.txt"}),
        ),
        (brain.Prompt(text="read the file /w/a.txt", tools=["read_file"]), ("read_file", {"file_path": "/w/a.txt"})),
        (
            brain.Prompt(text="Read the file /w/a.txt", tools=["exec_command"]),
            ("exec_command", {"cmd": "cat /w/a.txt"}),
        ),
        # Claude Code's reminders and a system prompt merged in front (Kiro) do not trigger tools
        (brain.Prompt(text=REMINDER + "say hi", tools=["Agent"]), None),
        (brain.Prompt(text="You may include <system-reminder> tags and use a tool.\n\nsay hi", tools=["Agent"]), None),
        (brain.Prompt(text="System: read the file /etc/x\nsay hi", tools=["Read"]), None),
    ],
)
def test_brain_drives_the_real_clis_tools(prompt: brain.Prompt, call: tuple[str, dict] | None) -> None:
    answer = brain.answer(prompt)
    assert [(c.name, c.args) for c in answer.tool_calls] == ([call] if call else [])
    if call is None:
        assert answer.text.startswith("Hello! You said: ") and answer.text.endswith("say hi")


def test_brain_usage_thinking_and_truncation() -> None:
    answer = brain.answer(brain.Prompt(text="long", max_tokens=7, thinking=True, words=150))
    assert answer.finish == "length" and len(answer.text.split()) == 7 == answer.output_tokens
    assert (answer.input_tokens, answer.cached_tokens, answer.reasoning_tokens) == (150, brain.CACHED_TOKENS, 5)
    assert answer.thinking == brain.THINKING_TEXT and answer.signature and answer.signature.isalnum()
    assert "".join(answer.text_deltas()) == answer.text and len(answer.text_deltas()) == 7
    assert len(brain.LONG_TEXT.split()) == 60


# -- base server --------------------------------------------------------------------------------------
def test_records_requests_and_keeps_connections_alive(chat: FakeOpenAIChat) -> None:
    before = chat.connections_opened
    with httpx2.Client() as fresh:
        for text in ("one", "two"):
            fresh.post(chat.url + "/v1/chat/completions?x=1", json=chat_body(user(text)), headers={"X-Trace": "t"})
    assert chat.connections_opened - before == 1
    assert [r.json["messages"][0]["content"] for r in chat.requests] == ["one", "two"]
    first = chat.requests[0]
    assert (first.method, first.path, first.query, first.headers["x-trace"]) == (
        "POST",
        "/v1/chat/completions",
        {"x": "1"},
        "t",
    )
    assert json.loads(first.body) == first.json


def test_chunked_request_body_is_read(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    payload = json.dumps(chat_body(user("chunked"))).encode()
    response = client.post(
        chat.url + "/v1/chat/completions", content=iter([payload[:10], payload[10:]]), headers=CHAT_HEADERS
    )
    assert chat.last_request.headers["transfer-encoding"] == "chunked"
    assert response.json()["choices"][0]["message"]["content"] == "Hello! You said: chunked"


@pytest.mark.parametrize(
    ("name", "path", "headers", "check"),
    [
        ("chat", "/v1/chat/completions", CHAT_HEADERS, lambda e: e["error"]["type"] == "invalid_request_error"),
        ("responses", "/v1/responses", CHAT_HEADERS, lambda e: "could not parse the JSON" in e["error"]["message"]),
        ("claude", "/v1/messages", CLAUDE_HEADERS, lambda e: e["type"] == "error" and "error" in e),
        ("gemini", GEMINI_PATH, GEMINI_HEADERS, lambda e: e["error"]["status"] == "INVALID_ARGUMENT"),
    ],
)
def test_invalid_json_gets_400_in_own_shape(
    request: pytest.FixtureRequest, client: httpx2.Client, name: str, path: str, headers: dict, check: Any
) -> None:
    fake = request.getfixturevalue(name)
    response = client.post(fake.url + path, content=b'{"model": ', headers=headers)
    assert response.status_code == 400 and check(response.json())


@pytest.mark.parametrize(
    ("name", "path", "headers", "body", "check"),
    [
        (
            "chat",
            "/v1/chat/completions",
            CHAT_HEADERS,
            chat_body(),
            lambda e: e["error"]["code"] == "rate_limit_exceeded",
        ),
        ("claude", "/v1/messages", CLAUDE_HEADERS, claude_body(), lambda e: e["error"]["type"] == "rate_limit_error"),
        ("gemini", GEMINI_PATH, GEMINI_HEADERS, gemini_body(), lambda e: e["error"]["status"] == "RESOURCE_EXHAUSTED"),
    ],
)
def test_status_fault_uses_own_error_shape_then_recovers(
    request: pytest.FixtureRequest, client: httpx2.Client, name: str, path: str, headers: dict, body: dict, check: Any
) -> None:
    fake = request.getfixturevalue(name)
    fake.faults.append(Fault(status=429, headers={"Retry-After": "2"}))
    first = client.post(fake.url + path, json=body, headers=headers)
    assert first.status_code == 429 and first.headers["retry-after"] == "2" and check(first.json())
    assert client.post(fake.url + path, json=body, headers=headers).status_code == 200


def test_status_fault_with_custom_body(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    chat.faults.append(Fault(status=503, body=b"upstream down", headers={"content-type": "text/plain"}))
    response = client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS)
    assert (response.status_code, response.text, response.headers["content-type"]) == (
        503,
        "upstream down",
        "text/plain",
    )


def test_reset_before_headers(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    chat.faults.append(Fault(kind="reset_before_headers"))
    with pytest.raises(httpx2.TransportError):
        client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS)
    assert client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS).status_code == 200
    assert len(chat.requests) == 2


def test_reset_mid_stream_after_n_events(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    chat.faults.append(Fault(kind="reset_mid_stream", after_events=3))
    received = b""
    with pytest.raises(httpx2.RemoteProtocolError):
        with client.stream(
            "POST", chat.url + "/v1/chat/completions", json=chat_body(stream=True), headers=CHAT_HEADERS
        ) as response:
            for data in response.iter_raw():
                received += data
    assert len(parse_sse(received)) == 3
    assert b"[DONE]" not in received


def test_reset_mid_stream_cuts_unary_body(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    chat.faults.append(Fault(kind="reset_mid_stream"))
    with pytest.raises(httpx2.RemoteProtocolError):
        client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS)


def test_hang_then_close(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    chat.faults.append(Fault(kind="hang", seconds=0.3))
    started = time.monotonic()
    with pytest.raises(httpx2.RemoteProtocolError):
        client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS)
    assert time.monotonic() - started >= 0.3
    chat.faults.append(Fault(kind="hang", seconds=5))
    with pytest.raises(httpx2.ReadTimeout):
        client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS, timeout=0.2)


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault(kind="explode")


def _raw_chunks(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> list[bytes]:
    """Sends one request over a raw socket and returns the response's chunked-encoding pieces as written."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n{head}\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request.encode() + payload)
        raw = b""
        while data := sock.recv(65536):
            raw += data
    rest = raw.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        if (size := int(size_line, 16)) == 0:
            return chunks
        chunks.append(rest[:size])
        rest = rest[size + 2 :]


def test_split_writes_cut_inside_utf8_reproducibly() -> None:
    body = chat_body(user("unicode please"), stream=True)
    runs = []
    for _ in range(2):
        with FakeOpenAIChat(api_key=KEY, split_writes=True, seed=7) as fake:
            runs.append(_raw_chunks(fake.url, "/v1/chat/completions", body, CHAT_HEADERS))
    assert [len(c) for c in runs[0]] == [len(c) for c in runs[1]]

    def decodes(piece: bytes) -> bool:
        try:
            piece.decode()
        except UnicodeDecodeError:
            return False
        return True

    assert not all(decodes(c) for c in runs[0])
    chunks = [json.loads(f["data"]) for f in parse_sse(b"".join(runs[0])) if f.get("data") not in (None, "", "[DONE]")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == brain.UNICODE_TEXT


def test_write_delay_paces_stream_writes() -> None:
    with FakeOpenAIChat(api_key=KEY, write_delay=0.02, stream_noise=False) as fake:
        started = time.monotonic()
        frames = parse_sse(
            httpx2.post(fake.url + "/v1/chat/completions", json=chat_body(stream=True), headers=CHAT_HEADERS).content
        )
        elapsed = time.monotonic() - started
    assert elapsed >= 0.02 * len(frames) and len(frames) == 7


def test_stop_unblocks_hanging_request() -> None:
    fake = FakeOpenAIChat(api_key=KEY).start()
    fake.faults.append(Fault(kind="hang", seconds=30))
    started = time.monotonic()
    with httpx2.Client(timeout=5) as c:
        threading.Timer(0.2, fake.stop).start()
        with pytest.raises(httpx2.TransportError):
            c.post(fake.url + "/v1/chat/completions", json=chat_body(), headers=CHAT_HEADERS)
    assert time.monotonic() - started < 3


# -- OpenAI Chat ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}])
def test_chat_auth(chat: FakeOpenAIChat, client: httpx2.Client, headers: dict[str, str]) -> None:
    response = client.post(chat.url + "/v1/chat/completions", json=chat_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


CHAT_INVALID = [
    ([1, 2], "expected an object"),
    ({"messages": [user("hi")]}, "you must provide a model parameter"),
    (chat_body(user("hi"), model=""), "you must provide a model parameter"),
    ({"model": "m", "messages": []}, "empty array"),
    (chat_body({"role": "robot", "content": "hi"}), "Invalid value: 'robot'"),
    (chat_body(user("hi"), tool_message("call_1")), "must be a response to a preceeding message with 'tool_calls'"),
    (chat_body(user("hi"), assistant_call("call_1"), tool_message("call_9")), "'call_9' not found in 'tool_calls'"),
    (
        chat_body(user("hi"), assistant_call("call_1", arguments={"city": "Paris"})),
        "expected a string, but got an object",
    ),
    (chat_body(user("hi"), assistant_call("call_1", arguments="{city")), "not valid JSON"),
    (chat_body(user("hi"), assistant_call("call_1"), user("again")), "did not have response messages: call_1"),
    (chat_body(user("hi"), assistant_call("call_1")), "did not have response messages: call_1"),
    (
        chat_body(user("hi"), assistant_call("call_1", "call_2"), tool_message("call_1"), user("x")),
        "did not have response messages: call_2",
    ),
    (chat_body(user("hi"), {"role": "assistant", "content": None}), "expected a string, got null"),
    (chat_body({"role": "user", "content": []}), "empty array"),
    (chat_body(tools=[{"type": "function", "function": {"name": "get weather"}}]), "does not match pattern"),
    (chat_body(tools=[{"type": "retrieval"}]), "Invalid value: 'retrieval'"),
    (chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]), "expected an object"),
    (
        chat_body({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}),
        "unsupported image URL",
    ),
    (
        chat_body(
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}
        ),
        "Invalid MIME type",
    ),
    (chat_body({"role": "user", "content": [{"type": "audio", "audio": "x"}]}), "Invalid value: 'audio'"),
    (chat_body(stream_options={"include_usage": True}), "only allowed when 'stream' is enabled"),
    (chat_body(reasoning_effort="extreme"), "Invalid value: 'extreme'"),
    (chat_body(reasoning_effort="xhigh"), "Invalid value: 'xhigh'"),
    (
        chat_body(response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "OBJECT"}}}),
        "'OBJECT' is not valid",
    ),
    (
        chat_body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"type": "STRING"}}}},
            }
        ),
        "'STRING' is not valid",
    ),
    (chat_body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), "json_schema.name"),
    (chat_body(response_format={"type": "xml"}), "Invalid value: 'xml'"),
    (chat_body(max_tokens=0), "below minimum value"),
]


@pytest.mark.parametrize(("body", "message"), CHAT_INVALID)
def test_chat_validation(chat: FakeOpenAIChat, client: httpx2.Client, body: Any, message: str) -> None:
    response = client.post(chat.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error" and "param" in error


def test_chat_unary_text(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    body = chat_body({"role": "system", "content": "be nice"}, user("hi there"))
    data = client.post(chat.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS).json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion" and data["model"] == "gpt-4o-mini"
    choice = data["choices"][0]
    assert choice["message"]["content"] == "Hello! You said: hi there" and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"] and "reasoning_content" not in choice["message"]
    usage = data["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (4, 5, 9)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


def test_chat_tool_round_trip_with_parallel_calls(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    url = chat.url + "/v1/chat/completions"
    first = client.post(url, json=chat_body(user("parallel weather"), tools=CHAT_TOOLS), headers=CHAT_HEADERS).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert all(c["id"].startswith("call_") and c["function"]["name"] == "get_weather" for c in message["tool_calls"])
    ids = [c["id"] for c in message["tool_calls"]]
    body = chat_body(user("parallel weather"), message, tool_message(ids[0], "Sunny"), tool_message(ids[1], "Rainy"))
    second = client.post(url, json={**body, "tools": CHAT_TOOLS}, headers=CHAT_HEADERS).json()
    assert second["choices"][0]["message"]["content"] == "Tool results: Sunny; Rainy"


def test_chat_thinking_long_prompt_and_length(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    body = chat_body(user("long " + LONG_PROMPT), reasoning_effort="high", max_completion_tokens=10)
    data = client.post(chat.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["message"]["content"].split()) == 10
    assert choice["message"]["reasoning_content"] == brain.THINKING_TEXT
    usage = data["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == brain.CACHED_TOKENS
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5 and usage["completion_tokens"] == 15


def test_chat_images(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}
    body = chat_body({"role": "user", "content": [{"type": "text", "text": "what?"}, part, part]})
    data = client.post(chat.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS).json()
    expected = f"I see 2 image(s): image/png {PNG_SIZE} bytes, image/png {PNG_SIZE} bytes"
    assert data["choices"][0]["message"]["content"] == expected
    with FakeOpenAIChat(api_key=KEY, allow_image_urls=True) as permissive:
        remote = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
        body = chat_body({"role": "user", "content": [remote]})
        data = httpx2.post(permissive.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS).json()
    assert data["choices"][0]["message"]["content"] == "I see 1 image(s): https://x.test/a.png"


def _chat_stream(chat: FakeOpenAIChat, client: httpx2.Client, body: dict[str, Any]) -> list[dict[str, str]]:
    response = client.post(chat.url + "/v1/chat/completions", json=body, headers=CHAT_HEADERS)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    return parse_sse(response.content)


def _chat_chunks(frames: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for f in frames if f.get("data") not in (None, "", "[DONE]")]


def test_chat_stream_text_grammar(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    body = chat_body(user("hi there"), stream=True, stream_options={"include_usage": True}, reasoning_effort="low")
    frames = _chat_stream(chat, client, body)
    assert frames[-1] == {"data": "[DONE]"}
    assert {"comment": "keep-alive"} in frames and {"data": ""} in frames
    chunks = _chat_chunks(frames)
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == brain.THINKING_TEXT
    contents = [d["content"] for d in deltas if d.get("content")]
    assert contents == ["Hello! ", "You ", "said: ", "hi ", "there"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    plain = _chat_chunks(_chat_stream(chat, client, chat_body(user("hi"), stream=True)))
    assert all("usage" not in c for c in plain) and plain[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_parallel_tool_calls(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    body = chat_body(user("parallel weather"), tools=CHAT_TOOLS, stream=True)
    chunks = _chat_chunks(_chat_stream(chat, client, body))
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    heads = [tc for tc in calls if "id" in tc]
    assert [h["index"] for h in heads] == [0, 1] and all(h["function"]["name"] == "get_weather" for h in heads)
    for index, city in ((0, "Paris"), (1, "Tokyo")):
        fragments = [tc["function"]["arguments"] for tc in calls if tc["index"] == index]
        assert calls.index(heads[index]) < calls.index(
            next(tc for tc in calls if tc["index"] == index and "id" not in tc)
        )
        assert len([f for f in fragments if f]) > 1 and json.loads("".join(fragments)) == {"city": city}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_models_and_unknown_route(chat: FakeOpenAIChat, client: httpx2.Client) -> None:
    data = client.get(chat.url + "/v1/models", headers=CHAT_HEADERS).json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["gpt-4o-mini", "gpt-4.1", "o4-mini"]
    assert client.get(chat.url + "/v1/nope", headers=CHAT_HEADERS).status_code == 404


# -- Claude -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": KEY}, 400, "invalid_request_error"),
    ],
)
def test_claude_auth_and_version(
    claude: FakeClaude, client: httpx2.Client, headers: dict, status: int, kind: str
) -> None:
    response = client.post(claude.url + "/v1/messages", json=claude_body(), headers=headers)
    assert response.status_code == status
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] == kind and data["request_id"].startswith("req_")


def test_claude_bearer_mode() -> None:
    with FakeClaude(api_key=KEY, bearer=True) as fake:
        ok = httpx2.post(
            fake.url + "/v1/messages",
            json=claude_body(),
            headers={"authorization": f"Bearer {KEY}", "anthropic-version": "1"},
        )
        denied = httpx2.post(fake.url + "/v1/messages", json=claude_body(), headers=CLAUDE_HEADERS)
    assert ok.status_code == 200 and denied.status_code == 401


THINKING = {"type": "enabled", "budget_tokens": 1024}
CLAUDE_INVALID = [
    ({"max_tokens": 10, "messages": [user("hi")]}, "model: Field required"),
    ({"model": "m", "messages": [user("hi")]}, "max_tokens: Field required"),
    (claude_body(max_tokens="10"), "max_tokens: Input should be a valid integer"),
    ({"model": "m", "max_tokens": 10, "messages": []}, "at least one message is required"),
    (claude_body({"role": "assistant", "content": "hi"}), 'first message must use the "user" role'),
    (claude_body(user("a"), user("b")), 'found multiple "user" roles in a row'),
    (claude_body({"role": "system", "content": "x"}), "Input should be 'user' or 'assistant'"),
    (claude_body(user("")), "must have non-empty content"),
    (claude_body({"role": "user", "content": []}), "must have non-empty content"),
    (claude_body({"role": "user", "content": [{"type": "text", "text": ""}]}), "text content blocks must be non-empty"),
    (claude_body({"role": "user", "content": [{"type": "video"}]}), "Input tag 'video'"),
    (claude_body(user("hi"), {"role": "assistant", "content": [{"type": "image"}]}), "`image` blocks can only be in"),
    (claude_body(user("hi"), tool_use("toolu 1"), tool_result("toolu 1")), "String should match pattern"),
    (
        claude_body(
            user("hi"), {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": []}]}
        ),
        "input: Input should be a valid dictionary",
    ),
    (
        claude_body(user("hi"), tool_use("t1"), tool_result("t9")),
        "unexpected `tool_use_id` found in `tool_result` blocks: t9",
    ),
    (claude_body(tool_result("t1")), "unexpected `tool_use_id`"),
    (
        claude_body(user("hi"), tool_use("t1"), user("x")),
        "ids were found without `tool_result` blocks immediately after: t1",
    ),
    (claude_body(user("hi"), tool_use("t1", "t2"), tool_result("t1")), "immediately after: t2"),
    (claude_body(user("hi"), tool_use("t1")), "immediately after: t1"),
    (claude_body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 512}), "greater than or equal to 1024"),
    (claude_body(max_tokens=1024, thinking=THINKING), "`max_tokens` must be greater than `thinking.budget_tokens`"),
    (claude_body(max_tokens=4096, thinking={"type": "on"}), "Input tag 'on'"),
    (claude_body(max_tokens=4096, thinking=THINKING, temperature=0.2), "`temperature` may only be set to 1"),
    (claude_body(max_tokens=4096, thinking=THINKING, tool_choice={"type": "any"}), "forces tool use"),
    (
        claude_body(
            max_tokens=4096,
            thinking=THINKING,
            messages=[user("hi"), tool_use("t1"), tool_result("t1")],
            tools=CLAUDE_TOOLS,
        ),
        "Expected `thinking` or `redacted_thinking`, but found `tool_use`",
    ),
    (
        claude_body(
            user("hi"),
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "forged"}]},
            user("more"),
        ),
        "Invalid `signature` in `thinking` block",
    ),
    (claude_body(tools=[{"name": "get weather", "input_schema": {}}]), "String should match pattern"),
    (claude_body(tools=[{"name": "get_weather"}]), "input_schema: Field required"),
    (claude_body(system=42), "system: Input should be a valid list"),
    (claude_body(system=[{"type": "image"}]), "system.0"),
    (
        claude_body(
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="}}],
            }
        ),
        "Input should be 'image/jpeg'",
    ),
]


@pytest.mark.parametrize(("body", "message"), CLAUDE_INVALID)
def test_claude_validation(claude: FakeClaude, client: httpx2.Client, body: dict, message: str) -> None:
    response = client.post(claude.url + "/v1/messages", json=body, headers=CLAUDE_HEADERS)
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["error"]["type"] == "invalid_request_error" and message in data["error"]["message"]


def test_claude_accepts_system_messages_inside_the_conversation(claude: FakeClaude, client: httpx2.Client) -> None:
    """As Anthropic does (current Claude Code sends them); they take no part in the alternation."""
    system = {"role": "system", "content": "Available agent types: none"}
    body = claude_body(user("hi"), system, {"role": "assistant", "content": "yo"}, system, user("again"))
    response = client.post(claude.url + "/v1/messages", json=body, headers=CLAUDE_HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "Hello! You said: again"


def test_claude_unary_text_image_and_usage(claude: FakeClaude, client: httpx2.Client) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    body = claude_body({"role": "user", "content": [{"type": "text", "text": LONG_PROMPT}, image]}, system="be nice")
    data = client.post(claude.url + "/v1/messages", json=body, headers=CLAUDE_HEADERS).json()
    assert data["id"].startswith("msg_") and data["type"] == "message" and data["role"] == "assistant"
    assert data["content"] == [{"type": "text", "text": f"I see 1 image(s): image/png {PNG_SIZE} bytes"}]
    assert (data["stop_reason"], data["stop_sequence"]) == ("end_turn", None)
    usage = data["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == 122
    assert usage["cache_read_input_tokens"] == brain.CACHED_TOKENS and usage["cache_creation_input_tokens"] == 0
    assert usage["output_tokens"] == 7


def test_claude_thinking_tool_round_trip(claude: FakeClaude, client: httpx2.Client) -> None:
    url = claude.url + "/v1/messages"
    body = claude_body(user("weather?"), max_tokens=4096, thinking=THINKING, tools=CLAUDE_TOOLS)
    first = client.post(url, json=body, headers=CLAUDE_HEADERS).json()
    assert [b["type"] for b in first["content"]] == ["thinking", "tool_use"] and first["stop_reason"] == "tool_use"
    thinking, call = first["content"]
    assert thinking["thinking"] == brain.THINKING_TEXT and thinking["signature"] in claude.issued_signatures
    assert call["id"].startswith("toolu_") and call["input"] == {"city": "Paris"}
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny", "is_error": True}],
    }
    messages = [user("weather?"), {"role": "assistant", "content": first["content"]}, result]
    second = client.post(url, json={**body, "messages": messages}, headers=CLAUDE_HEADERS).json()
    assert second["content"][-1] == {"type": "text", "text": "Tool results: Sunny (error)"}


def test_claude_length_and_count_tokens(claude: FakeClaude, client: httpx2.Client) -> None:
    data = client.post(
        claude.url + "/v1/messages", json=claude_body(user("long"), max_tokens=5), headers=CLAUDE_HEADERS
    ).json()
    assert data["stop_reason"] == "max_tokens" and len(data["content"][0]["text"].split()) == 5
    body = {"model": "claude-sonnet-4-5", "messages": [user("one two three")], "system": "four"}
    counted = client.post(claude.url + "/v1/messages/count_tokens", json=body, headers=CLAUDE_HEADERS)
    assert counted.json() == {"input_tokens": 4}
    invalid = client.post(
        claude.url + "/v1/messages/count_tokens", json={**body, "messages": []}, headers=CLAUDE_HEADERS
    )
    assert invalid.status_code == 400


def _claude_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parses and checks the grammar: start, ping, strictly ordered blocks, message_delta, message_stop."""
    events = [(f["event"], json.loads(f["data"])) for f in parse_sse(raw)]
    assert all(name == data["type"] for name, data in events)
    assert [n for n, _ in events[:2]] == ["message_start", "ping"]
    assert [n for n, _ in events[-2:]] == ["message_delta", "message_stop"]
    open_index, next_index = None, 0
    for name, data in events[2:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = next_index
        elif name == "content_block_delta":
            assert data["index"] == open_index
        else:
            assert name == "content_block_stop" and data["index"] == open_index
            open_index, next_index = None, next_index + 1
    assert open_index is None
    return events


def _claude_blocks(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for name, data in events:
        if name == "content_block_start":
            blocks.append({**data["content_block"], "partial": ""})
        elif name == "content_block_delta":
            delta, block = data["delta"], blocks[-1]
            key = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}.get(
                delta["type"]
            )
            if key:
                block[key] += delta[key]
            else:
                block["partial"] += delta["partial_json"]
    for block in blocks:
        partial = block.pop("partial")
        if block["type"] == "tool_use":
            block["input"] = json.loads(partial)
    return blocks


def test_claude_stream_matches_unary(claude: FakeClaude, client: httpx2.Client) -> None:
    body = claude_body(user("parallel weather"), max_tokens=4096, thinking=THINKING, tools=CLAUDE_TOOLS)
    unary = client.post(claude.url + "/v1/messages", json=body, headers=CLAUDE_HEADERS).json()
    response = client.post(claude.url + "/v1/messages", json={**body, "stream": True}, headers=CLAUDE_HEADERS)
    events = _claude_events(response.content)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    names = [d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert names[-1] == "signature_delta" and set(names[:-1]) == {"thinking_delta"}
    json_deltas = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert len([j for j in json_deltas if j]) > 1
    blocks = _claude_blocks(events)
    assert [{k: v for k, v in b.items() if k != "id"} for b in blocks] == [
        {k: v for k, v in b.items() if k != "id"} for b in unary["content"]
    ]
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == unary["usage"]["output_tokens"]


def test_claude_text_after_tool_use_opens_new_block() -> None:
    with FakeClaude(api_key=KEY, text_after_tool_use="Checking now.") as fake:
        body = claude_body(user("weather?"), tools=CLAUDE_TOOLS, stream=True)
        events = _claude_events(httpx2.post(fake.url + "/v1/messages", json=body, headers=CLAUDE_HEADERS).content)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["tool_use", "text"]
    assert _claude_blocks(events)[1] == {"type": "text", "text": "Checking now."}


def test_claude_overloaded_mid_stream(claude: FakeClaude, client: httpx2.Client) -> None:
    claude.faults.append(Fault(kind="overloaded_mid_stream"))
    response = client.post(claude.url + "/v1/messages", json=claude_body(stream=True), headers=CLAUDE_HEADERS)
    frames = parse_sse(response.content)
    names = [f["event"] for f in frames]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert json.loads(frames[-1]["data"])["error"]["type"] == "overloaded_error"
    claude.faults.append(Fault(kind="overloaded_mid_stream"))
    unary = client.post(claude.url + "/v1/messages", json=claude_body(), headers=CLAUDE_HEADERS)
    assert unary.status_code == 529 and unary.json()["error"]["type"] == "overloaded_error"


# -- OpenAI Responses -----------------------------------------------------------------------------------
def responses_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "input": "hi", **extra}


def function_call(call_id: str, arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": arguments}


def function_output(call_id: str, output: str = "Sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def test_responses_auth(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    response = client.post(
        responses.url + "/v1/responses", json=responses_body(), headers={"authorization": "Bearer x"}
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


STRICT_TOOL = {**RESPONSES_TOOLS[0], "strict": True}
RESPONSES_INVALID = [
    ({"input": "hi"}, 400, "Missing required parameter: 'model'"),
    (responses_body(previous_response_id="resp_1"), 400, "Previous response with id 'resp_1' not found"),
    ({"model": "m"}, 400, "Missing required parameter: 'input'"),
    (responses_body(input=[user("hi"), function_output("call_1")]), 400, "No tool call found for function call output"),
    (responses_body(input=[user("hi"), function_call("call_1")]), 400, "No tool output found for function call call_1"),
    (
        responses_body(input=[user("hi"), function_call("call_1", "{x"), function_output("call_1")]),
        400,
        "not valid JSON",
    ),
    (responses_body(tools=CHAT_TOOLS), 400, "Missing required parameter: 'tools[0].name'"),
    (responses_body(tools=[{**RESPONSES_TOOLS[0], "name": "get weather"}]), 400, "does not match pattern"),
    (responses_body(tools=[STRICT_TOOL]), 400, "'additionalProperties' is required to be supplied and to be false"),
    (
        responses_body(
            tools=[{**STRICT_TOOL, "parameters": {**STRICT_TOOL["parameters"], "additionalProperties": False}}]
        ),
        400,
        "Missing 'city'",
    ),
    (responses_body(max_output_tokens=8), 400, "Expected a value >= 16"),
    (
        responses_body(input=[{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]),
        400,
        "Supported values are: 'output_text' and 'refusal'",
    ),
    (responses_body(input=[{"type": "item_reference", "id": "x"}]), 400, "Invalid value: 'item_reference'"),
    (responses_body(input=[{"role": "tool", "content": "x"}]), 400, "Invalid value: 'tool'"),
    (
        responses_body(
            input=[{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "forged"}, user("hi")]
        ),
        400,
        "could not be verified",
    ),
    (
        responses_body(input=[{"type": "reasoning", "id": "rs_1", "summary": []}, user("hi")]),
        404,
        "Item with id 'rs_1' not found",
    ),
    (responses_body(input=[{"type": "reasoning", "id": "rs_1"}, user("hi")]), 400, "'input[0].summary'"),
]


@pytest.mark.parametrize(("body", "status", "message"), RESPONSES_INVALID)
def test_responses_validation(
    responses: FakeOpenAIResponses, client: httpx2.Client, body: dict, status: int, message: str
) -> None:
    response = client.post(responses.url + "/v1/responses", json=body, headers=CHAT_HEADERS)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_responses_unary_text(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    body = responses_body(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}], instructions="be nice"
    )
    data = client.post(responses.url + "/v1/responses", json=body, headers=CHAT_HEADERS).json()
    assert data["id"].startswith("resp_") and data["object"] == "response" and data["status"] == "completed"
    [message] = data["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["content"][0] == {
        "type": "output_text",
        "text": "Hello! You said: hi there",
        "annotations": [],
        "logprobs": [],
    }
    usage = data["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (4, 5, 9)
    assert usage["input_tokens_details"] == {"cached_tokens": 0} and usage["output_tokens_details"] == {
        "reasoning_tokens": 0
    }


def test_responses_input_image(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"}
    body = responses_body(input=[{"role": "user", "content": [image, {"type": "input_image", "file_id": "file-1"}]}])
    data = client.post(responses.url + "/v1/responses", json=body, headers=CHAT_HEADERS).json()
    expected = f"I see 2 image(s): image/png {PNG_SIZE} bytes, file:file-1"
    assert data["output"][0]["content"][0]["text"] == expected


def test_responses_reasoning_tool_round_trip(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    url = responses.url + "/v1/responses"
    body = responses_body(
        input=[user("weather?")],
        tools=RESPONSES_TOOLS,
        reasoning={"effort": "low"},
        include=["reasoning.encrypted_content"],
        store=False,
    )
    first = client.post(url, json=body, headers=CHAT_HEADERS).json()
    reasoning, call = first["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"][0]["text"] == brain.THINKING_TEXT
    assert reasoning["encrypted_content"] in responses.issued_encrypted_reasoning
    assert call["type"] == "function_call" and call["call_id"].startswith("call_") and call["id"].startswith("fc_")
    assert (
        json.loads(call["arguments"]) == {"city": "Paris"}
        and first["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
    )
    replay = [user("weather?"), reasoning, call, function_output(call["call_id"], "Sunny")]
    second = client.post(url, json={**body, "input": replay}, headers=CHAT_HEADERS).json()
    assert second["output"][-1]["content"][0]["text"] == "Tool results: Sunny"
    bare = {k: v for k, v in reasoning.items() if k != "encrypted_content"}
    stateless = client.post(
        url,
        json={**body, "input": [user("weather?"), bare, call, function_output(call["call_id"])]},
        headers=CHAT_HEADERS,
    )
    assert stateless.status_code == 404


def test_responses_incomplete(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    data = client.post(
        responses.url + "/v1/responses", json=responses_body(input="long", max_output_tokens=16), headers=CHAT_HEADERS
    ).json()
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert len(data["output"][0]["content"][0]["text"].split()) == 16


def _responses_events(raw: bytes) -> list[dict[str, Any]]:
    frames = parse_sse(raw)
    events = [json.loads(f["data"]) for f in frames]
    assert [f["event"] for f in frames] == [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    return events


def test_responses_stream_text(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    body = responses_body(input="hi there", reasoning={"effort": "low"}, stream=True)
    events = _responses_events(client.post(responses.url + "/v1/responses", json=body, headers=CHAT_HEADERS).content)
    types = [e["type"] for e in events]
    assert types[2:7] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
    ]
    message_start = types.index("response.content_part.added")
    assert types[message_start - 1] == "response.output_item.added"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Hello! ", "You ", "said: ", "hi ", "there"]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["status"] == "completed" and [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens"] == 10
    assert all(e["output_index"] == 1 for e in events if e["type"] == "response.output_text.delta")


def test_responses_stream_function_calls_and_incomplete(responses: FakeOpenAIResponses, client: httpx2.Client) -> None:
    url = responses.url + "/v1/responses"
    body = responses_body(input="parallel weather", tools=RESPONSES_TOOLS, stream=True)
    events = _responses_events(client.post(url, json=body, headers=CHAT_HEADERS).content)
    for index, city in ((0, "Paris"), (1, "Tokyo")):
        fragments = [
            e["delta"]
            for e in events
            if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == index
        ]
        done = next(
            e for e in events if e["type"] == "response.function_call_arguments.done" and e["output_index"] == index
        )
        assert (
            len(fragments) > 1
            and "".join(fragments) == done["arguments"]
            and json.loads(done["arguments"]) == {"city": city}
        )
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [a["arguments"] for a in added] == ["", ""] and added[0]["call_id"] != added[1]["call_id"]
    assert events[-1]["type"] == "response.completed"
    truncated = _responses_events(
        client.post(
            url, json=responses_body(input="long", max_output_tokens=20, stream=True), headers=CHAT_HEADERS
        ).content
    )
    assert truncated[-1]["type"] == "response.incomplete" and truncated[-1]["response"]["status"] == "incomplete"


# -- Gemini ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "query", "status", "marker"),
    [
        ({}, "", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "wrong"}, "", 400, "INVALID_ARGUMENT"),
        ({}, "?key=wrong", 400, "INVALID_ARGUMENT"),
        ({}, f"?key={KEY}", 200, None),
    ],
)
def test_gemini_auth(
    gemini: FakeGemini, client: httpx2.Client, headers: dict, query: str, status: int, marker: str | None
) -> None:
    response = client.post(gemini.url + GEMINI_PATH + query, json=gemini_body(), headers=headers)
    assert response.status_code == status
    if marker:
        assert response.json()["error"]["status"] == marker


def _decl(parameters: Any, name: str = "get_weather") -> list[dict[str, Any]]:
    return [{"functionDeclarations": [{"name": name, "parameters": parameters}]}]


def _with_prop(extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": "OBJECT", "properties": {"city": {"type": "STRING", **extra}}}


GEMINI_INVALID = [
    ({"contents": []}, "contents is not specified"),
    (gemini_body({"role": "assistant", "parts": [{"text": "x"}]}), "Please use a valid role: user, model."),
    (gemini_body({"role": "user", "parts": []}), "contents.parts must not be empty"),
    (gemini_body({"role": "user", "parts": [{"image": "x"}]}), "Unknown name \"image\" at 'contents[0].parts[0]'"),
    (gemini_body({"role": "user", "parts": [{"thought": True}]}), "oneof field 'data'"),
    (
        gemini_body(
            {"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": PNG_B64}}]}
        ),
        "already set",
    ),
    (
        gemini_body(gemini_user("hi"), gemini_calls("get_weather", "get_weather"), gemini_responses("get_weather")),
        "number of function response parts is equal to the number of function call parts",
    ),
    (gemini_body(gemini_user("hi"), gemini_calls("get_weather"), gemini_responses("other")), "names match"),
    (gemini_body(gemini_user("hi"), gemini_responses("get_weather")), "function response turn comes immediately after"),
    (
        gemini_body(gemini_user("hi"), {"role": "model", "parts": [{"text": "x"}]}, gemini_calls("get_weather")),
        "function call turn comes immediately after",
    ),
    (
        gemini_body(gemini_user("hi"), gemini_calls("get_weather"), gemini_responses("get_weather", response="Sunny")),
        "Invalid value at 'contents[2].parts[0].function_response.response' (type.googleapis.com/",
    ),
    (
        gemini_body(
            gemini_user("hi"), gemini_calls("get_weather"), gemini_responses("get_weather", response=["Sunny"])
        ),
        "Proto field is not repeating, cannot start list",
    ),
    (
        gemini_body(
            tools=_decl(
                _with_prop({"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "additionalProperties": False})
            )
        ),
        "Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters.properties[0].value'",
    ),
    (gemini_body(tools=_decl({**GEMINI_PARAMS, "title": "Weather"})), 'Unknown name "title"'),
    (gemini_body(tools=_decl(_with_prop({"type": ["string", "null"]}))), "cannot start list"),
    (gemini_body(tools=_decl(_with_prop({"type": "text"}))), "Invalid value at"),
    (gemini_body(tools=_decl({"type": "object", "properties": {}})), "should be non-empty for OBJECT type"),
    (gemini_body(tools=_decl(GEMINI_PARAMS, name="1weather")), "Invalid function name"),
    (gemini_body(tools=[{"retrieval": {}}]), "Unknown name \"retrieval\" at 'tools[0]'"),
    (
        gemini_body(generationConfig={"thinkingConfig": {"thinkingBudget": 128, "thinkingLevel": "low"}}),
        "only one of thinking budget and thinking level",
    ),
    (gemini_body(generationConfig={"max_tokens": 5}), "Unknown name \"max_tokens\" at 'generation_config'"),
    (gemini_body(model_settings={}), 'Unknown name "model_settings"'),
    (
        gemini_body(
            gemini_user("hi"), gemini_calls("get_weather", signature="not base64!"), gemini_responses("get_weather")
        ),
        "Base64 decoding failed",
    ),
]


@pytest.mark.parametrize(("body", "message"), GEMINI_INVALID)
def test_gemini_validation(gemini: FakeGemini, client: httpx2.Client, body: dict, message: str) -> None:
    response = client.post(gemini.url + GEMINI_PATH, json=body, headers=GEMINI_HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and message in error["message"]


@pytest.mark.parametrize(
    "keyword",
    [
        "additionalProperties",
        "$schema",
        "$ref",
        "$defs",
        "default",
        "const",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "propertyNames",
        "title",
    ],
)
def test_gemini_rejects_schema_keywords(gemini: FakeGemini, client: httpx2.Client, keyword: str) -> None:
    body = gemini_body(tools=_decl(_with_prop({keyword: 1})))
    response = client.post(gemini.url + GEMINI_PATH, json=body, headers=GEMINI_HEADERS)
    assert response.status_code == 400
    path = "tools[0].function_declarations[0].parameters.properties[0].value"
    assert (
        response.json()["error"]["message"]
        == f"Invalid JSON payload received. Unknown name \"{keyword}\" at '{path}': Cannot find field."
    )


def test_gemini_accepts_property_named_title_and_snake_case(gemini: FakeGemini, client: httpx2.Client) -> None:
    parameters = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    }
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "tool please"}, {"inline_data": {"mime_type": "image/png", "data": PNG_B64}}],
            }
        ],
        "system_instruction": {"parts": [{"text": "be nice"}]},
        "tools": [{"function_declarations": [{"name": "lookup", "parameters": parameters}]}],
        "generation_config": {"max_output_tokens": 100, "thinking_config": {"thinking_budget": 0}},
    }
    response = client.post(gemini.url + GEMINI_PATH, json=body, headers=GEMINI_HEADERS)
    assert response.status_code == 200, response.text
    part = response.json()["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "lookup", "args": {"city": "Paris"}}}


def test_gemini_3_requires_signature_on_first_call_of_current_turn(gemini: FakeGemini, client: httpx2.Client) -> None:
    path = "/v1beta/models/gemini-3-pro-preview:generateContent"
    unsigned = gemini_body(
        gemini_user("weather?"), gemini_calls("get_weather"), gemini_responses("get_weather"), tools=GEMINI_TOOLS
    )
    response = client.post(gemini.url + path, json=unsigned, headers=GEMINI_HEADERS)
    assert response.status_code == 400 and "missing a thought_signature" in response.json()["error"]["message"]
    assert client.post(gemini.url + GEMINI_PATH, json=unsigned, headers=GEMINI_HEADERS).status_code == 200
    older_turn = {
        "contents": [*unsigned["contents"], {"role": "model", "parts": [{"text": "ok"}]}, gemini_user("thanks")]
    }
    assert client.post(gemini.url + path, json=older_turn, headers=GEMINI_HEADERS).status_code == 200
    first = client.post(
        gemini.url + path, json=gemini_body(gemini_user("parallel weather"), tools=GEMINI_TOOLS), headers=GEMINI_HEADERS
    ).json()
    model_turn = first["candidates"][0]["content"]
    assert ["thoughtSignature" in p for p in model_turn["parts"]] == [True, False]
    replay = gemini_body(
        gemini_user("parallel weather"), model_turn, gemini_responses("get_weather", "get_weather"), tools=GEMINI_TOOLS
    )
    second = client.post(gemini.url + path, json=replay, headers=GEMINI_HEADERS).json()
    assert second["candidates"][0]["content"]["parts"] == [{"text": "Tool results: Sunny; Sunny"}]


def test_gemini_unary_thinking_and_usage(gemini: FakeGemini, client: httpx2.Client) -> None:
    body = gemini_body(
        gemini_user("hi there " + LONG_PROMPT), generationConfig={"thinkingConfig": {"includeThoughts": True}}
    )
    data = client.post(gemini.url + GEMINI_PATH, json=body, headers=GEMINI_HEADERS).json()
    candidate = data["candidates"][0]
    thought, text = candidate["content"]["parts"]
    assert thought["thought"] is True and thought["text"] == brain.THINKING_TEXT and thought["thoughtSignature"]
    assert text["text"].startswith("Hello! You said: hi there") and candidate["finishReason"] == "STOP"
    assert candidate["content"]["role"] == "model" and data["modelVersion"] == "gemini-2.5-flash" and data["responseId"]
    usage = data["usageMetadata"]
    assert usage["promptTokenCount"] == 122 and usage["cachedContentTokenCount"] == brain.CACHED_TOKENS
    assert usage["thoughtsTokenCount"] == 5
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"] + 5
    plain = client.post(gemini.url + GEMINI_PATH, json=gemini_body(), headers=GEMINI_HEADERS).json()["usageMetadata"]
    assert "thoughtsTokenCount" not in plain and "cachedContentTokenCount" not in plain


def test_gemini_max_tokens_and_tool_error_result(gemini: FakeGemini, client: httpx2.Client) -> None:
    data = client.post(
        gemini.url + GEMINI_PATH,
        json=gemini_body(gemini_user("long"), generationConfig={"maxOutputTokens": 3}),
        headers=GEMINI_HEADERS,
    ).json()
    assert (
        data["candidates"][0]["finishReason"] == "MAX_TOKENS"
        and data["candidates"][0]["content"]["parts"][0]["text"] == "The quick brown"
    )
    body = gemini_body(
        gemini_user("weather?"),
        gemini_calls("get_weather"),
        gemini_responses("get_weather", response={"error": "boom"}),
    )
    data = client.post(gemini.url + GEMINI_PATH, json=body, headers=GEMINI_HEADERS).json()
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Tool results: boom (error)"


def test_gemini_stream(gemini: FakeGemini, client: httpx2.Client) -> None:
    body = gemini_body(gemini_user("unicode"), generationConfig={"thinkingConfig": {"includeThoughts": True}})
    response = client.post(gemini.url + GEMINI_STREAM_PATH, json=body, headers=GEMINI_HEADERS)
    assert response.headers["content-type"] == "text/event-stream"
    raw = response.content
    assert raw.startswith(b"data: {") and raw.endswith(b"}\r\n\r\n") and b"\n\n" not in raw.replace(b"\r\n\r\n", b"")
    chunks = [json.loads(f["data"]) for f in parse_sse(raw)]
    assert len(chunks) > 3 and len({c["responseId"] for c in chunks}) == 1
    assert ["finishReason" in c["candidates"][0] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert "".join(p["text"] for p in parts if p.get("thought")) == brain.THINKING_TEXT
    assert "".join(p["text"] for p in parts if not p.get("thought")) == brain.UNICODE_TEXT
    assert [("thoughtSignature" in p) for p in parts if p.get("thought")][-1] is True
    assert (
        "candidatesTokenCount" in chunks[-1]["usageMetadata"]
        and "candidatesTokenCount" not in chunks[0]["usageMetadata"]
    )


def test_gemini_stream_tool_calls_and_json_array_mode(gemini: FakeGemini, client: httpx2.Client) -> None:
    body = gemini_body(gemini_user("parallel weather"), tools=GEMINI_TOOLS)
    chunks = [
        json.loads(f["data"])
        for f in parse_sse(client.post(gemini.url + GEMINI_STREAM_PATH, json=body, headers=GEMINI_HEADERS).content)
    ]
    [chunk] = chunks
    calls = [p["functionCall"]["args"]["city"] for p in chunk["candidates"][0]["content"]["parts"]]
    assert calls == ["Paris", "Tokyo"] and chunk["candidates"][0]["finishReason"] == "STOP"
    array_path = GEMINI_STREAM_PATH.removesuffix("?alt=sse")
    array = client.post(gemini.url + array_path, json=gemini_body(), headers=GEMINI_HEADERS).json()
    assert (
        isinstance(array, list)
        and "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in array) == "Hello! You said: hi"
    )
