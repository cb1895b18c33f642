"""PromptLog: one dataset record per exchange (the export tool is `python -m datasets export`).

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
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons.context import CLIENT_KEY_ID, CLIENT_KEY_NAME, EXCHANGE, ROUTE, Gateway, Route
from addons.outcome import OK, Outcome, outcome_of
from translators.openai_messages import conversation, tool_definitions

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


def _deprecated_main() -> int:
    """`python -m addons.prompt_log export` moved to `python -m datasets export` (kept for one release)."""
    print(
        "python -m addons.prompt_log export is deprecated and will be removed in the next release; "
        "use: python -m datasets export",
        file=sys.stderr,
    )
    from datasets.export import main

    return main()


if __name__ == "__main__":
    sys.exit(_deprecated_main())
