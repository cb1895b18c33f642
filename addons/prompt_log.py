"""PromptLog: one dataset record per exchange, and the command that turns the logs into datasets.

Record (one JSON line): id, ts, client_key_name, client_key_id, client_dialect, provider, account, model,
upstream_model, stream, status, latency_ms, ttft_ms, usage, tools, messages -- the whole
conversation in OpenAI chat format with the answer last -- plus attempts, finish_reason and,
when not ok, http_status and error. Streamed answers are the ones the stream transcoder
collected; a stream cut by either side keeps what arrived, with a status saying who cut it.

Writing happens on a dedicated thread fed by a queue: a hook only builds the record and
enqueues it. Each record leaves in one os.write of one whole line on an O_APPEND descriptor,
so a crash (even kill -9) can lose the record being written but never leaves half of one in
the middle of a file; a torn tail from a crash inside a large write is cut off when the file is
opened again.

    python -m addons.prompt_log export --dir prompt-logs --out train.jsonl --format openai
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from mitmproxy import http

from addons.context import CLIENT_KEY_ID, CLIENT_KEY_NAME, EXCHANGE, ROUTE, Gateway, Route
from addons.outcome import OK, Outcome, outcome_of
from translators.openai_messages import conversation, tool_definitions
from translators.turns import SYSTEM_CLOSE, SYSTEM_OPEN

logger = logging.getLogger(__name__)

LOGGED = "aiclient.prompt_logged"
FILE_PREFIX = "prompts-"
REDACTED = "[REDACTED]"
# Records waiting for the writer; beyond this (a stuck disk) new records are dropped, not queued.
MAX_QUEUED = 50_000


# ---------------------------------------------------------------------------------------------
# Records


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usage_fields(outcome: Outcome) -> dict[str, Any]:
    u = outcome.usage
    fields: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cached_tokens": u.cache_read_tokens,
        "reasoning_tokens": u.reasoning_tokens,
    }
    if u.estimated:
        fields["estimated"] = True  # the upstream reported none; these are the gateway's estimate
    return fields


def build_record(flow: http.HTTPFlow, route: Route, outcome: Outcome) -> dict[str, Any]:
    """The record of one finished exchange; made only of the IR, never of headers."""
    assert route.request is not None
    exchange = flow.metadata.get(EXCHANGE)
    record: dict[str, Any] = {
        "id": flow.id,
        "ts": iso_utc(flow.request.timestamp_start),
        "client_key_name": flow.metadata.get(CLIENT_KEY_NAME),
        "client_key_id": flow.metadata.get(CLIENT_KEY_ID),
        "client_dialect": route.dialect,
        # The attempt that answered: a fallback may have moved the request to another provider/model.
        "provider": getattr(exchange, "provider", None) or route.provider,
        "account": exchange.member.label if exchange is not None else None,
        "model": route.model,
        "upstream_model": getattr(exchange, "model", None) or route.upstream_model,
        "stream": route.stream,
        "status": outcome.status,
        "latency_ms": outcome.latency_ms,
        "ttft_ms": outcome.ttft_ms,
        "usage": usage_fields(outcome),
        "tools": tool_definitions(route.request),
        "messages": conversation(route.request, outcome.answer),
        "attempts": list(getattr(exchange, "attempts", None) or []),
        "finish_reason": outcome.finish_reason,
    }
    if outcome.status != OK:
        record["http_status"] = outcome.http_status
        record["error"] = outcome.error
    return record


class Redactor:
    """Replaces every match of the configured patterns in message text (content, reasoning,
    tool results and tool-call arguments), and -- a second guard, since records are built from
    the IR that never holds credentials -- any known secret (client keys, upstream API keys)
    wherever it would appear in the line, e.g. echoed in an upstream's error message."""

    def __init__(self, patterns: list[str], secrets: list[str] | None = None) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        # As they appear inside a JSON string; short values are skipped (they would match anything).
        encoded = {json.dumps(s, ensure_ascii=False)[1:-1].encode() for s in secrets or () if len(s) >= 8}
        self.secrets = sorted(encoded, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.patterns or self.secrets)

    def scrub(self, line: bytes) -> bytes:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, b"[SECRET]")
        return line

    def text(self, value: str) -> str:
        for pattern in self.patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def record(self, record: dict[str, Any]) -> None:
        for message in record.get("messages") or ():
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = self.text(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = self.text(part["text"])
            if isinstance(message.get("reasoning_content"), str):
                message["reasoning_content"] = self.text(message["reasoning_content"])
            for call in message.get("tool_calls") or ():
                fn = call.get("function") or {}
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = self.text(fn["arguments"])


def encode_line(record: dict[str, Any]) -> bytes:
    """One whole JSON line; JSON escapes every newline inside strings, so a record is one line."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a client's JSON: fall back to \u escapes
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


# ---------------------------------------------------------------------------------------------
# Where lines go


def _write_all(fd: int, data: bytes) -> None:
    """One os.write per record; a regular file takes it whole unless the disk is full."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class DailyFiles:
    """prompts-YYYY-MM-DD.NNN.jsonl under one folder: a new file per UTC day and past max_bytes."""

    def __init__(self, directory: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_bytes = max(1, max_bytes)
        self.clock = clock
        self._fd: int | None = None
        self._day = ""
        self._index = 0
        self._size = 0

    @property
    def path(self) -> Path | None:
        return self._path(self._day, self._index) if self._fd is not None else None

    def _path(self, day: str, index: int) -> Path:
        return self.directory / f"{FILE_PREFIX}{day}.{index:03d}.jsonl"

    def write(self, line: bytes) -> None:
        day = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        if self._fd is None or day != self._day:
            self._open_day(day)
        elif self._size and self._size + len(line) > self.max_bytes:
            self._open(day, self._index + 1)
        assert self._fd is not None
        _write_all(self._fd, line)
        self._size += len(line)

    def _open_day(self, day: str) -> None:
        """Continues the day's last file (after a restart) unless it is full."""
        index = 0
        while self._path(day, index + 1).exists():
            index += 1
        self._open(day, index)
        if self._size >= self.max_bytes:
            self._open(day, index + 1)

    def _open(self, day: str, index: int) -> None:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(day, index)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._fd, self._day, self._index = fd, day, index
        self._size = cut_torn_tail(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cut_torn_tail(fd: int) -> int:
    """Drops an unfinished last line (a crash inside a large write) so appends start on a fresh
    line; returns the file's size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            end = start + nl + 1
            break
        end = start
    logger.warning("aiclient-mitm: dropped %d bytes of an unfinished prompt log record", size - end)
    os.ftruncate(fd, end)
    return end


class ConsoleLines:
    """Console mode: the same lines on stdout."""

    def write(self, line: bytes) -> None:
        _write_all(sys.stdout.fileno(), line)

    def close(self) -> None:
        """stdout stays open."""


class RecordWriter:
    """Serializes and writes records on its own thread; `submit` never blocks the event loop."""

    def __init__(self, target: DailyFiles | ConsoleLines, redactor: Redactor | None = None) -> None:
        self.target = target
        self.redactor = redactor
        self.written = 0
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="aiclient-prompt-log", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("aiclient-mitm: prompt log cannot keep up; %d record(s) dropped", self.dropped)

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        self.target.close()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                if self.redactor:
                    self.redactor.record(record)
                    line = self.redactor.scrub(encode_line(record))
                else:
                    line = encode_line(record)
                self.target.write(line)
                self.written += 1
            except Exception:
                logger.exception("aiclient-mitm: could not write a prompt log record")


# ---------------------------------------------------------------------------------------------
# The addon


class PromptLog:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.writer: RecordWriter | None = None
        # The keyring the redactor knows; keys_file reloads bring new client keys to scrub.
        self._keyring: object | None = None

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        self._stop()
        settings = self.gateway.config.prompt_log
        redactor = Redactor(settings.redact, self._known_secrets())
        self._keyring = self.gateway.keyring
        if settings.mode == "console":
            self.writer = RecordWriter(ConsoleLines(), redactor)
        elif settings.mode == "file":
            directory = settings.dir.expanduser()
            if not directory.is_absolute():
                directory = self.gateway.config_path.parent / directory
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                # Logged as an error at start, which stops mitmproxy: the user asked for logs.
                logger.error("aiclient-mitm: prompt_log.dir %s cannot be created: %s", directory, e.strerror or e)
                return
            self.writer = RecordWriter(DailyFiles(directory, int(settings.max_file_size)), redactor)
            logger.info("aiclient-mitm: prompt log in %s", directory)

    def _known_secrets(self) -> list[str]:
        secrets = [k.decode("utf-8", "replace") for k in self.gateway.keyring.secrets()]
        for provider in self.gateway.config.providers.values():
            secrets += [a.api_key.get_secret_value() for a in provider.accounts if a.api_key is not None]
        return secrets

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def done(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _log(self, flow: http.HTTPFlow) -> None:
        if self.writer is None or flow.metadata.get(LOGGED):
            return
        try:
            outcome = outcome_of(flow)
            if outcome is None:
                return
            flow.metadata[LOGGED] = True
            if self.gateway.keyring is not self._keyring:
                self._keyring = self.gateway.keyring
                self.writer.redactor = Redactor(self.gateway.config.prompt_log.redact, self._known_secrets())
            self.writer.submit(build_record(flow, flow.metadata[ROUTE], outcome))
        except Exception:
            logger.exception("aiclient-mitm: could not build the prompt log record")


# ---------------------------------------------------------------------------------------------
# Export: logs -> fine-tuning datasets


@dataclass
class Filters:
    since: float | None = None
    until: float | None = None
    providers: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    ok_only: bool = False
    min_turns: int | None = None
    max_turns: int | None = None

    def day_in_range(self, day: date) -> bool:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        if self.since is not None and start + 86400 <= self.since:
            return False
        return not (self.until is not None and start > self.until)

    def accepts(self, record: dict[str, Any], turns: int) -> bool:
        if self.since is not None or self.until is not None:
            try:
                ts = parse_time(str(record.get("ts") or ""), end_of_day=False)
            except ValueError:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts > self.until:
                return False
        if self.providers and record.get("provider") not in self.providers:
            return False
        if self.models and not ({record.get("model"), record.get("upstream_model")} & self.models):
            return False
        if self.ok_only and record.get("status") != OK:
            return False
        if self.min_turns is not None and turns < self.min_turns:
            return False
        return self.max_turns is None or turns <= self.max_turns


def parse_time(text: str, *, end_of_day: bool) -> float:
    """YYYY-MM-DD (a whole UTC day: its start, or its end with end_of_day) or an ISO timestamp."""
    if len(text) == 10:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return (day + timedelta(days=1)).timestamp() - 0.001 if end_of_day else day.timestamp()
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _message_digest(message: dict[str, Any]) -> bytes:
    """What makes two messages the same turn. The answer as logged and the same turn sent back
    by the client as history differ in shape (content None vs "" or a list of text parts,
    reasoning dropped, tool-call ids regenerated by dialects without ids, other JSON spacing), so
    only role, text, images and calls count."""
    role = str(message.get("role") or "")
    content = message.get("content")
    if isinstance(content, list):
        content = [p.get("text") if p.get("type") == "text" else p.get("image_url") for p in content]
        if all(isinstance(p, str) for p in content):
            content = "".join(content)
    calls = message.get("tool_calls")
    if not calls and (content is None or isinstance(content, str)):  # the common case, without JSON
        return _digest(b"t\x00" + role.encode() + b"\x00" + (content or "").encode("utf-8", "surrogatepass"))
    key = [
        role,
        content or "",
        [[(c.get("function") or {}).get("name"), _canonical_arguments(c.get("function") or {})] for c in calls or ()],
    ]
    return _digest(b"j\x00" + json.dumps(key, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())


def _canonical_arguments(fn: dict[str, Any]) -> Any:
    raw = fn.get("arguments")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def conversation_digests(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> tuple[bytes, list[bytes]]:
    """(digest of the whole conversation, digests of its shorter prefixes that end with an answer).

    A chain (each digest hashes the previous one and the next message) makes every prefix's
    digest cost one small hash instead of re-hashing the prefix."""
    chain = _digest(json.dumps(tools, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())
    prefixes: list[bytes] = []
    last = len(messages) - 1
    for i, message in enumerate(messages):
        chain = _digest(chain + _message_digest(message))
        if i < last and message.get("role") == "assistant":
            prefixes.append(chain)
    return chain, prefixes


def count_turns(messages: list[dict[str, Any]]) -> int:
    """Turns = answers of the model (each assistant message, the final one included)."""
    return sum(1 for m in messages if m.get("role") == "assistant")


def has_answer(messages: list[dict[str, Any]]) -> bool:
    if not messages or messages[-1].get("role") != "assistant":
        return False
    last = messages[-1]
    return bool(last.get("content") or last.get("tool_calls"))


def to_openai(record: dict[str, Any], *, reasoning: bool) -> dict[str, Any]:
    """OpenAI chat fine-tuning line: {"messages": [...], "tools": [...]} (function tools only)."""
    messages = []
    for m in record["messages"]:
        m = dict(m)
        if not reasoning:
            m.pop("reasoning_content", None)
        messages.append(m)
    out: dict[str, Any] = {"messages": messages}
    tools = [t for t in record.get("tools") or () if t.get("type") == "function"]
    if tools:
        out["tools"] = tools
    return out


class NotConvertible(ValueError):
    """The conversation does not fit the target format (e.g. two answers in a row for ShareGPT)."""


def to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT as LLaMA-Factory reads it: conversations of human/gpt/function_call/observation
    alternating (human or observation first), optional system, tools as a JSON string, images
    as <image> placeholders with their URLs in `images`."""
    turns: list[dict[str, str]] = []
    images: list[str] = []
    system = ""

    def add(kind: str, value: str) -> None:
        # A user's words right after tool results (one turn in Claude's model) join the observation.
        if turns and kind in ("human", "observation") and turns[-1]["from"] in ("human", "observation"):
            turns[-1]["value"] = f"{turns[-1]['value']}\n\n{value}"
            return
        turns.append({"from": kind, "value": value})

    pending_results: list[str] = []
    for m in record["messages"]:
        role = m.get("role")
        if role != "tool" and pending_results:
            add(
                "observation",
                pending_results[0] if len(pending_results) == 1 else json.dumps(pending_results, ensure_ascii=False),
            )
            pending_results = []
        if role == "system" and not turns:
            system = _plain_text(m.get("content"), images)
        elif role == "system":  # inside the conversation: a delimited block of the human turn
            add("human", f"{SYSTEM_OPEN}\n{_plain_text(m.get('content'), images)}\n{SYSTEM_CLOSE}")
        elif role == "user":
            add("human", _plain_text(m.get("content"), images))
        elif role == "tool":
            pending_results.append(_plain_text(m.get("content"), images))
        elif role == "assistant":
            calls = [
                {"name": c["function"]["name"], "arguments": _canonical_arguments(c["function"])}
                for c in m.get("tool_calls") or ()
            ]
            if calls:
                add("function_call", json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False))
            else:
                add("gpt", m.get("content") or "")
        else:
            raise NotConvertible(f"unexpected role {role!r}")
    if pending_results:
        raise NotConvertible("ends with tool results")
    for i, turn in enumerate(turns):
        expected = ("human", "observation") if i % 2 == 0 else ("gpt", "function_call")
        if turn["from"] not in expected:
            raise NotConvertible(f"turn {i} is {turn['from']}, expected {' or '.join(expected)}")
    if not turns or len(turns) % 2:
        raise NotConvertible("does not end with an answer")
    out: dict[str, Any] = {"conversations": turns}
    if system:
        out["system"] = system
    tools = [t["function"] for t in record.get("tools") or () if t.get("type") == "function"]
    if tools:
        out["tools"] = json.dumps(tools, ensure_ascii=False)
    if images:
        out["images"] = images
    return out


def _plain_text(content: Any, images: list[str]) -> str:
    if isinstance(content, str):
        return content
    out = []
    for part in content or ():
        if part.get("type") == "text":
            out.append(part.get("text") or "")
        elif part.get("type") == "image_url":
            images.append((part.get("image_url") or {}).get("url") or "")
            out.append("<image>")
    return "".join(out)


@dataclass
class ModelTotals:
    conversations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ExportSummary:
    files: int = 0
    records: int = 0
    bad_lines: int = 0
    matched: int = 0
    no_answer: int = 0
    not_convertible: int = 0
    duplicates: int = 0
    prefixes: int = 0
    written: int = 0
    per_model: dict[str, ModelTotals] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"records: {self.records} in {self.files} file(s)"
            + (f", {self.bad_lines} unreadable line(s) skipped" if self.bad_lines else ""),
            f"matching the filters: {self.matched}"
            + (f" ({self.no_answer} without an answer skipped)" if self.no_answer else ""),
            f"conversations written: {self.written} (identical dropped: {self.duplicates}, "
            f"prefixes of longer ones dropped: {self.prefixes}, not convertible: {self.not_convertible})",
            "tokens per model:",
        ]
        width = max((len(m) for m in self.per_model), default=5)
        for model in sorted(self.per_model):
            t = self.per_model[model]
            out.append(
                f"  {model:<{width}}  conversations {t.conversations}  input {t.input_tokens}  output {t.output_tokens}"
            )
        if not self.per_model:
            out.append("  (none)")
        return out


class Progress:
    """A progress line on stderr for runs longer than a second."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last = self.started
        self.shown = False

    def update(self, done: int, records: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (now - self.started < 1.0 or now - self.last < (0.5 if self.tty else 5.0)):
            return
        if final and not self.shown:
            return
        self.last = now
        self.shown = True
        pct = min(100.0, 100.0 * done / self.total)
        bar = "#" * int(pct / 5)
        line = f"export [{bar:<20}] {pct:5.1f}%  {done / 1e6:.1f}/{self.total / 1e6:.1f} MB  {records} records"
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


def log_files(directory: Path, filters: Filters) -> list[Path]:
    """The log files in name (= time) order, skipping whole days outside the date filter."""
    out = []
    for path in sorted(directory.glob(f"{FILE_PREFIX}*.jsonl")):
        day_text = path.name[len(FILE_PREFIX) : len(FILE_PREFIX) + 10]
        try:
            day = datetime.strptime(day_text, "%Y-%m-%d").date()
        except ValueError:
            out.append(path)
            continue
        if filters.day_in_range(day):
            out.append(path)
    return out


def _read_lines(paths: list[Path], progress: Progress | None, summary: ExportSummary) -> Iterator[bytes]:
    done = 0
    for path in paths:
        summary.files += 1
        with open(path, "rb") as f:
            for line in f:
                done += len(line)
                if progress is not None:
                    progress.update(done, summary.records)
                yield line
    if progress is not None:
        progress.update(done, summary.records, final=True)


def export(
    directory: Path,
    out: BinaryIO,
    fmt: str,
    filters: Filters,
    *,
    reasoning: bool = False,
    dedupe: bool = True,
    progress_stream: Any = None,
) -> ExportSummary:
    """Streams the logs once: converted candidates go to a temporary file with their digest, the
    digests of every answered prefix to another; then only candidates that are neither a prefix
    of a longer conversation nor a repeat are copied out. Memory holds 16-byte digests of whole
    conversations only (one per record), never records or prefixes."""
    summary = ExportSummary()
    paths = log_files(directory, filters)
    total = sum(p.stat().st_size for p in paths)
    progress = Progress(total, progress_stream) if total else None
    whole: set[bytes] = set()
    with tempfile.TemporaryFile() as candidates, tempfile.TemporaryFile() as prefixes:
        for line in _read_lines(paths, progress, summary):
            if not line.strip():
                continue
            summary.records += 1
            try:
                record = json.loads(line)
                messages = record["messages"]
                if not isinstance(record, dict) or not isinstance(messages, list):
                    raise ValueError("not a record")
            except (ValueError, KeyError, TypeError):
                summary.bad_lines += 1
                continue
            if not filters.accepts(record, count_turns(messages)):
                continue
            summary.matched += 1
            if not has_answer(messages):
                summary.no_answer += 1
                continue
            try:
                converted = to_openai(record, reasoning=reasoning) if fmt == "openai" else to_sharegpt(record)
            except (NotConvertible, KeyError, TypeError, AttributeError):
                summary.not_convertible += 1
                continue
            digest, answered_prefixes = conversation_digests(messages, record.get("tools") or [])
            whole.add(digest)
            prefixes.write(b"".join(answered_prefixes))
            usage = record.get("usage") or {}
            meta = [
                record.get("model") or "",
                int(usage.get("input_tokens") or 0),
                int(usage.get("output_tokens") or 0),
            ]
            candidates.write(
                digest.hex().encode()
                + b" "
                + json.dumps(meta, ensure_ascii=False).encode()
                + b"\t"
                + json.dumps(converted, ensure_ascii=False, separators=(",", ":")).encode()
                + b"\n"
            )
        covered: set[bytes] = set()
        if dedupe:
            prefixes.seek(0)
            while block := prefixes.read(16 * 4096):
                for i in range(0, len(block), 16):
                    d = block[i : i + 16]
                    if d in whole:
                        covered.add(d)
        del whole
        emitted: set[bytes] = set()
        candidates.seek(0)
        for line in candidates:
            head, _, body = line.partition(b"\t")
            digest = bytes.fromhex(head[:32].decode())
            if dedupe and digest in covered:
                summary.prefixes += 1
                continue
            if dedupe and digest in emitted:
                summary.duplicates += 1
                continue
            emitted.add(digest)
            out.write(body)
            model, inp, outp = json.loads(head[33:])
            totals = summary.per_model.setdefault(model, ModelTotals())
            totals.conversations += 1
            totals.input_tokens += inp
            totals.output_tokens += outp
            summary.written += 1
    return summary


def _export_main(args: argparse.Namespace) -> int:
    try:
        filters = Filters(
            since=parse_time(args.since, end_of_day=False) if args.since else None,
            until=parse_time(args.until, end_of_day=True) if args.until else None,
            providers=set(args.provider or ()),
            models=set(args.model or ()),
            ok_only=args.ok_only,
            min_turns=args.min_turns,
            max_turns=args.max_turns,
        )
    except ValueError as e:
        print(f"export: bad date: {e}", file=sys.stderr)
        return 2
    directory = Path(args.dir)
    if not directory.is_dir():
        print(f"export: {directory} is not a folder", file=sys.stderr)
        return 2
    to_stdout = args.out == "-"
    with contextlib.ExitStack() as stack:
        if to_stdout:
            out: BinaryIO = sys.stdout.buffer
        else:
            out = stack.enter_context(open(args.out, "wb"))
        summary = export(directory, out, args.format, filters, reasoning=args.reasoning, dedupe=not args.no_dedupe)
    report = sys.stderr if to_stdout else sys.stdout
    print("\n".join(summary.lines()), file=report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m addons.prompt_log", description="Prompt log tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="turn prompt logs into a fine-tuning dataset (JSONL)")
    ex.add_argument("--dir", default="prompt-logs", help="prompt log folder (default: prompt-logs)")
    ex.add_argument("--out", required=True, help="output JSONL file, or - for stdout")
    ex.add_argument("--format", choices=("openai", "sharegpt"), default="openai")
    ex.add_argument("--since", help="first day (YYYY-MM-DD, UTC) or ISO timestamp")
    ex.add_argument("--until", help="last day (YYYY-MM-DD, UTC, inclusive) or ISO timestamp")
    ex.add_argument("--provider", action="append", help="only this provider (repeatable)")
    ex.add_argument("--model", action="append", help="only this model, requested or upstream (repeatable)")
    ex.add_argument("--ok-only", action="store_true", help="only whole answers (status ok)")
    ex.add_argument("--min-turns", type=int, help="at least this many model answers in the conversation")
    ex.add_argument("--max-turns", type=int, help="at most this many model answers in the conversation")
    ex.add_argument("--reasoning", action="store_true", help="openai format: keep reasoning_content")
    ex.add_argument("--no-dedupe", action="store_true", help="keep repeated conversations and prefixes")
    args = parser.parse_args(argv)
    return _export_main(args)


if __name__ == "__main__":
    sys.exit(main())
