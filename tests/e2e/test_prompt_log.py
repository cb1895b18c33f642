"""Prompt logs, the system prompt and usage accounting, through the real gateway and the real SDKs.

The gateway here runs with prompt_log.mode=file and a system prompt file. Each test checks what
a client received against what landed in the log (text, tool calls, usage), what the fake
upstreams received (the system prompt), and what /usage reports.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from google.genai import types

from tests.conftest import CLAUDE_KEY, CLIENT_KEY, OPENAI_KEY, RESPONSES_KEY, Fakes, api_key_providers
from tests.drivers import MODEL, RESULTS, WEATHER_SCHEMA, ChatDriver, ClaudeDriver, GeminiDriver, ResponsesDriver
from tests.fakes import brain
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

PROVIDERS = ["openai-custom", "claude-custom", "openaiResponses-custom"]
ACCOUNTS = {"openai-custom": "oa", "claude-custom": "cl", "openaiResponses-custom": "rs"}
CLIENTS = ["openai_chat", "openai_responses", "claude", "gemini"]
SYSTEM_TEXT = "You are the gateway's test persona. Answer briefly."
SECRET_IN_PROMPT = "sk-user-secret-4be1d2"


@dataclass
class Received:
    """What a client saw: answer text, tool calls (name, arguments), usage as its dialect reports it."""

    text: str
    calls: list[tuple[str, dict]]
    input_tokens: int
    output_tokens: int


@dataclass
class Logged:
    gw: GatewayProcess
    workdir: Path

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"


def gateway_config(fakes: Fakes, **extra: Any) -> dict:
    return {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": api_key_providers(fakes),
        **extra,
    }


@pytest.fixture(scope="module")
def logged(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    workdir = tmp_path_factory.mktemp("prompt-log")
    (workdir / "system.txt").write_text(SYSTEM_TEXT + "\n", encoding="utf-8")
    config = gateway_config(
        fakes,
        prompt_log={"mode": "file", "dir": "logs", "redact": [r"sk-user-secret-\w+"]},
        system_prompt={"file": "system.txt", "mode": "overwrite"},
        # An upstream cut cools the (only) account; the tests after the cut tests need it back at once.
        cooldown={"transient": 0},
    )
    gw = start_gateway(workdir, config)
    yield Logged(gw, workdir)
    gw.stop()


def read_records(logs: Path) -> list[dict]:
    records = []
    for path in sorted(logs.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            records.append(json.loads(line))  # every line must be whole JSON
    return records


def wait_record(logs: Path, marker: str, timeout: float = 10.0) -> dict:
    """The record whose first user message contains `marker` (the writer thread may lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in read_records(logs) if logs.exists() else []:
            users = [m for m in record["messages"] if m["role"] == "user"]
            if users and marker in json.dumps(users[0]["content"], ensure_ascii=False):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no prompt log record for {marker!r}")
        time.sleep(0.05)


# -- the four clients, reporting what they received ------------------------------------------------

GEMINI_TOOLS = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA)
    ]
)


def ask(dialect: str, url: str, provider: str, prompt: str, *, stream: bool, tools: bool = False,
        system: str | None = None) -> Received:  # fmt: skip
    if dialect == "openai_chat":
        return _ask_chat(url, provider, prompt, stream, tools, system)
    if dialect == "openai_responses":
        return _ask_responses(url, provider, prompt, stream, tools, system)
    if dialect == "claude":
        return _ask_claude(url, provider, prompt, stream, tools, system)
    return _ask_gemini(url, provider, prompt, stream, tools, system)


def _ask_chat(url: str, provider: str, prompt: str, stream: bool, tools: bool, system: str | None) -> Received:
    client = ChatDriver(url, provider).client
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kw: dict[str, Any] = {"model": MODEL, "messages": messages}
    if tools:
        fn = {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA}
        kw["tools"] = [{"type": "function", "function": fn}]
    if not stream:
        r = client.chat.completions.create(**kw)
        msg = r.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
        return Received(msg.content or "", calls, r.usage.prompt_tokens, r.usage.completion_tokens)
    text, raw_calls, usage = "", {}, None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            call = raw_calls.setdefault(tc.index, ["", ""])
            call[0] = (tc.function.name if tc.function and tc.function.name else "") or call[0]
            call[1] += (tc.function.arguments or "") if tc.function else ""
    calls = [(raw_calls[i][0], json.loads(raw_calls[i][1])) for i in sorted(raw_calls)]
    assert usage is not None
    return Received(text, calls, usage.prompt_tokens, usage.completion_tokens)


def _ask_responses(url: str, provider: str, prompt: str, stream: bool, tools: bool, system: str | None) -> Received:
    driver = ResponsesDriver(url, provider)
    kw: dict[str, Any] = {"model": MODEL, "input": [{"role": "user", "content": prompt}]}
    if system:
        kw["instructions"] = system
    if tools:
        kw["tools"] = [
            {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA}
        ]
    if stream:
        events = list(driver.client.responses.create(**kw, stream=True))
        resp = next(e for e in events if e.type == "response.completed").response
    else:
        resp = driver.client.responses.create(**kw)
    calls = [(o.name, json.loads(o.arguments)) for o in resp.output if o.type == "function_call"]
    return Received(resp.output_text, calls, resp.usage.input_tokens, resp.usage.output_tokens)


def _ask_claude(url: str, provider: str, prompt: str, stream: bool, tools: bool, system: str | None) -> Received:
    driver = ClaudeDriver(url, provider)
    kw: dict[str, Any] = {"model": MODEL, "max_tokens": 512, "messages": [{"role": "user", "content": prompt}]}
    if system:
        kw["system"] = system
    if tools:
        kw["tools"] = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    if stream:
        with driver.client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = driver.client.messages.create(**kw)
    calls = [(b.name, b.input) for b in msg.content if b.type == "tool_use"]
    return Received(driver.text_of(msg), calls, msg.usage.input_tokens, msg.usage.output_tokens)


def _ask_gemini(url: str, provider: str, prompt: str, stream: bool, tools: bool, system: str | None) -> Received:
    client = GeminiDriver(url, provider).client
    config = types.GenerateContentConfig(system_instruction=system, tools=[GEMINI_TOOLS] if tools else None)
    contents = [types.Content(role="user", parts=[types.Part(text=prompt)])]
    chunks = (
        list(client.models.generate_content_stream(model=MODEL, contents=contents, config=config))
        if stream
        else [client.models.generate_content(model=MODEL, contents=contents, config=config)]
    )
    text, calls, meta = "", [], None
    for chunk in chunks:
        meta = chunk.usage_metadata or meta
        for part in chunk.candidates[0].content.parts or [] if chunk.candidates and chunk.candidates[0].content else []:
            text += part.text or ""
            if part.function_call:
                calls.append((part.function_call.name, dict(part.function_call.args)))
    assert meta is not None
    return Received(text, calls, meta.prompt_token_count or 0, meta.candidates_token_count or 0)


# -- records ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("client_dialect", CLIENTS)
def test_record_equals_what_the_client_received(logged, fakes, client_dialect, provider, stream):
    marker = uuid.uuid4().hex[:10]
    got = ask(client_dialect, logged.gw.url, provider, f"hi there {marker}", stream=stream)
    assert got.text == f"Hello! You said: hi there {marker}"
    record = wait_record(logged.logs, marker)
    assert record["status"] == "ok" and record["finish_reason"] == "stop"
    assert record["client_dialect"] == client_dialect
    assert (record["provider"], record["account"]) == (provider, ACCOUNTS[provider])
    assert record["model"] == record["upstream_model"] == MODEL
    assert record["stream"] is stream
    assert len(record["client_key_id"]) == 12 and CLIENT_KEY not in json.dumps(record)
    assert record["client_key_name"] == f"key-{record['client_key_id']}"
    assert record["latency_ms"] >= 0
    assert (record["ttft_ms"] is not None) is stream
    assert record["messages"] == [
        {"role": "system", "content": SYSTEM_TEXT},
        {"role": "user", "content": f"hi there {marker}"},
        {"role": "assistant", "content": got.text},
    ]
    usage = record["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (got.input_tokens, got.output_tokens)
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert record["tools"] == []


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("client_dialect", CLIENTS)
def test_tool_call_record_equals_what_the_client_received(logged, fakes, client_dialect, provider, stream):
    marker = uuid.uuid4().hex[:10]
    got = ask(client_dialect, logged.gw.url, provider, f"parallel weather please {marker}", stream=stream, tools=True)
    assert got.calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    record = wait_record(logged.logs, marker)
    answer = record["messages"][-1]
    assert answer["role"] == "assistant" and not answer.get("content")
    logged_calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in answer["tool_calls"]]
    assert logged_calls == got.calls
    assert all(c["type"] == "function" and c["id"] for c in answer["tool_calls"])
    assert record["finish_reason"] == "tool_calls"
    assert record["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
        }
    ]
    usage = record["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (got.input_tokens, got.output_tokens)


def test_tool_round_trip_is_logged_as_one_growing_conversation(logged, fakes):
    """The second leg's record holds the calls, the results as tool messages and the final answer."""
    marker = uuid.uuid4().hex[:10]
    client = ChatDriver(logged.gw.url, "claude-custom")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    messages: list[dict] = [{"role": "user", "content": f"parallel weather please {marker}"}]
    _, calls = client.ask(messages, True, tools)
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ],
        }
    )
    for c in calls:
        messages.append(
            {"role": "tool", "tool_call_id": c["id"], "content": RESULTS[json.loads(c["arguments"])["city"]]}
        )
    answer, _ = client.ask(messages, True, tools)
    assert answer == "Tool results: Sunny, 21C; Rainy, 14C"
    deadline = time.monotonic() + 10
    while True:
        legs = [r for r in read_records(logged.logs) if marker in json.dumps(r["messages"][1])]
        if len(legs) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(legs) == 2
    second = max(legs, key=lambda r: len(r["messages"]))
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert [m["content"] for m in second["messages"][3:5]] == ["Sunny, 21C", "Rainy, 14C"]
    assert second["messages"][-1]["content"] == answer
    first = min(legs, key=lambda r: len(r["messages"]))
    assert [c["function"]["name"] for c in first["messages"][-1]["tool_calls"]] == ["get_weather", "get_weather"]


def _stream_raw(url: str, provider: str, prompt: str, read_events: int | None) -> list[str]:
    """A raw Chat stream read with httpx; stops after `read_events` data lines (None: until the end)."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    seen: list[str] = []
    with (
        httpx2.Client(timeout=10) as client,
        client.stream("POST", f"{url}/{provider}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        try:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    seen.append(line)
                    if read_events is not None and len(seen) >= read_events:
                        break
        except httpx2.HTTPError:
            pass  # the client hung up (read_events reached)
    return seen


def _partial_text(record: dict) -> str:
    answer = record["messages"][-1]
    assert answer["role"] == "assistant"
    return answer["content"] or ""


def test_stream_cut_by_the_client_is_logged_with_what_arrived(logged, fakes):
    marker = uuid.uuid4().hex[:10]
    fakes.claude.write_delay = 0.02  # 60 words: long enough to hang up in the middle
    try:
        seen = _stream_raw(logged.gw.url, "claude-custom", f"long please {marker}", read_events=4)
        assert len(seen) == 4
        record = wait_record(logged.logs, marker)
    finally:
        fakes.claude.write_delay = 0.0
    assert record["status"] == "client_cut"
    assert record["finish_reason"] is None
    assert "Client disconnected" in record["error"]
    text = _partial_text(record)
    assert text and brain.LONG_TEXT.startswith(text) and len(text) < len(brain.LONG_TEXT)
    assert record["usage"]["input_tokens"] > 0  # Claude reports input tokens at message_start


@pytest.mark.parametrize("provider", ["openai-custom", "claude-custom"])
def test_stream_cut_by_the_upstream_is_logged_with_what_arrived(logged, fakes, provider):
    marker = uuid.uuid4().hex[:10]
    fake = fakes.openai if provider == "openai-custom" else fakes.claude
    fake.faults.append(Fault(kind="reset_mid_stream", after_events=8))
    _stream_raw(logged.gw.url, provider, f"long please {marker}", read_events=None)
    record = wait_record(logged.logs, marker)
    assert record["status"] == "upstream_cut"
    assert record["finish_reason"] is None
    assert record["error"]
    text = _partial_text(record)
    assert text and brain.LONG_TEXT.startswith(text) and len(text) < len(brain.LONG_TEXT)


def test_upstream_error_is_logged_without_an_answer(logged, fakes):
    marker = uuid.uuid4().hex[:10]
    fakes.openai.faults.append(Fault(status=400))
    with pytest.raises(Exception, match="400"):
        ask("openai_chat", logged.gw.url, "openai-custom", f"hi there {marker}", stream=False)
    record = wait_record(logged.logs, marker)
    assert record["status"] == "error"
    assert record["http_status"] == 400
    assert record["messages"][-1]["role"] == "user"


def test_redaction_and_no_secret_in_any_log(logged, fakes):
    marker = uuid.uuid4().hex[:10]
    got = ask("claude", logged.gw.url, "openai-custom", f"hi there {marker} {SECRET_IN_PROMPT}", stream=True)
    assert SECRET_IN_PROMPT in got.text  # the client gets its answer unredacted
    record = wait_record(logged.logs, marker)
    assert record["messages"][1]["content"] == f"hi there {marker} [REDACTED]"
    assert record["messages"][-1]["content"] == f"Hello! You said: hi there {marker} [REDACTED]"
    texts = [p.read_text(encoding="utf-8") for p in logged.logs.iterdir()]
    texts.append(logged.gw.log())
    assert texts[0]
    for secret in (CLIENT_KEY, OPENAI_KEY, CLAUDE_KEY, RESPONSES_KEY, SECRET_IN_PROMPT):
        assert not any(secret in text for text in texts), secret
    for text in texts[:-1]:
        assert "authorization" not in text.lower() and "x-api-key" not in text.lower()
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in logged.logs.iterdir())


# -- the system prompt ----------------------------------------------------------------------------


def upstream_system(provider: str, body: dict) -> str:
    """The system text as the fake upstream received it."""
    if provider == "claude-custom":
        system = body.get("system") or ""
        return system if isinstance(system, str) else "\n\n".join(b["text"] for b in system)
    if provider == "openai-custom":
        items, texts = body["messages"], []
    else:
        items, texts = [i for i in body["input"] if isinstance(i, dict)], [body.get("instructions") or ""]
    for item in items:
        if item.get("role") in ("system", "developer"):
            content = item["content"]
            texts.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
    return "\n\n".join(t for t in texts if t)


def fake_for(fakes: Fakes, provider: str):
    return {"openai-custom": fakes.openai, "claude-custom": fakes.claude, "openaiResponses-custom": fakes.responses}[
        provider
    ]


@pytest.mark.parametrize("client_dialect", CLIENTS)
def test_system_prompt_overwrite_reaches_every_upstream(logged, fakes, client_dialect):
    for provider in PROVIDERS:
        marker = uuid.uuid4().hex[:10]
        got = ask(client_dialect, logged.gw.url, provider, f"hi there {marker}", stream=False, system="client rules")
        assert got.text == f"Hello! You said: hi there {marker}"
        sent = fake_for(fakes, provider).last_request.json
        assert upstream_system(provider, sent) == SYSTEM_TEXT, provider
        assert marker not in json.dumps(sent.get("system") or sent.get("instructions") or "")


def test_system_prompt_file_change_is_picked_up(logged, fakes):
    path = logged.workdir / "system.txt"
    try:
        path.write_text("Changed persona.\n", encoding="utf-8")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # a clearly newer mtime
        for client_dialect in CLIENTS:
            ask(client_dialect, logged.gw.url, "claude-custom", "hi there", stream=True, system="client rules")
            assert upstream_system("claude-custom", fakes.claude.last_request.json) == "Changed persona."
    finally:
        path.write_text(SYSTEM_TEXT + "\n", encoding="utf-8")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000_000))
    ask("openai_chat", logged.gw.url, "claude-custom", "hi there", stream=False)
    assert upstream_system("claude-custom", fakes.claude.last_request.json) == SYSTEM_TEXT


def test_system_prompt_append_with_replacements(fakes, tmp_path):
    (tmp_path / "extra.txt").write_text("Always cite sources.\n", encoding="utf-8")
    config = gateway_config(
        fakes,
        system_prompt={
            "file": "extra.txt",
            "mode": "append",
            "replacements": [{"old": "client", "new": "customer"}],
        },
    )
    gw = start_gateway(tmp_path, config)
    try:
        for client_dialect in CLIENTS:
            for provider in PROVIDERS:
                ask(client_dialect, gw.url, provider, "hi there", stream=True, system="client rules")
                sent = fake_for(fakes, provider).last_request.json
                assert upstream_system(provider, sent) == "customer rules\n\nAlways cite sources.", provider
                # No system from the client: only the file -- never the user's message.
                marker = uuid.uuid4().hex[:10]
                ask(client_dialect, gw.url, provider, f"hi there {marker}", stream=False)
                sent = fake_for(fakes, provider).last_request.json
                assert upstream_system(provider, sent) == "Always cite sources.", provider
                assert marker not in upstream_system(provider, sent)
    finally:
        gw.stop()
    assert not list(tmp_path.glob("prompt-logs*"))  # prompt_log.mode defaults to none


def test_missing_system_prompt_file_stops_the_start(fakes, tmp_path):
    config = gateway_config(fakes, system_prompt={"file": "nowhere.txt"})
    with pytest.raises(RuntimeError) as e:
        start_gateway(tmp_path, config, timeout=15)
    assert "system_prompt.file" in str(e.value) and "nowhere.txt" in str(e.value)


# -- usage ------------------------------------------------------------------------------------------


def _usage(url: str) -> dict:
    r = httpx2.get(f"{url}/usage", headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
    assert r.status_code == 200
    return r.json()


def test_usage_totals_match_the_upstreams_and_survive_a_restart(fakes, tmp_path):
    gw = start_gateway(tmp_path, gateway_config(fakes))
    expected: dict[tuple[str, str], list[int]] = {}
    try:
        assert httpx2.get(f"{gw.url}/usage", timeout=10).status_code == 401
        for client_dialect in CLIENTS:
            for provider in ("openai-custom", "claude-custom"):
                for stream in (False, True):
                    got = ask(client_dialect, gw.url, provider, "hi there", stream=stream, tools=stream)
                    row = expected.setdefault((provider, ACCOUNTS[provider]), [0, 0, 0])
                    row[0] += 1
                    row[1] += got.input_tokens
                    row[2] += got.output_tokens
        fakes.openai.faults.append(Fault(status=500))
        with pytest.raises(Exception, match="500"):
            ask("openai_chat", gw.url, "openai-custom", "hi there", stream=False)
        usage = _usage(gw.url)
    finally:
        gw.stop()
    rows = {(r["provider"], r["account"]): r for r in usage["rows"]}
    assert set(rows) == set(expected)
    for key, (requests, input_tokens, output_tokens) in expected.items():
        row = rows[key]
        errors = 1 if key[0] == "openai-custom" else 0
        assert (row["requests"], row["errors"]) == (requests + errors, errors), key
        assert (row["input_tokens"], row["output_tokens"]) == (input_tokens, output_tokens), key
        assert row["model"] == MODEL and row["client_key_name"] == usage["client_key_name"]
    assert usage["total"]["requests"] == sum(r[0] for r in expected.values()) + 1
    assert (tmp_path / "state" / "usage.json").exists()
    gw = start_gateway(tmp_path, gateway_config(fakes))
    try:
        again = _usage(gw.url)
    finally:
        gw.stop()
    assert again["rows"] == usage["rows"] and again["total"] == usage["total"]


def test_count_tokens_includes_the_configured_system_prompt(fakes, tmp_path):
    """count_tokens must count what the upstream will receive, injected system prompt included."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    counts = []
    for extra in ({}, {"system_prompt": {"file": "system.txt", "mode": "overwrite"}}):
        workdir = tmp_path / f"gw{len(counts)}"
        workdir.mkdir()
        (workdir / "system.txt").write_text("word " * 400)
        gw = start_gateway(workdir, gateway_config(fakes, **extra))
        try:
            r = httpx2.post(
                f"{gw.url}/v1/messages/count_tokens", headers={"x-api-key": CLIENT_KEY}, json=body, timeout=30
            )
            counts.append(r.json()["input_tokens"])
        finally:
            gw.stop()
    assert counts[1] >= counts[0] + 300
