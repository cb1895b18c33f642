"""Dataset export: output validated against the target formats, de-duplication, filters, the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from datasets.export import Filters, Progress, conversation_digests, export, main, parse_time

REPO = Path(__file__).resolve().parents[2]
SYSTEM = {"role": "system", "content": "Be brief."}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def record(messages: list[dict], *, ts: str, provider: str = "openai-custom", model: str = "gpt-x",
           status: str = "ok", tools: list | None = None, tokens: tuple[int, int] = (10, 5)) -> dict:  # fmt: skip
    return {
        "id": f"id-{ts}-{len(messages)}",
        "ts": ts,
        "client_key_id": "0123456789ab",
        "client_dialect": "openai_chat",
        "provider": provider,
        "account": "a",
        "model": model,
        "upstream_model": model + "-upstream",
        "stream": False,
        "status": status,
        "latency_ms": 10,
        "ttft_ms": None,
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1], "cached_tokens": 0, "reasoning_tokens": 0},
        "tools": tools or [],
        "messages": messages,
    }


def calls(*cities: str, ids: tuple[str, ...] = ("call_p", "call_t")) -> list[dict]:
    return [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}
        for i, c in zip(ids, cities, strict=False)
    ]


# An agent conversation logged three times as it grew. The client sends the first answer back in
# its own shape (content "" instead of null, no reasoning, other call ids, other JSON spacing).
LEG1 = [
    SYSTEM,
    {"role": "user", "content": "weather in Paris and Tokyo?"},
    {"role": "assistant", "content": None, "reasoning_content": "two calls", "tool_calls": calls("Paris", "Tokyo")},
]
HISTORY = [
    SYSTEM,
    {"role": "user", "content": "weather in Paris and Tokyo?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "g1", "type": "function", "function": {"name": "get_weather", "arguments": '{ "city": "Paris" }'}},
            {"id": "g2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "g1", "content": "Sunny"},
    {"role": "tool", "tool_call_id": "g2", "content": "Rainy"},
]
LEG2 = [*HISTORY, {"role": "assistant", "content": "Paris sunny, Tokyo rainy."}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
LEG3 = [
    *LEG2,
    {"role": "user", "content": [{"type": "text", "text": "and this? "}, IMAGE]},
    {"role": "assistant", "content": "A tiny image."},
]
HELLO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    day1 = [
        record(LEG1, ts="2025-03-01T10:00:00.000Z", tools=[WEATHER_TOOL], tokens=(20, 8)),
        record(LEG2, ts="2025-03-01T10:00:05.000Z", tools=[WEATHER_TOOL], tokens=(40, 6)),
        record(LEG3, ts="2025-03-01T10:00:09.000Z", tools=[WEATHER_TOOL], tokens=(60, 4)),
        record(HELLO, ts="2025-03-01T11:00:00.000Z"),
        record(HELLO, ts="2025-03-01T11:30:00.000Z"),  # identical
        record([{"role": "user", "content": "fails"}], ts="2025-03-01T12:00:00.000Z", status="error"),
        record(
            [{"role": "user", "content": "long please"}, {"role": "assistant", "content": "The quick"}],
            ts="2025-03-01T13:00:00.000Z",
            status="client_cut",
        ),
    ]
    day2 = [
        record(
            [{"role": "user", "content": "day two"}, {"role": "assistant", "content": "ok"}],
            ts="2025-03-02T09:00:00.000Z",
            provider="claude-custom",
            model="claude-x",
            tokens=(7, 1),
        ),
        record(HELLO, ts="2025-03-02T10:00:00.000Z"),  # identical again, another day
    ]
    folder = tmp_path / "logs"
    folder.mkdir()
    text1 = (
        "".join(json.dumps(r) + "\n" for r in day1[:3])
        + "{not json\n"
        + "".join(json.dumps(r) + "\n" for r in day1[3:])
    )
    (folder / "prompts-2025-03-01.000.jsonl").write_text(text1, encoding="utf-8")
    (folder / "prompts-2025-03-02.000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in day2), encoding="utf-8")
    (folder / "notes.txt").write_text("not a log", encoding="utf-8")
    return folder


def run_export(logs: Path, fmt: str = "openai", **filters: Any) -> tuple[list[dict], Any]:
    out = io.BytesIO()
    summary = export(logs, out, fmt, Filters(**filters), progress_stream=io.StringIO())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for line in lines:
        (validate_openai if fmt == "openai" else validate_sharegpt)(line)
    return lines, summary


# -- format validators, strict like the fine-tuning tools ---------------------------------------------


def validate_openai(example: dict) -> None:
    """OpenAI chat fine-tuning JSONL line (messages + optional function tools)."""
    assert set(example) <= {"messages", "tools", "parallel_tool_calls"}
    messages = example["messages"]
    assert isinstance(messages, list) and messages
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        role = m["role"]
        assert role in ("system", "user", "assistant", "tool")
        allowed = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}
        assert set(m) <= allowed, m
        if role == "system":
            assert isinstance(m["content"], str)
        elif role == "user":
            content = m["content"]
            if isinstance(content, list):
                for part in content:
                    assert part["type"] in ("text", "image_url")
                    assert isinstance(part["text"], str) if part["type"] == "text" else part["image_url"]["url"]
            else:
                assert isinstance(content, str)
        elif role == "assistant":
            assert m.get("content") is None or isinstance(m["content"], str)
            assert m.get("content") or m.get("tool_calls"), m
            for call in m.get("tool_calls") or []:
                assert set(call) == {"id", "type", "function"} and call["type"] == "function"
                assert isinstance(call["function"]["name"], str)
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                open_calls.add(call["id"])
        else:
            assert m["tool_call_id"] in open_calls, "tool result without a preceding call"
            assert isinstance(m["content"], str)
        assert role != "system" or i == 0
    assert messages[-1]["role"] == "assistant"
    for tool in example.get("tools", []):
        assert set(tool) == {"type", "function"} and tool["type"] == "function"
        assert set(tool["function"]) <= {"name", "description", "parameters", "strict"}
        assert isinstance(tool["function"]["name"], str) and isinstance(tool["function"]["parameters"], dict)


def validate_sharegpt(example: dict) -> None:
    """ShareGPT as LLaMA-Factory reads it: strict human/observation <-> gpt/function_call alternation."""
    assert set(example) <= {"conversations", "system", "tools", "images"}
    turns = example["conversations"]
    assert turns and len(turns) % 2 == 0
    for i, turn in enumerate(turns):
        assert set(turn) == {"from", "value"} and isinstance(turn["value"], str)
        assert turn["from"] in (("human", "observation") if i % 2 == 0 else ("gpt", "function_call"))
        if turn["from"] == "function_call":
            value = json.loads(turn["value"])
            for call in value if isinstance(value, list) else [value]:
                assert set(call) == {"name", "arguments"} and isinstance(call["arguments"], dict)
    if "tools" in example:
        tools = json.loads(example["tools"])
        assert all(isinstance(t["name"], str) and isinstance(t["parameters"], dict) for t in tools)
    images = sum(t["value"].count("<image>") for t in turns)
    assert images == len(example.get("images", []))


# -- de-duplication -----------------------------------------------------------------------------------


def test_openai_export_keeps_the_longest_conversation_once(logs: Path):
    lines, summary = run_export(logs)
    assert [line["messages"][-1]["content"] for line in lines] == ["A tiny image.", "Hello!", "The quick", "ok"]
    agent = lines[0]
    assert agent["tools"] == [WEATHER_TOOL]
    assert [m["role"] for m in agent["messages"]] == [
        "system", "user", "assistant", "tool", "tool", "assistant", "user", "assistant"
    ]  # fmt: skip
    assert "tools" not in lines[1]
    assert (summary.records, summary.bad_lines, summary.files) == (10, 1, 2)
    assert (summary.matched, summary.no_answer) == (9, 1)
    assert (summary.written, summary.prefixes, summary.duplicates) == (4, 2, 2)
    assert summary.per_model["gpt-x"].conversations == 3
    assert (summary.per_model["gpt-x"].input_tokens, summary.per_model["gpt-x"].output_tokens) == (80, 14)
    assert summary.per_model["claude-x"].conversations == 1
    text = "\n".join(summary.lines())
    assert "conversations written: 4" in text and "prefixes of longer ones dropped: 2" in text and "claude-x" in text


def test_reasoning_is_kept_only_when_asked(logs: Path):
    out = io.BytesIO()
    export(logs, out, "openai", Filters(max_turns=1), reasoning=True, progress_stream=io.StringIO())
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["messages"][-1]["reasoning_content"] == "two calls"
    lines, _ = run_export(logs, max_turns=1)
    assert "reasoning_content" not in json.dumps(lines)


def test_without_dedupe_every_answered_record_is_written(logs: Path):
    out = io.BytesIO()
    summary = export(logs, out, "openai", Filters(), dedupe=False, progress_stream=io.StringIO())
    assert summary.written == len(out.getvalue().splitlines()) == 8


def test_prefix_digests_ignore_the_shape_differences_of_history():
    whole1, _ = conversation_digests(LEG1, [WEATHER_TOOL])
    whole2, prefixes2 = conversation_digests(LEG2, [WEATHER_TOOL])
    _, prefixes3 = conversation_digests(LEG3, [WEATHER_TOOL])
    assert prefixes2 == [whole1]
    assert prefixes3 == [whole1, whole2]
    as_parts = [LEG1[0], {"role": "user", "content": [{"type": "text", "text": LEG1[1]["content"]}]}, LEG1[2]]
    assert conversation_digests(as_parts, [WEATHER_TOOL])[0] == whole1
    other_tools, _ = conversation_digests(LEG1, [])
    assert other_tools != whole1
    changed = [*LEG1[:2], {**LEG1[2], "tool_calls": calls("Paris", "Berlin")}]
    assert conversation_digests(changed, [WEATHER_TOOL])[0] != whole1
    assert all(len(d) == 16 for d in prefixes3)


# -- filters ----------------------------------------------------------------------------------------


def answers(lines: list[dict]) -> list[str]:
    return [line["messages"][-1]["content"] for line in lines]


def test_ok_only_drops_cut_answers(logs: Path):
    lines, _ = run_export(logs, ok_only=True)
    assert answers(lines) == ["A tiny image.", "Hello!", "ok"]


def test_provider_and_model_filters(logs: Path):
    assert answers(run_export(logs, providers={"claude-custom"})[0]) == ["ok"]
    assert answers(run_export(logs, models={"claude-x"})[0]) == ["ok"]
    assert answers(run_export(logs, models={"gpt-x-upstream"})[0]) == ["A tiny image.", "Hello!", "The quick"]


def test_date_range_filters(logs: Path):
    since = parse_time("2025-03-02", end_of_day=False)
    until = parse_time("2025-03-01", end_of_day=True)
    assert answers(run_export(logs, since=since)[0]) == ["ok", "Hello!"]
    assert answers(run_export(logs, until=until)[0]) == ["A tiny image.", "Hello!", "The quick"]
    noon = parse_time("2025-03-01T11:15:00Z", end_of_day=False)
    lines, summary = run_export(logs, since=noon, until=until)
    assert answers(lines) == ["Hello!", "The quick"] and summary.files == 1  # the other day's file is not read


def test_turn_filters(logs: Path):
    assert answers(run_export(logs, min_turns=2)[0]) == ["A tiny image."]
    # LEG1 has one answer; its longer versions are filtered out, so it is no longer a mere prefix.
    assert answers(run_export(logs, max_turns=1)[0]) == [None, "Hello!", "The quick", "ok"]


# -- ShareGPT ------------------------------------------------------------------------------------------


def test_sharegpt_export(logs: Path):
    lines, summary = run_export(logs, "sharegpt")
    assert summary.written == 4
    agent = lines[0]
    assert agent["system"] == "Be brief."
    assert [t["from"] for t in agent["conversations"]] == [
        "human",
        "function_call",
        "observation",
        "gpt",
        "human",
        "gpt",
    ]
    assert json.loads(agent["conversations"][1]["value"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Tokyo"}},
    ]
    assert json.loads(agent["conversations"][2]["value"]) == ["Sunny", "Rainy"]
    assert agent["conversations"][4]["value"] == "and this? <image>"
    assert agent["images"] == ["data:image/png;base64,AA=="]
    assert json.loads(agent["tools"]) == [WEATHER_TOOL["function"]]
    assert lines[1] == {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello!"}]}


def test_sharegpt_skips_what_cannot_alternate(tmp_path: Path):
    twice = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    (tmp_path / "prompts-2025-03-01.000.jsonl").write_text(json.dumps(record(twice, ts="2025-03-01T00:00:00Z")) + "\n")
    lines, summary = run_export(tmp_path, "sharegpt")
    assert lines == [] and summary.not_convertible == 1
    lines, _ = run_export(tmp_path, "openai")
    assert len(lines) == 1


# -- command line and progress ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["datasets", "addons.prompt_log"], ids=["datasets", "deprecated"])
def test_cli_writes_the_file_and_prints_a_summary(logs: Path, tmp_path: Path, module: str):
    out = tmp_path / "train.jsonl"
    cmd = [sys.executable, "-m", module, "export", "--dir", str(logs), "--out", str(out), "--ok-only"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
    deprecated = "python -m addons.prompt_log export is deprecated" in done.stderr
    assert deprecated == (module == "addons.prompt_log")
    assert "conversations written: 3" in done.stdout and "tokens per model:" in done.stdout
    for line in out.read_text(encoding="utf-8").splitlines():
        validate_openai(json.loads(line))


def test_cli_to_stdout_puts_the_summary_on_stderr(logs: Path, capsys):
    assert main(["export", "--dir", str(logs), "--out", "-", "--format", "sharegpt", "--since", "2025-03-02"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["conversations"][-1]["value"] for line in captured.out.splitlines()] == ["ok", "Hello!"]
    assert "conversations written: 2" in captured.err
    assert main(["export", "--dir", str(logs), "--out", "-", "--since", "yesterday"]) == 2
    assert "bad date" in capsys.readouterr().err
    assert main(["export", "--dir", str(logs / "missing"), "--out", "-"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_progress_shows_only_for_long_runs():
    quiet = io.StringIO()
    p = Progress(1000, quiet)
    p.update(500, 10)
    p.update(1000, 20, final=True)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    p = Progress(2_000_000, shown)
    p.started -= 2  # as if the run had been going for two seconds
    p.last -= 10
    p.update(1_000_000, 42)
    p.update(2_000_000, 84, final=True)
    assert "50.0%" in shown.getvalue() and "42 records" in shown.getvalue() and "100.0%" in shown.getvalue()


MEASURE = """
import io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from datasets.export import Filters, export
out = []
for folder in sys.argv[2:]:
    with open(folder + ".out", "wb") as f:
        summary = export(Path(folder), f, "openai", Filters(), progress_stream=io.StringIO())
    out.append({"written": summary.written, "prefixes": summary.prefixes,
                "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
print(json.dumps(out))
"""


def _write_agent_logs(folder: Path, conversations: int) -> int:
    """Agent-style logs: each conversation logged at 1..6 answers, ~9 KB per final record."""
    folder.mkdir()
    size = 0
    with open(folder / "prompts-2025-03-01.000.jsonl", "w", encoding="utf-8") as f:
        for c in range(conversations):
            messages: list[dict] = [{"role": "system", "content": "s" * 1000}]
            for turn in range(6):
                messages.append({"role": "user", "content": f"conversation {c} turn {turn} " + "u" * 400})
                messages.append({"role": "assistant", "content": f"answer {c}/{turn} " + "a" * 800})
                line = json.dumps(record(messages, ts="2025-03-01T10:00:00Z")) + "\n"
                size += len(line)
                f.write(line)
    return size


def test_memory_stays_flat_as_the_logs_grow(tmp_path: Path):
    """Peak memory after 8x more log data grows by far less than the data: only 16-byte digests
    of whole conversations stay in memory, never records or prefixes."""
    small_size = _write_agent_logs(tmp_path / "small", 60)
    big_size = _write_agent_logs(tmp_path / "big", 480)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(REPO), str(tmp_path / "small"), str(tmp_path / "big")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    small, big = json.loads(done.stdout)
    assert (small["written"], big["written"]) == (60, 480)
    assert big["prefixes"] == 480 * 5
    growth_bytes = (big["rss_kb"] - small["rss_kb"]) * 1024
    assert big_size - small_size > 15_000_000
    assert growth_bytes < (big_size - small_size) / 5, (growth_bytes, big_size - small_size)
