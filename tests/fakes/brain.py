"""The deterministic "model" behind every fake upstream.

Why one brain: each fake parses its own wire dialect into a neutral `Prompt` and renders the neutral
`Answer` back in that dialect, so a test can push the same conversation through any client/backend pair
and expect the same words, tool calls and token counts.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

THINKING_TEXT = "Let me think about this."
UNICODE_TEXT = "héllo wörld — 你好 🌍"
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog again."] * 6)  # 60 words
CACHE_MIN_PROMPT_WORDS = 100
CACHED_TOKENS = 32


@dataclass(frozen=True)
class Image:
    """An image as it arrived: decoded byte size for inline data, or the URL for references."""

    mime: str
    size: int = 0
    url: str | None = None

    def describe(self) -> str:
        return self.url if self.url else f"{self.mime} {self.size} bytes"


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool = False


@dataclass
class Prompt:
    """The neutral summary of a request: the last turn plus what shapes the answer."""

    text: str = ""
    images: list[Image] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    thinking: bool = False
    max_tokens: int | None = None
    words: int = 0  # word count of the whole prompt: the input token count

    @property
    def kind(self) -> str:
        return "tool_results" if self.tool_results else "user"


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: dict[str, Any]


@dataclass
class Answer:
    """The neutral reply; `finish` is "stop", "length" or "tool_calls"; output_tokens exclude reasoning."""

    text: str
    tool_calls: list[ToolCall]
    thinking: str | None
    signature: str | None
    finish: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int

    def text_deltas(self) -> list[str]:
        return word_deltas(self.text)

    def thinking_deltas(self) -> list[str]:
        return word_deltas(self.thinking or "")


def count_words(texts: Iterable[str]) -> int:
    return sum(len(text.split()) for text in texts)


def word_deltas(text: str) -> list[str]:
    """Word by word, each word with its following whitespace; joining them gives `text` back."""
    return re.findall(r"\s*\S+\s*", text)


def json_fragments(text: str, parts: int = 3) -> list[str]:
    """Cuts serialized tool arguments into several pieces, the way real streams deliver them."""
    step = max(1, -(-len(text) // parts))
    return [text[i : i + step] for i in range(0, len(text), step)]


def make_signature(seed: str) -> str:
    """A deterministic opaque signature that is valid base64 in both alphabets (no + / - _ or padding)."""
    for n in itertools.count():
        candidate = base64.b64encode(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:30]).decode()
        if candidate.isalnum():
            return "c2ln" + candidate  # "sig" in base64, so signatures are recognisable in logs


# Context blocks Claude Code adds to the user's turn (its system prompt also names the tag in passing, so
# only whole blocks on their own lines count); a model reads them but answers the user's own words.
SYSTEM_REMINDER = re.compile(r"^<system-reminder>\n.*?\n</system-reminder>\s*", re.DOTALL | re.MULTILINE)


def answer(prompt: Prompt) -> Answer:
    prompt.text = SYSTEM_REMINDER.sub("", prompt.text).strip()
    text, calls = _reply(prompt)
    finish = "tool_calls" if calls else "stop"
    if not calls and prompt.max_tokens is not None and count_words([text]) > prompt.max_tokens:
        text = " ".join(text.split()[: prompt.max_tokens])
        finish = "length"
    thinking = THINKING_TEXT if prompt.thinking else None
    return Answer(
        text=text,
        tool_calls=calls,
        thinking=thinking,
        signature=make_signature(f"{prompt.words}:{prompt.text}:{len(prompt.tool_results)}") if thinking else None,
        finish=finish,
        input_tokens=max(1, prompt.words),
        cached_tokens=CACHED_TOKENS if prompt.words >= CACHE_MIN_PROMPT_WORDS else 0,
        output_tokens=count_words([text, *(json.dumps(call.args) for call in calls)]),
        reasoning_tokens=count_words([thinking]) if thinking else 0,
    )


# The real CLIs' own file-reading tools and the arguments each takes (tests/e2e/test_cli_*.py): asked to
# "read the file PATH", the brain calls the first of these the request offers, so the CLI really runs it.
READ_FILE = re.compile(r"read the file (\S+)", re.IGNORECASE)
CLI_FILE_TOOLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "Read": lambda path: {"file_path": path},  # Claude Code
    "read_file": lambda path: {"file_path": path},  # Gemini CLI
    "exec_command": lambda path: {"cmd": f"cat {path}"},  # Codex
}


def _request_line(text: str) -> str:
    """The user's own request: the last line of the turn (upstreams without a system role, e.g. Kiro, get
    the system prompt merged in front of it, and a tool-trigger word there must not count)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _read_file_call(prompt: Prompt) -> ToolCall | None:
    match = READ_FILE.search(_request_line(prompt.text))
    if not match:
        return None
    name = next((tool for tool in CLI_FILE_TOOLS if tool in prompt.tools), None)
    return ToolCall(name, CLI_FILE_TOOLS[name](match.group(1))) if name else None


def _reply(prompt: Prompt) -> tuple[str, list[ToolCall]]:
    if prompt.tool_results:
        results = [r.text + (" (error)" if r.is_error else "") for r in prompt.tool_results]
        return "Tool results: " + "; ".join(results), []
    if call := _read_file_call(prompt):
        return "", [call]
    lowered = _request_line(prompt.text).lower()
    if prompt.tools and "parallel" in lowered:
        return "", [ToolCall(prompt.tools[0], {"city": "Paris"}), ToolCall(prompt.tools[0], {"city": "Tokyo"})]
    if prompt.tools and ("tool" in lowered or "weather" in lowered):
        return "", [ToolCall(prompt.tools[0], {"city": "Paris"})]
    if prompt.images:
        return f"I see {len(prompt.images)} image(s): " + ", ".join(image.describe() for image in prompt.images), []
    if "long" in lowered:
        return LONG_TEXT, []
    if "unicode" in lowered:
        return UNICODE_TEXT, []
    return f"Hello! You said: {prompt.text}", []
