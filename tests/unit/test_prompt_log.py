"""Prompt log records and their writer: format, redaction, rotation, and crash safety (kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from addons.outcome import estimate_missing_usage
from addons.prompt_log import DailyFiles, RecordWriter, Redactor, cut_torn_tail, encode_line
from translators import ir
from translators.openai_messages import conversation, tool_definitions

REPO = Path(__file__).resolve().parents[2]


# -- the conversation in OpenAI chat format ------------------------------------------------------------


def test_conversation_is_openai_chat_with_the_answer_last():
    req = ir.Request(
        model="m",
        system=[ir.TextPart("rule one"), ir.TextPart("rule two")],
        messages=[
            ir.Message("user", [ir.TextPart("weather?"), ir.ImagePart("image/png", "iVBORw0=")]),
            ir.Message(
                "assistant",
                [
                    ir.ThinkingPart("thinking aloud", signature="c2lnabc", signature_origin="claude"),
                    ir.ThinkingPart("", redacted="opaque"),
                    ir.TextPart("Let me check."),
                    ir.ToolCallPart("call_1", "get_weather", {"city": "Paris"}),
                    ir.ToolCallPart("call_2", "get_weather", {"_raw_arguments": "{broken"}),
                ],
            ),
            ir.Message(
                "user",
                [
                    ir.ToolResultPart("call_1", [ir.TextPart("Sunny"), ir.ImagePart(url="https://x/y.png")]),
                    ir.ToolResultPart("call_2", [ir.TextPart("a"), ir.TextPart("b")], is_error=True),
                    ir.TextPart("thanks"),
                ],
            ),
        ],
        tools=[
            ir.Tool("get_weather", "Weather", {"type": "object", "properties": {}}),
            ir.Tool(
                "web_search", kind="web_search_20250305", raw={"type": "web_search_20250305", "name": "web_search"}
            ),
        ],
    )
    answer = ir.Response("r1", "m", [ir.ThinkingPart("hmm"), ir.TextPart("Sunny in "), ir.TextPart("Paris.")])
    assert conversation(req, answer) == [
        {"role": "system", "content": "rule one\n\nrule two"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0="}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "reasoning_content": "thinking aloud",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{broken"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "text", "text": "thanks"},
            ],
        },
        {"role": "assistant", "content": "Sunny in Paris.", "reasoning_content": "hmm"},
    ]
    assert tool_definitions(req) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {"type": "web_search_20250305", "name": "web_search"},
    ]


def test_answer_with_only_tool_calls_has_null_content_and_no_answer_means_no_assistant_message():
    req = ir.Request(model="m", messages=[ir.Message("user", [ir.TextPart("hi")])])
    calls = ir.Response("r", "m", [ir.ToolCallPart("c1", "f", {})], ir.FinishReason.TOOL_CALLS)
    assert conversation(req, calls)[-1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert conversation(req, None) == [{"role": "user", "content": "hi"}]


def test_an_answer_without_any_usage_gets_an_estimate_marked_as_such():
    req = ir.Request(model="m", messages=[ir.Message("user", [ir.TextPart("hello there, how are you today?")])])
    answer = ir.Response("r", "m", [ir.TextPart("Fine, thanks!"), ir.ToolCallPart("c", "f", {"a": 1})])
    estimate_missing_usage(req, answer)
    assert answer.usage.estimated and answer.usage.input_tokens > 0 and answer.usage.output_tokens > 4
    reported = ir.Response("r", "m", [ir.TextPart("x")], usage=ir.Usage(input_tokens=7, output_tokens=0))
    estimate_missing_usage(req, reported)
    assert reported.usage == ir.Usage(input_tokens=7, output_tokens=0)


# -- lines and redaction --------------------------------------------------------------------------------


def test_a_record_is_always_exactly_one_line():
    line = encode_line({"messages": [{"role": "user", "content": "a\nb\r\nc\u2028d"}]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["messages"][0]["content"] == "a\nb\r\nc\u2028d"
    lone = encode_line({"text": "bad \ud800 surrogate"})  # possible from a client's \ud800 escape
    assert lone.count(b"\n") == 1 and json.loads(lone)["text"] == "bad \ud800 surrogate"


def test_redaction_covers_content_parts_reasoning_results_and_arguments():
    redactor = Redactor([r"sk-[A-Za-z0-9]{8,}", r"\b\d{3}-\d{2}-\d{4}\b"])
    record = {
        "messages": [
            {"role": "user", "content": "key sk-abcdefgh12 and ssn 123-45-6789"},
            {"role": "user", "content": [{"type": "text", "text": "again sk-zzzzzzzzzz"}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "the key is sk-abcdefgh12",
                "tool_calls": [{"function": {"name": "f", "arguments": '{"k":"sk-abcdefgh12"}'}}],
            },
            {"role": "tool", "content": "ssn 123-45-6789"},
        ]
    }
    redactor.record(record)
    text = json.dumps(record)
    assert "sk-abcdefgh12" not in text and "123-45-6789" not in text and "sk-zzzz" not in text
    assert record["messages"][0]["content"] == "key [REDACTED] and ssn [REDACTED]"
    assert json.loads(record["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"k": "[REDACTED]"}
    assert not Redactor([])
    assert not Redactor([], ["short"])  # too short to be a credential worth matching


def test_known_secrets_are_scrubbed_anywhere_in_the_line():
    key = 'sk-upstream-"quoted"-9b8e'
    redactor = Redactor([], [key, "test-client-key-7f3a"])
    line = encode_line({"error": f"upstream said: bad key {key}", "client_key_id": "x", "k": "test-client-key-7f3a"})
    scrubbed = redactor.scrub(line)
    assert b"9b8e" not in scrubbed and b"7f3a" not in scrubbed
    assert json.loads(scrubbed) == {"error": "upstream said: bad key [SECRET]", "client_key_id": "x", "k": "[SECRET]"}


# -- files: rotation and torn tails -------------------------------------------------------------------


class Clock:
    def __init__(self, when: str) -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_one_file_per_utc_day_and_a_new_one_past_the_size_limit(tmp_path: Path):
    clock = Clock("2025-03-01T23:59:58")
    files = DailyFiles(tmp_path, max_bytes=100, clock=clock)
    line = encode_line({"n": "x" * 30})  # 41 bytes
    for _ in range(3):
        files.write(line)
    clock.now += 5  # past midnight UTC
    files.write(line)
    files.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "prompts-2025-03-01.000.jsonl",  # two lines (82 bytes) fit under 100
        "prompts-2025-03-01.001.jsonl",
        "prompts-2025-03-02.000.jsonl",
    ]
    assert [len(lines_of(tmp_path / n)) for n in names] == [2, 1, 1]
    assert all(oct((tmp_path / n).stat().st_mode & 0o777) == "0o600" for n in names)


def test_a_record_larger_than_the_limit_still_goes_whole_into_its_own_file(tmp_path: Path):
    files = DailyFiles(tmp_path, max_bytes=50, clock=Clock("2025-03-01T10:00:00"))
    files.write(encode_line({"n": "small"}))
    files.write(encode_line({"n": "y" * 200}))
    files.write(encode_line({"n": "small"}))
    files.close()
    assert [len(lines_of(p)) for p in sorted(tmp_path.iterdir())] == [1, 1, 1]


def test_restart_continues_the_days_last_file_and_cuts_a_torn_tail(tmp_path: Path):
    clock = Clock("2025-03-01T10:00:00")
    files = DailyFiles(tmp_path, max_bytes=1000, clock=clock)
    files.write(encode_line({"n": 1}))
    files.close()
    path = tmp_path / "prompts-2025-03-01.000.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"n": 2, "messages": [{"role": "us')  # what a crash inside a write could leave
    files = DailyFiles(tmp_path, max_bytes=1000, clock=clock)
    files.write(encode_line({"n": 3}))
    files.close()
    assert [r["n"] for r in lines_of(path)] == [1, 3]


def test_cut_torn_tail_scans_back_over_long_lines(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b'{"a":1}\n' + b"z" * 200_000)
    fd = os.open(path, os.O_RDWR)
    try:
        assert cut_torn_tail(fd) == 8
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"a":1}\n'
    path.write_bytes(b"no newline at all")
    fd = os.open(path, os.O_RDWR)
    try:
        assert cut_torn_tail(fd) == 0
    finally:
        os.close(fd)


# -- the writer thread ----------------------------------------------------------------------------------


class SlowDisk:
    """A target that takes 5 ms per line, like a slow or busy disk."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.threads: set[str] = set()

    def write(self, line: bytes) -> None:
        time.sleep(0.005)
        self.threads.add(threading.current_thread().name)
        self.lines.append(line)

    def close(self) -> None:
        pass


def test_submit_never_waits_for_the_disk_and_close_drains_in_order():
    disk = SlowDisk()
    writer = RecordWriter(disk, Redactor([r"secret\d"]))  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(100):
        writer.submit({"i": i, "messages": [{"role": "user", "content": f"secret{i % 10}"}]})
    assert time.perf_counter() - started < 0.05  # 100 records x 5 ms would be 0.5 s
    writer.close()
    assert [json.loads(line)["i"] for line in disk.lines] == list(range(100))
    assert all(b"secret" not in line for line in disk.lines)
    assert disk.threads == {"aiclient-prompt-log"}


WRITER_UNDER_LOAD = textwrap.dedent(
    """
    import random, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from addons.prompt_log import DailyFiles, RecordWriter
    writer = RecordWriter(DailyFiles(Path(sys.argv[1]), int(sys.argv[2])))
    rng = random.Random(1)
    i = 0
    while True:
        i += 1
        text = "".join(rng.choice("abcdé\\n\\"\\\\ 你") for _ in range(rng.randint(1, 1200)))
        writer.submit({"id": i, "messages": [{"role": "user", "content": text}]})
        if writer._queue.qsize() > 2000:
            time.sleep(0.001)
    """
)


def test_kill_9_under_load_leaves_only_whole_lines(tmp_path: Path):
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_UNDER_LOAD, str(logs), str(256 * 1024), str(REPO)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while sum(p.stat().st_size for p in logs.glob("*.jsonl")) < 3 * 1024 * 1024 if logs.exists() else True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the writer did not write 3 MB in 30 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing, with a queue full of records
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    files = sorted(logs.glob("*.jsonl"))
    assert len(files) > 5  # rotated many times while under load
    ids = []
    for path in files:
        data = path.read_bytes()
        assert data.endswith(b"\n"), path
        for line in data.splitlines():
            record = json.loads(line)  # every line is whole JSON
            ids.append(record["id"])
        assert len(data) <= 256 * 1024, path
    assert ids == list(range(1, len(ids) + 1))  # nothing lost or torn in between, in order


WRITE_THEN_HANG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from addons.prompt_log import DailyFiles, RecordWriter
    writer = RecordWriter(DailyFiles(Path(sys.argv[1]), 10 * 1024 * 1024))
    for i in range(500):
        writer.submit({"id": i, "messages": [{"role": "user", "content": "x" * 300}]})
    while writer.written < 500:
        time.sleep(0.005)
    print("written", flush=True)
    time.sleep(60)
    """
)


def test_a_written_record_is_on_disk_at_once(tmp_path: Path):
    """Nothing waits in a userspace buffer: a kill -9 right after the writes loses nothing."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITE_THEN_HANG, str(tmp_path), str(REPO)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (path,) = tmp_path.glob("*.jsonl")
    assert [r["id"] for r in lines_of(path)] == list(range(500))


@pytest.mark.parametrize("mode", ["console"])
def test_console_mode_writes_the_same_lines_to_stdout(mode, tmp_path: Path):
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from addons.prompt_log import ConsoleLines, RecordWriter
        w = RecordWriter(ConsoleLines())
        for i in range(3):
            w.submit({"i": i})
        w.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(REPO)], capture_output=True, timeout=30, check=True)
    assert [json.loads(line) for line in out.stdout.splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}]
