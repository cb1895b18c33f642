"""The canonical conversation model every dialect codec converts to and from.

One IR instead of a from x to matrix: a codec only knows its own dialect and this module.
Plain slotted dataclasses: they are built once per request and, for stream events, once per
upstream delta, so they must stay cheap (no validation, no pydantic on this path).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------
# Content parts


@dataclass(slots=True)
class TextPart:
    text: str
    # Claude prompt-caching marker, kept so a Claude upstream sees it again; others ignore it.
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ImagePart:
    """An image, either inline (standard-alphabet base64 `data` + `media_type`) or by `url`."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class ToolCallPart:
    id: str
    name: str
    arguments: dict[str, Any]
    # Opaque provider signature bound to this call (Gemini thoughtSignature), with its origin.
    signature: str | None = None
    signature_origin: str | None = None


@dataclass(slots=True)
class ToolResultPart:
    tool_call_id: str
    content: list[TextPart | ImagePart]
    is_error: bool = False
    # Function name; Gemini needs it. Codecs fill it from history when the dialect lacks it.
    name: str | None = None


@dataclass(slots=True)
class ThinkingPart:
    text: str
    signature: str | None = None
    # Which model family produced the signature ("claude", "gemini", "openai", ...):
    # signatures are only replayed to the family that made them.
    signature_origin: str | None = None
    # Claude redacted_thinking payload (opaque); text is "" then.
    redacted: str | None = None


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart | ThinkingPart

# "system": a system/developer message inside the conversation (Claude Code's `role: "system"`
# messages, OpenAI `system`/`developer` messages after the first turn, Responses `developer` items),
# kept where the client put it. Only TextParts. Leading system text is Request.system instead.
Role = Literal["user", "assistant", "system"]


@dataclass(slots=True)
class Message:
    """A turn. Tool results travel as ToolResultPart in a user turn (Claude's model);
    OpenAI `tool` messages and Gemini `functionResponse` parts map onto that. Upstreams without an
    in-conversation system role get system turns folded into a user turn (translators.turns)."""

    role: Role
    parts: list[Part]


# ---------------------------------------------------------------------------------------------
# Request


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    # "function" for ordinary tools; "custom" for Responses freeform tools (one string input);
    # anything else is a provider built-in (e.g. Claude "web_search_20250305") kept by `raw`.
    kind: str = "function"
    raw: dict[str, Any] | None = None
    strict: bool | None = None
    # A Responses `namespace` group member (Codex: multi_agent_v1, mcp__*): (namespace, name in it).
    # `name` is then the flat name every upstream without namespaces sees (translators.openai_responses
    # namespaced_name); the Responses codec splits it back for its clients.
    namespace: tuple[str, str] | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True)
class Reasoning:
    """What the client asked for; codecs convert with translators.thinking."""

    effort: str | None = None  # none|minimal|low|medium|high|xhigh
    budget_tokens: int | None = None
    summary: str | None = None  # Responses reasoning.summary


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message]
    system: list[TextPart] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    # OpenAI stream_options.include_usage as the client sent it (only affects the client encoder).
    include_usage: bool = False
    # Sampling and limits: None means "the client did not send it" -- never inject defaults.
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    reasoning: Reasoning | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # Dialect-specific fields the IR does not model, by dialect name, so a same-dialect upstream
    # can receive them unchanged (e.g. {"claude": {"metadata": ..., "anthropic_beta": ...}}).
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Response


class FinishReason(enum.StrEnum):
    STOP = "stop"
    STOP_SEQUENCE = "stop_sequence"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    CONTEXT_EXCEEDED = "context_exceeded"
    PAUSE = "pause"
    ERROR = "error"


@dataclass(slots=True)
class Usage:
    """Canonical counts (dialects.md section 7): input includes cached tokens, output includes reasoning."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # True when the numbers are the gateway's estimate, not the upstream's count.
    estimated: bool = False

    def merge(self, other: Usage) -> None:
        """Take every non-zero count of a later usage report (streams report cumulatively)."""
        if other.input_tokens:
            self.input_tokens = other.input_tokens
        if other.output_tokens:
            self.output_tokens = other.output_tokens
        if other.cache_read_tokens:
            self.cache_read_tokens = other.cache_read_tokens
        if other.cache_write_tokens:
            self.cache_write_tokens = other.cache_write_tokens
        if other.reasoning_tokens:
            self.reasoning_tokens = other.reasoning_tokens
        self.estimated = other.estimated


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[Part]
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    stop_sequence: str | None = None


# ---------------------------------------------------------------------------------------------
# Stream events: what decoders emit and encoders consume, in order.
#
# Grammar: MessageStart, then any of TextDelta / ThinkingDelta / ThinkingSignature /
# ToolCallStart ToolCallArgsDelta* ToolCallEnd / UsageUpdate, then Finish (at most once), or
# StreamError at any point. Decoders emit ToolCallStart..ToolCallEnd of one call contiguously;
# `index` is the call's 0-based position among the tool calls of this response.


@dataclass(slots=True)
class MessageStart:
    id: str = ""
    model: str = ""


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ThinkingSignature:
    signature: str
    origin: str | None = None
    # Claude redacted_thinking data arrives as one opaque block.
    redacted: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str
    signature: str | None = None
    signature_origin: str | None = None


@dataclass(slots=True)
class ToolCallArgsDelta:
    index: int
    delta: str


@dataclass(slots=True)
class ToolCallEnd:
    index: int


@dataclass(slots=True)
class UsageUpdate:
    usage: Usage


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    message: str
    # HTTP-like status used to pick the dialect's error type (429 rate limit, 529 overloaded, ...).
    status: int = 500


Event = (
    MessageStart
    | TextDelta
    | ThinkingDelta
    | ThinkingSignature
    | ToolCallStart
    | ToolCallArgsDelta
    | ToolCallEnd
    | UsageUpdate
    | Finish
    | StreamError
)
