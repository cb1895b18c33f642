"""Claude Messages codec (dialects.md section 3): request, unary response, SSE stream, errors.

Claude is both a client dialect (Claude Code) and an upstream, so every direction is here. Claude's
`input_tokens` excludes cache reads/writes while the IR's includes them (dialects.md section 7);
`_usage_in` / `_usage_out` are the only places that convert.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Literal

from translators import ir
from translators.base import EncoderOptions, TranslationError
from translators.errors import claude_error, extract_message
from translators.signatures import decode_tool_call_id, encode_tool_call_id, tag_signature, untag_signature
from translators.sse import SseParser, encode_string, named_event
from translators.thinking import CLAUDE_MIN_BUDGET, EFFORT_TO_BUDGET, effort_to_budget
from translators.turns import fold_system_turns

DEFAULT_MAX_TOKENS = 8192
"""`max_tokens` sent to a Claude upstream when the client gave none: Claude requires the field, and
8192 fits the output limit of every Claude model since 3.5 (Claude 3 Haiku/Opus stop at 4096). It is
the only injected default; a thinking budget is added on top (see _render_thinking)."""

# A client asking for thinking without a budget or effort (e.g. Gemini includeThoughts) gets this.
_DEFAULT_BUDGET = EFFORT_TO_BUDGET["medium"]

# Claude needs a user turn first; an IR starting with the assistant (a prefill, or history that began
# with one) gets this minimal user turn in front, as LiteLLM does.
_PLACEHOLDER_USER_TEXT = "."

_ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")
# Claude server/built-in tool types: web_search_20250305, bash_20250124, text_editor_20250728, ...
_SERVER_TOOL_RE = re.compile(r"[a-z][a-z0-9_]*_\d{8}")
_FREEFORM_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}

# Top-level request fields the IR models; everything else rides in extras["claude"].
_KNOWN_FIELDS = frozenset(
    "model messages max_tokens system tools tool_choice thinking stop_sequences temperature top_p top_k stream".split()
)

_STOP_IN: dict[str, ir.FinishReason] = {
    "end_turn": ir.FinishReason.STOP,
    "stop_sequence": ir.FinishReason.STOP_SEQUENCE,
    "max_tokens": ir.FinishReason.LENGTH,
    "tool_use": ir.FinishReason.TOOL_CALLS,
    "refusal": ir.FinishReason.CONTENT_FILTER,
    "pause_turn": ir.FinishReason.PAUSE,
    "model_context_window_exceeded": ir.FinishReason.CONTEXT_EXCEEDED,
}
_STOP_OUT: dict[ir.FinishReason, str] = {v: k for k, v in _STOP_IN.items()}
_STOP_OUT[ir.FinishReason.ERROR] = "end_turn"

_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_CHOICE_IN: dict[str, Literal["auto", "none", "required", "tool"]] = {
    "auto": "auto",
    "any": "required",
    "none": "none",
    "tool": "tool",
}

# Claude adaptive-thinking efforts are low|medium|high|max; the IR says xhigh for max.
_EFFORT_IN = {"max": "xhigh"}
_EFFORT_OUT = {"none": "low", "minimal": "low", "xhigh": "max"}

# Base64 prefixes of the image formats Claude accepts, for parts that lack a media type.
_MAGIC = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


# ---------------------------------------------------------------------------------------------
# Request parsing (client -> IR)

_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _field(obj: dict[str, Any], key: str, path: str, kind: str, *, required: bool = False) -> Any:
    """obj[key] checked against a JSON kind; null counts as absent (Claude is lenient there)."""
    value = obj.get(key)
    if value is None:
        if required:
            raise TranslationError(path, "field required")
        return None
    if not isinstance(value, _KINDS[kind]) or (isinstance(value, bool) and kind != "boolean"):
        raise TranslationError(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranslationError(path, "must be an object")
    return value


def _parse_media(block: dict[str, Any], kind: str, path: str) -> ir.ImagePart | ir.TextPart:
    """image and document blocks. A PDF document becomes an ImagePart with media type
    application/pdf (Gemini takes it as inline data, a Claude upstream gets the document back);
    a plain-text document becomes its text."""
    source = _field(block, "source", f"{path}.source", "object", required=True)
    source_kind = _field(source, "type", f"{path}.source.type", "string", required=True)
    if source_kind == "base64":
        return ir.ImagePart(
            media_type=_field(source, "media_type", f"{path}.source.media_type", "string", required=True),
            data=_field(source, "data", f"{path}.source.data", "string", required=True),
        )
    if source_kind == "url":
        url = _field(source, "url", f"{path}.source.url", "string", required=True)
        return ir.ImagePart(media_type="application/pdf" if kind == "document" else None, url=url)
    if source_kind == "text" and kind == "document":
        return ir.TextPart(_field(source, "data", f"{path}.source.data", "string", required=True))
    raise TranslationError(f"{path}.source.type", f"unsupported {kind} source type {source_kind!r}")


def _parse_block(value: Any, path: str, names: dict[str, str]) -> ir.Part:
    block = _object(value, path)
    kind = _field(block, "type", f"{path}.type", "string", required=True)
    if kind == "text":
        text = _field(block, "text", f"{path}.text", "string", required=True)
        return ir.TextPart(text, _field(block, "cache_control", f"{path}.cache_control", "object"))
    if kind in ("image", "document"):
        return _parse_media(block, kind, path)
    if kind == "tool_use":
        call_id, signature, origin = decode_tool_call_id(_field(block, "id", f"{path}.id", "string", required=True))
        name = _field(block, "name", f"{path}.name", "string", required=True)
        names[call_id] = name
        args = _field(block, "input", f"{path}.input", "object")
        return ir.ToolCallPart(call_id, name, args if args is not None else {}, signature, origin)
    if kind == "tool_result":
        raw_id = _field(block, "tool_use_id", f"{path}.tool_use_id", "string", required=True)
        call_id = decode_tool_call_id(raw_id)[0]
        is_error = bool(_field(block, "is_error", f"{path}.is_error", "boolean"))
        return ir.ToolResultPart(call_id, _parse_result_content(block, path), is_error, names.get(call_id))
    if kind == "thinking":
        text = _field(block, "thinking", f"{path}.thinking", "string", required=True)
        signature = _field(block, "signature", f"{path}.signature", "string")
        if not signature:
            return ir.ThinkingPart(text)
        signature, origin = untag_signature(signature)
        return ir.ThinkingPart(text, signature, origin)
    if kind == "redacted_thinking":
        data = _field(block, "data", f"{path}.data", "string", required=True)
        return ir.ThinkingPart("", signature_origin="claude", redacted=data)
    raise TranslationError(f"{path}.type", f"unsupported content block type {kind!r}")


def _parse_result_content(block: dict[str, Any], path: str) -> list[ir.TextPart | ir.ImagePart]:
    content = block.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.TextPart(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{path}.content", "must be a string or an array of content blocks")
    out: list[ir.TextPart | ir.ImagePart] = []
    for i, item in enumerate(content):
        sub = f"{path}.content[{i}]"
        part = _parse_block(item, sub, {})
        if not isinstance(part, ir.TextPart | ir.ImagePart):
            raise TranslationError(f"{sub}.type", "tool_result content must be text, image or document blocks")
        out.append(part)
    return out


def _parse_message(value: Any, path: str, names: dict[str, str]) -> ir.Message:
    msg = _object(value, path)
    role = _field(msg, "role", f"{path}.role", "string", required=True)
    if role not in ("user", "assistant", "system"):
        raise TranslationError(f"{path}.role", f"must be 'user', 'assistant' or 'system', got {role!r}")
    content = msg.get("content")
    if role == "system":
        # Claude Code sends these between turns; Anthropic accepts them. Text only, kept in place.
        if isinstance(content, str):
            return ir.Message("system", [ir.TextPart(content)] if content else [])
        return ir.Message("system", _parse_system_blocks(content, f"{path}.content"))
    if isinstance(content, str):
        return ir.Message(role, [ir.TextPart(content)] if content else [])
    if not isinstance(content, list):
        raise TranslationError(f"{path}.content", "must be a string or an array of content blocks")
    return ir.Message(role, [_parse_block(b, f"{path}.content[{j}]", names) for j, b in enumerate(content)])


def _parse_system(value: Any) -> list[ir.TextPart]:
    if value is None:
        return []
    if isinstance(value, str):
        return [ir.TextPart(value)] if value else []
    return _parse_system_blocks(value, "system")


def _parse_system_blocks(value: Any, path: str) -> list[ir.TextPart]:
    if not isinstance(value, list):
        raise TranslationError(path, "must be a string or an array of text blocks")
    out = []
    for i, item in enumerate(value):
        block = _object(item, f"{path}[{i}]")
        kind = _field(block, "type", f"{path}[{i}].type", "string", required=True)
        if kind != "text":
            raise TranslationError(f"{path}[{i}].type", f"system blocks must be text, got {kind!r}")
        text = _field(block, "text", f"{path}[{i}].text", "string", required=True)
        out.append(ir.TextPart(text, _field(block, "cache_control", f"{path}[{i}].cache_control", "object")))
    return out


def _parse_tools(value: list[Any]) -> list[ir.Tool]:
    tools = []
    for i, item in enumerate(value):
        path = f"tools[{i}]"
        tool = _object(item, path)
        kind = _field(tool, "type", f"{path}.type", "string")
        if kind not in (None, "custom"):  # server tool: only a Claude upstream can run it, unchanged
            tools.append(ir.Tool(_field(tool, "name", f"{path}.name", "string") or kind, kind=kind, raw=tool))
            continue
        name = _field(tool, "name", f"{path}.name", "string", required=True)
        description = _field(tool, "description", f"{path}.description", "string") or ""
        schema = _field(tool, "input_schema", f"{path}.input_schema", "object")
        strict = _field(tool, "strict", f"{path}.strict", "boolean")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        tools.append(ir.Tool(name, description, schema, strict=strict))
    return tools


def _parse_tool_choice(value: dict[str, Any]) -> tuple[ir.ToolChoice, bool | None]:
    kind = _field(value, "type", "tool_choice.type", "string", required=True)
    if kind not in _CHOICE_IN:
        raise TranslationError("tool_choice.type", f"must be auto, any, none or tool, got {kind!r}")
    name = _field(value, "name", "tool_choice.name", "string", required=kind == "tool")
    no_parallel = _field(value, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use", "boolean")
    return ir.ToolChoice(_CHOICE_IN[kind], name), (False if no_parallel else None)


def _parse_thinking(body: dict[str, Any], extras: dict[str, Any]) -> ir.Reasoning | None:
    thinking = _field(body, "thinking", "thinking", "object")
    if thinking is None:
        return None
    kind = _field(thinking, "type", "thinking.type", "string", required=True)
    if kind == "enabled":
        return ir.Reasoning(
            budget_tokens=_field(thinking, "budget_tokens", "thinking.budget_tokens", "integer", required=True)
        )
    if kind == "adaptive":
        # Remembered so a Claude upstream gets adaptive thinking back (newer models take nothing else).
        extras["thinking"] = thinking
        config = _field(body, "output_config", "output_config", "object") or {}
        effort = _field(config, "effort", "output_config.effort", "string")
        return ir.Reasoning(effort=_EFFORT_IN.get(effort, effort) if effort else None)
    if kind == "disabled":
        return None
    raise TranslationError("thinking.type", f"must be enabled, adaptive or disabled, got {kind!r}")


def parse_request(body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.Request:
    """Client Messages body -> IR. Strict on shapes (a wrong type names its field), lenient on
    nulls and on fields the IR does not model (they ride along in extras["claude"])."""
    body = _object(body, "body")
    model_name = model if model is not None else _field(body, "model", "model", "string", required=True)
    max_tokens = _field(body, "max_tokens", "max_tokens", "integer", required=True)
    if max_tokens < 1:
        raise TranslationError("max_tokens", "must be at least 1")
    raw_messages = _field(body, "messages", "messages", "array", required=True)
    if not raw_messages:
        raise TranslationError("messages", "at least one message is required")
    names: dict[str, str] = {}
    messages = [_parse_message(m, f"messages[{i}]", names) for i, m in enumerate(raw_messages)]

    extras = {k: v for k, v in body.items() if k not in _KNOWN_FIELDS}
    req = ir.Request(
        model=model_name,
        messages=messages,
        system=_parse_system(body.get("system")),
        tools=_parse_tools(_field(body, "tools", "tools", "array") or []),
        stream=stream if stream is not None else bool(_field(body, "stream", "stream", "boolean")),
        max_tokens=max_tokens,
        temperature=_field(body, "temperature", "temperature", "number"),
        top_p=_field(body, "top_p", "top_p", "number"),
        top_k=_field(body, "top_k", "top_k", "integer"),
        reasoning=_parse_thinking(body, extras),
    )
    stops = _field(body, "stop_sequences", "stop_sequences", "array") or []
    for i, stop in enumerate(stops):
        if not isinstance(stop, str):
            raise TranslationError(f"stop_sequences[{i}]", "must be a string")
    req.stop = list(stops)
    choice = _field(body, "tool_choice", "tool_choice", "object")
    if choice is not None:
        req.tool_choice, req.parallel_tool_calls = _parse_tool_choice(choice)
    metadata = _field(body, "metadata", "metadata", "object")
    if metadata is not None:
        req.user = _field(metadata, "user_id", "metadata.user_id", "string")
    if extras:
        req.extras["claude"] = extras
    return req


# ---------------------------------------------------------------------------------------------
# Request rendering (IR -> Claude upstream)


def sanitize_tool_id(value: str) -> str:
    """A tool id Claude accepts (^[a-zA-Z0-9_-]+$). Deterministic and used for tool_use ids and
    tool_result tool_use_ids alike, so pairs still match; a hash suffix keeps distinct ids distinct."""
    if _ID_RE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{_ID_BAD.sub('_', value)}_{digest}"


def _render_image(part: ir.ImagePart) -> dict[str, Any] | None:
    media, data, url = part.media_type, part.data, part.url
    if data is None and url is not None and url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media = media or header.split(";")[0] or None
    if data is not None:
        media = media or next((m for prefix, m in _MAGIC if data.startswith(prefix)), "image/png")
        source: dict[str, Any] = {"type": "base64", "media_type": media, "data": data}
    elif url is not None:
        source = {"type": "url", "url": url}
    else:
        return None
    return {"type": "document" if media == "application/pdf" else "image", "source": source}


def _render_text(part: ir.TextPart) -> dict[str, Any] | None:
    if not part.text:  # Claude rejects empty text blocks
        return None
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _render_part(part: ir.Part, keep_thinking: bool) -> dict[str, Any] | None:
    if isinstance(part, ir.TextPart):
        return _render_text(part)
    if isinstance(part, ir.ImagePart):
        return _render_image(part)
    if isinstance(part, ir.ToolCallPart):
        args = part.arguments if isinstance(part.arguments, dict) else {"value": part.arguments}
        return {"type": "tool_use", "id": sanitize_tool_id(part.id), "name": part.name, "input": args}
    if isinstance(part, ir.ToolResultPart):
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": sanitize_tool_id(part.tool_call_id)}
        content = [b for p in part.content if (b := _render_part(p, False)) is not None]
        if content:
            block["content"] = content
        if part.is_error:
            block["is_error"] = True
        return block
    # Thinking: only Claude's own signed blocks can be replayed to Claude.
    if not keep_thinking or part.signature_origin != "claude":
        return None
    if part.redacted is not None:
        return {"type": "redacted_thinking", "data": part.redacted}
    if part.signature:
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    return None


def _render_messages(messages: list[ir.Message], keep_thinking: bool) -> list[dict[str, Any]]:
    """Claude wants alternating turns starting with user, tool results first in their turn, and
    no trailing whitespace in a final assistant prefill."""
    out: list[dict[str, Any]] = []
    # System turns stay in place, except between tool calls and their results (which must follow).
    for msg in fold_system_turns(messages, only_after_tool_calls=True):
        blocks = [b for p in msg.parts if (b := _render_part(p, keep_thinking)) is not None]
        if not blocks:
            continue
        if msg.role == "system":  # in place, as Claude Code sends them; never merged with a turn
            out.append({"role": "system", "content": blocks})
            continue
        if out and out[-1]["role"] == msg.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": msg.role, "content": blocks})
    for msg in out:
        if msg["role"] == "user":
            msg["content"].sort(key=lambda b: b["type"] != "tool_result")  # stable
    if out and out[-1]["role"] == "assistant" and out[-1]["content"][-1]["type"] == "text":
        content = out[-1]["content"]
        text = content[-1]["text"].rstrip()
        if text:
            content[-1]["text"] = text
        else:
            content.pop()
            if not content:
                out.pop()
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": _PLACEHOLDER_USER_TEXT}]})
    return out


def _tool_loop_without_thinking(messages: list[dict[str, Any]]) -> bool:
    """Claude rejects thinking when the assistant turn answered by the final tool results does not
    start with a thinking block (e.g. history made by another model): thinking must be off then."""
    if len(messages) < 2 or not any(b["type"] == "tool_result" for b in messages[-1]["content"]):
        return False
    prev = messages[-2]["content"]
    uses_tools = any(b["type"] == "tool_use" for b in prev)
    return uses_tools and prev[0]["type"] not in ("thinking", "redacted_thinking")


def render_tool(tool: ir.Tool) -> dict[str, Any] | None:
    if tool.kind in ("function", "custom"):
        schema = tool.parameters if tool.kind == "function" else _FREEFORM_SCHEMA
        if "type" not in schema:
            schema = {"type": "object", **schema}
        out: dict[str, Any] = {"name": tool.name}
        if tool.description:
            out["description"] = tool.description
        out["input_schema"] = schema
        return out
    if tool.raw is not None and _SERVER_TOOL_RE.fullmatch(tool.kind):
        return tool.raw
    return None  # another provider's built-in: Claude cannot run it


def _render_tool_choice(req: ir.Request) -> dict[str, Any] | None:
    choice = req.tool_choice
    out: dict[str, Any] | None = None
    if choice is not None:
        if choice.mode == "none":
            return {"type": "none"}
        if choice.mode == "tool" and choice.name:
            out = {"type": "tool", "name": choice.name}
        else:
            out = {"type": "any" if choice.mode in ("required", "tool") else "auto"}
    if req.parallel_tool_calls is False:
        out = out or {"type": "auto"}
        out["disable_parallel_tool_use"] = True
    return out


# Structured output on Claude: a forced tool whose input is the answer (works with every Claude
# model, unlike the beta output_format); the answer's tool call comes back to the client as text.
STRUCTURED_TOOL = "structured_output"


def structured_output(rf: ir.ResponseFormat | None) -> tuple[dict[str, Any], bool] | None:
    """(the forced tool, whether the schema was wrapped) for a JSON response format, else None.
    Claude's input_schema must be an object: other roots are wrapped in {"value": ...}."""
    if rf is None or rf.type == "text":
        return None
    schema = rf.schema if rf.type == "json_schema" and rf.schema else {"type": "object"}
    wrapped = schema.get("type") != "object"
    if wrapped:
        schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    description = "Give the final answer by calling this tool; its input is the JSON the user asked for."
    return {"name": STRUCTURED_TOOL, "description": description, "input_schema": schema}, wrapped


def _structured_text(arguments: dict[str, Any], wrapped: bool) -> str:
    return json.dumps(arguments.get("value") if wrapped else arguments, ensure_ascii=False)


def structured_response(resp: ir.Response, wrapped: bool) -> ir.Response:
    """A unary answer with the structured-output tool call turned back into the JSON text."""
    parts: list[ir.Part] = []
    found = False
    for part in resp.parts:
        if isinstance(part, ir.ToolCallPart) and part.name == STRUCTURED_TOOL:
            parts.append(ir.TextPart(_structured_text(part.arguments, wrapped)))
            found = True
        else:
            parts.append(part)
    if not found:
        return resp
    finish = ir.FinishReason.STOP if resp.finish_reason == ir.FinishReason.TOOL_CALLS else resp.finish_reason
    return ir.Response(resp.id, resp.model, parts, finish, resp.usage, resp.stop_sequence)


class StructuredOutputDecoder:
    """Wraps a Claude stream decoder: the structured-output tool call becomes one text delta (its
    arguments are collected until the call ends, so a wrapped value can be unwrapped)."""

    __slots__ = ("_args", "_index", "inner", "wrapped")

    def __init__(self, inner: Any, wrapped: bool) -> None:
        self.inner = inner
        self.wrapped = wrapped
        self._index: int | None = None
        self._args: list[str] = []

    def feed(self, data: bytes) -> list[ir.Event]:
        return self._filter(self.inner.feed(data))

    def close(self) -> list[ir.Event]:
        return self._filter(self.inner.close())

    def _filter(self, events: list[ir.Event]) -> list[ir.Event]:
        out: list[ir.Event] = []
        for ev in events:
            kind = type(ev)
            if kind is ir.ToolCallStart and ev.name == STRUCTURED_TOOL:
                self._index = ev.index
                continue
            if kind is ir.ToolCallArgsDelta and ev.index == self._index:
                self._args.append(ev.delta)
                continue
            if kind is ir.ToolCallEnd and ev.index == self._index:
                try:
                    arguments = json.loads("".join(self._args) or "{}")
                except ValueError:
                    arguments = {"value": "".join(self._args)} if self.wrapped else {}
                out.append(
                    ir.TextDelta(_structured_text(arguments if isinstance(arguments, dict) else {}, self.wrapped))
                )
                continue
            if kind is ir.Finish and ev.reason == ir.FinishReason.TOOL_CALLS and self._index is not None:
                ev = ir.Finish(ir.FinishReason.STOP, ev.stop_sequence)
            out.append(ev)
        return out


def _thinking_budget(r: ir.Reasoning | None) -> int | None:
    """Thinking tokens the client asked for; None when thinking is off or the effort is unknown."""
    if r is None:
        return None
    if r.budget_tokens is not None and r.budget_tokens >= 0:  # negative: Gemini's "dynamic"
        return r.budget_tokens or None
    if r.effort is not None:
        return effort_to_budget(r.effort) or None
    return _DEFAULT_BUDGET


def _render_thinking(
    req: ir.Request, budget: int | None, adaptive: dict[str, Any] | None, output_config: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
    """(thinking, output_config, max_tokens). A budget is clamped to Claude's rule 1024 <= budget <
    max_tokens; without a client max_tokens the answer keeps DEFAULT_MAX_TOKENS on top of the budget,
    with one the budget shrinks to fit (OpenAI's max_completion_tokens also counts reasoning).
    A Claude client's adaptive thinking stays adaptive unless a budget was set since."""
    max_tokens = req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
    r = req.reasoning
    if budget is None or r is None:
        return None, output_config, max_tokens
    if adaptive is not None and r.budget_tokens is None:
        if r.effort is not None:
            output_config = {**(output_config or {}), "effort": _EFFORT_OUT.get(r.effort, r.effort)}
        return adaptive, output_config, max_tokens
    if req.max_tokens is None and budget >= max_tokens:
        max_tokens = budget + DEFAULT_MAX_TOKENS
    budget = max(CLAUDE_MIN_BUDGET, min(budget, max_tokens - 1))
    return {"type": "enabled", "budget_tokens": budget}, output_config, max(max_tokens, budget + 1)


def render_request(req: ir.Request, model: str) -> dict[str, Any]:
    """IR -> Claude upstream body. Sends only what the client asked for, except `max_tokens`
    (Claude requires it: DEFAULT_MAX_TOKENS when absent, raised to fit a thinking budget), and drops
    what Claude would reject: sampling settings thinking forbids, thinking with a forced tool choice
    or in a tool loop begun by another model, thinking blocks while thinking is off, foreign
    signatures, other providers' built-in tools. Fields Claude lacks (seed, penalties) and tool
    `strict` (older models reject it) are not sent; a JSON response_format becomes a forced tool."""
    extras = dict(req.extras.get("claude", {}))
    adaptive = extras.pop("thinking", None)
    metadata = extras.pop("metadata", None)
    output_config = extras.pop("output_config", None)

    tools = [t for t in map(render_tool, req.tools) if t is not None]
    tool_choice = _render_tool_choice(req) if tools else None
    structured = structured_output(req.response_format)
    if structured is not None:
        tools.append(structured[0])
        tool_choice = {"type": "tool", "name": STRUCTURED_TOOL}
    forced_tool = tool_choice is not None and tool_choice["type"] in ("any", "tool")
    budget = None if forced_tool else _thinking_budget(req.reasoning)
    messages = _render_messages(req.messages, budget is not None)
    if budget is not None and _tool_loop_without_thinking(messages):
        budget = None
        messages = _render_messages(req.messages, False)
    thinking, output_config, max_tokens = _render_thinking(req, budget, adaptive, output_config)

    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    system = [b for p in req.system if (b := _render_text(p)) is not None]
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 and "cache_control" not in system[0] else system
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if thinking is not None:
        body["thinking"] = thinking
    if output_config is not None:
        body["output_config"] = output_config
    stops = [s for s in req.stop if s.strip()]  # Claude rejects whitespace-only stop sequences
    if stops:
        body["stop_sequences"] = stops
    if req.temperature is not None and (thinking is None or req.temperature == 1):
        body["temperature"] = req.temperature
    if req.top_p is not None and (thinking is None or req.top_p >= 0.95):
        body["top_p"] = req.top_p
    if req.top_k is not None and thinking is None:
        body["top_k"] = req.top_k
    if req.user is not None:
        metadata = {**(metadata or {}), "user_id": req.user}
    if metadata is not None:
        body["metadata"] = metadata
    if req.stream:
        body["stream"] = True
    for key, value in extras.items():
        body.setdefault(key, value)
    return body


# ---------------------------------------------------------------------------------------------
# Responses (unary)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _usage_in(usage: dict[str, Any]) -> ir.Usage:
    """Claude usage -> IR. Input only when reported: message_delta may carry output alone."""
    read, write = _int(usage.get("cache_read_input_tokens")), _int(usage.get("cache_creation_input_tokens"))
    raw_input = usage.get("input_tokens")
    total = _int(raw_input) + read + write if isinstance(raw_input, int) else 0
    return ir.Usage(total, _int(usage.get("output_tokens")), read, write)


def _usage_out(usage: ir.Usage) -> dict[str, int]:
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.input_tokens - read - write),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": usage.output_tokens,
    }


def _stop_out(reason: ir.FinishReason, has_tool_calls: bool) -> str:
    """A valid Claude stop reason that agrees with the content (Claude clients run tools on tool_use)."""
    if reason is ir.FinishReason.STOP and has_tool_calls:
        return "tool_use"
    if reason is ir.FinishReason.TOOL_CALLS and not has_tool_calls:
        return "end_turn"
    return _STOP_OUT[reason]


def parse_response(body: Any) -> ir.Response:
    """Upstream Claude message -> IR. Server-tool blocks (web search results) have no IR form and
    are skipped."""
    if not isinstance(body, dict):
        raise TranslationError("body", "upstream response is not a JSON object", 502)
    parts: list[ir.Part] = []
    for block in body.get("content") or []:
        block = _dict(block)
        kind = block.get("type")
        if kind == "text" and (text := _str(block.get("text"))):
            parts.append(ir.TextPart(text))
        elif kind == "thinking":
            parts.append(ir.ThinkingPart(_str(block.get("thinking")), _str(block.get("signature")) or None, "claude"))
        elif kind == "redacted_thinking":
            parts.append(ir.ThinkingPart("", signature_origin="claude", redacted=_str(block.get("data"))))
        elif kind == "tool_use":
            parts.append(ir.ToolCallPart(_str(block.get("id")), _str(block.get("name")), _dict(block.get("input"))))
    return ir.Response(
        id=_str(body.get("id")),
        model=_str(body.get("model")),
        parts=parts,
        finish_reason=_STOP_IN.get(_str(body.get("stop_reason")), ir.FinishReason.STOP),
        usage=_usage_in(_dict(body.get("usage"))),
        stop_sequence=_str(body.get("stop_sequence")) or None,
    )


def render_response(resp: ir.Response, model: str) -> dict[str, Any]:
    """IR -> Claude message for a Claude client. Foreign signatures stay replayable: tagged in
    thinking blocks, encoded in tool ids (signatures.py)."""
    content: list[dict[str, Any]] = []
    for part in resp.parts:
        if isinstance(part, ir.TextPart):
            if part.text:
                content.append({"type": "text", "text": part.text})
        elif isinstance(part, ir.ThinkingPart):
            if part.redacted is not None:
                content.append({"type": "redacted_thinking", "data": part.redacted})
            else:
                signature = tag_signature(part.signature, part.signature_origin) if part.signature else ""
                content.append({"type": "thinking", "thinking": part.text, "signature": signature})
        elif isinstance(part, ir.ToolCallPart):
            call_id = encode_tool_call_id(part.id, part.signature, part.signature_origin)
            content.append({"type": "tool_use", "id": call_id, "name": part.name, "input": part.arguments})
    stop = _stop_out(resp.finish_reason, any(c["type"] == "tool_use" for c in content))
    return {
        "id": resp.id or _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": resp.stop_sequence if stop == "stop_sequence" else None,
        "usage": _usage_out(resp.usage),
    }


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------------
# Streams


def _event(name: str, payload: dict[str, Any]) -> str:
    return named_event(name, {"type": name, **payload})


def _bytes(out: list[str]) -> bytes:
    # "replace": a lone surrogate (half an emoji from a sloppy upstream) must not raise mid-stream.
    return "".join(out).encode("utf-8", "replace")


class ClaudeEncoder:
    """IR events -> Claude client SSE. One block open at a time; blocks numbered from 0."""

    __slots__ = ("_done", "_id", "_index", "_open", "_opts", "_saw_tool", "_started", "_tool", "_usage")

    def __init__(self, opts: EncoderOptions) -> None:
        self._opts = opts
        self._id = opts.response_id
        self._usage = ir.Usage()
        self._started = False
        self._done = False
        self._index = -1
        self._open: str | None = None  # type of the open block
        self._tool: int | None = None  # IR index of the open tool_use block
        self._saw_tool = False

    def feed(self, events: list[ir.Event]) -> bytes:
        out: list[str] = []
        for ev in events:
            if self._done:
                break
            if isinstance(ev, ir.MessageStart):
                self._id = self._id or ev.id
            elif isinstance(ev, ir.UsageUpdate):
                # Merged before message_start is written when it arrives in the same batch, so a
                # Claude upstream's real input and cache counts reach message_start.
                self._usage.merge(ev.usage)
            elif isinstance(ev, ir.StreamError):
                self._close_block(out)
                out.append(named_event("error", claude_error(ev.status, ev.message)))
                self._done = True
            else:
                self._start(out)
                self._content(ev, out)
        if events and not self._done:
            self._start(out)
        return _bytes(out)

    def close(self) -> bytes:
        if self._done:
            return b""
        out: list[str] = []
        self._start(out)
        self._finish(ir.FinishReason.STOP, None, out)
        return _bytes(out)

    def _content(self, ev: ir.Event, out: list[str]) -> None:
        if isinstance(ev, ir.TextDelta):
            if ev.text:
                if self._open != "text":
                    self._open_block({"type": "text", "text": ""}, out)
                self._text_delta("text_delta", "text", ev.text, out)
        elif isinstance(ev, ir.ThinkingDelta):
            if ev.text:
                if self._open != "thinking":
                    self._open_block({"type": "thinking", "thinking": "", "signature": ""}, out)
                self._text_delta("thinking_delta", "thinking", ev.text, out)
        elif isinstance(ev, ir.ThinkingSignature):
            if ev.redacted is not None:
                self._open_block({"type": "redacted_thinking", "data": ev.redacted}, out)
            elif ev.signature:
                if self._open != "thinking":
                    self._open_block({"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta({"type": "signature_delta", "signature": tag_signature(ev.signature, ev.origin)}, out)
            else:
                return
            self._close_block(out)  # a signature ends its thinking block
        elif isinstance(ev, ir.ToolCallStart):
            call_id = encode_tool_call_id(ev.id, ev.signature, ev.signature_origin)
            name = (self._opts.tool_name_map or {}).get(ev.name, ev.name)
            self._open_block({"type": "tool_use", "id": call_id, "name": name, "input": {}}, out)
            self._tool = ev.index
            self._saw_tool = True
        elif isinstance(ev, ir.ToolCallArgsDelta):
            if ev.delta and self._open == "tool_use" and self._tool == ev.index:
                self._text_delta("input_json_delta", "partial_json", ev.delta, out)
        elif isinstance(ev, ir.ToolCallEnd):
            if self._open == "tool_use" and self._tool == ev.index:
                self._close_block(out)
        elif isinstance(ev, ir.Finish):
            self._finish(ev.reason, ev.stop_sequence, out)

    def _start(self, out: list[str]) -> None:
        if self._started:
            return
        self._started = True
        usage = _usage_out(self._usage)
        if not self._usage.input_tokens:
            usage["input_tokens"] = self._opts.input_tokens_estimate
        usage["output_tokens"] = usage["output_tokens"] or 1
        message = {
            "id": self._id or _message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._opts.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        out.append(_event("message_start", {"message": message}))

    def _open_block(self, block: dict[str, Any], out: list[str]) -> None:
        self._close_block(out)
        self._index += 1
        self._open = block["type"]
        out.append(_event("content_block_start", {"index": self._index, "content_block": block}))

    def _close_block(self, out: list[str]) -> None:
        if self._open is not None:
            out.append(_event("content_block_stop", {"index": self._index}))
            self._open = self._tool = None

    def _delta(self, delta: dict[str, Any], out: list[str]) -> None:
        out.append(_event("content_block_delta", {"index": self._index, "delta": delta}))

    def _text_delta(self, kind: str, field: str, text: str, out: list[str]) -> None:
        """`_delta({"type": kind, field: text})`, byte for byte, from a template: the event most
        streams are made of, without building and encoding three dicts per token (test_claude checks
        both give the same bytes)."""
        out.append(
            f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{self._index},'
            f'"delta":{{"type":"{kind}","{field}":{encode_string(text)}}}}}\n\n'
        )

    def _finish(self, reason: ir.FinishReason, stop_sequence: str | None, out: list[str]) -> None:
        self._close_block(out)
        stop = _stop_out(reason, self._saw_tool)
        # Real input/cache numbers go here too when known: message_start may only have had an estimate.
        usage = _usage_out(self._usage) if self._usage.input_tokens else {"output_tokens": self._usage.output_tokens}
        delta = {"stop_reason": stop, "stop_sequence": stop_sequence if stop == "stop_sequence" else None}
        out.append(_event("message_delta", {"delta": delta, "usage": usage}))
        out.append(_event("message_stop", {}))
        self._done = True


class ClaudeDecoder:
    """Claude upstream SSE -> IR events. Tool calls are numbered among tool calls, not blocks.
    Defensive about field types: an odd upstream frame is skipped, never raised on."""

    __slots__ = ("_blocks", "_done", "_finished", "_signatures", "_sse", "_tools")

    def __init__(self) -> None:
        self._sse = SseParser()
        # Claude block index -> "text" | "thinking" | IR tool-call index; other blocks are skipped.
        self._blocks: dict[int, str | int] = {}
        self._signatures: dict[int, str] = {}  # signature given in a thinking block's start
        self._tools = 0
        self._finished = False
        self._done = False

    def feed(self, data: bytes) -> list[ir.Event]:
        return self._decode(self._sse.feed(data))

    def close(self) -> list[ir.Event]:
        out = self._decode(self._sse.close())
        if not self._done and not self._finished:  # a Finish without message_stop is still finished
            out.append(ir.StreamError("upstream stream ended before finishing", 502))
        self._done = True
        return out

    def _decode(self, frames: list[tuple[str | None, str]]) -> list[ir.Event]:
        out: list[ir.Event] = []
        for name, data in frames:
            if self._done:
                break
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                out.append(ir.StreamError(f"malformed upstream event: {data[:200]}", 502))
                self._done = True
                break
            self._frame(_str(obj.get("type")) or name, obj, out)
        return out

    def _frame(self, kind: str | None, obj: dict[str, Any], out: list[ir.Event]) -> None:
        index = _int(obj.get("index")) if "index" in obj else -1
        if kind == "content_block_delta":
            self._block_delta(index, _dict(obj.get("delta")), out)
        elif kind == "content_block_start":
            self._block_start(index, _dict(obj.get("content_block")), out)
        elif kind == "content_block_stop":
            block = self._blocks.pop(index, None)
            signature = self._signatures.pop(index, None)
            if isinstance(block, int):
                out.append(ir.ToolCallEnd(block))
            elif signature:
                out.append(ir.ThinkingSignature(signature, "claude"))
        elif kind == "message_start":
            message = _dict(obj.get("message"))
            out.append(ir.MessageStart(_str(message.get("id")), _str(message.get("model"))))
            if isinstance(message.get("usage"), dict):
                out.append(ir.UsageUpdate(_usage_in(message["usage"])))
        elif kind == "message_delta":
            if isinstance(obj.get("usage"), dict):
                out.append(ir.UsageUpdate(_usage_in(obj["usage"])))
            delta = _dict(obj.get("delta"))
            stop = _str(delta.get("stop_reason"))
            if stop and not self._finished:
                self._finished = True
                reason = _STOP_IN.get(stop, ir.FinishReason.STOP)
                stop_sequence = _str(delta.get("stop_sequence")) or None
                out.append(ir.Finish(reason, stop_sequence if reason is ir.FinishReason.STOP_SEQUENCE else None))
        elif kind == "message_stop":
            if not self._finished:
                self._finished = True
                out.append(ir.Finish(ir.FinishReason.TOOL_CALLS if self._tools else ir.FinishReason.STOP))
            self._done = True
        elif kind == "error":
            error = _dict(obj.get("error"))
            status = _ERROR_STATUS.get(_str(error.get("type")), 500)
            out.append(ir.StreamError(_str(error.get("message")) or "upstream error", status))
            self._done = True
        # ping and event types added later are ignored

    def _block_start(self, index: int, block: dict[str, Any], out: list[ir.Event]) -> None:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = "text"
            if text := _str(block.get("text")):
                out.append(ir.TextDelta(text))
        elif kind == "thinking":
            self._blocks[index] = "thinking"
            if text := _str(block.get("thinking")):
                out.append(ir.ThinkingDelta(text))
            if signature := _str(block.get("signature")):
                self._signatures[index] = signature
        elif kind == "redacted_thinking":
            out.append(ir.ThinkingSignature("", "claude", redacted=_str(block.get("data"))))
        elif kind == "tool_use":
            self._blocks[index] = self._tools
            out.append(ir.ToolCallStart(self._tools, _str(block.get("id")), _str(block.get("name"))))
            if args := _dict(block.get("input")):
                out.append(ir.ToolCallArgsDelta(self._tools, json.dumps(args, ensure_ascii=False)))
            self._tools += 1

    def _block_delta(self, index: int, delta: dict[str, Any], out: list[ir.Event]) -> None:
        block = self._blocks.get(index)
        kind = delta.get("type")
        if kind == "text_delta" and block == "text":
            if text := _str(delta.get("text")):
                out.append(ir.TextDelta(text))
        elif kind == "thinking_delta" and block == "thinking":
            if text := _str(delta.get("thinking")):
                out.append(ir.ThinkingDelta(text))
        elif kind == "signature_delta" and block == "thinking":
            if signature := _str(delta.get("signature")):
                self._signatures.pop(index, None)
                out.append(ir.ThinkingSignature(signature, "claude"))
        elif kind == "input_json_delta" and isinstance(block, int):
            if fragment := _str(delta.get("partial_json")):
                out.append(ir.ToolCallArgsDelta(block, fragment))


# ---------------------------------------------------------------------------------------------
# The codec


class ClaudeCodec:
    name = "claude"
    stream_content_type = "text/event-stream"
    accepts_image_urls = True

    def parse_request(self, body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.Request:
        return parse_request(body, model=model, stream=stream)

    def render_request(self, req: ir.Request, model: str) -> dict[str, Any]:
        return render_request(req, model)

    def parse_response(self, body: Any) -> ir.Response:
        return parse_response(body)

    def render_response(self, resp: ir.Response, model: str) -> dict[str, Any]:
        return render_response(resp, model)

    def decoder(self) -> ClaudeDecoder:
        return ClaudeDecoder()

    def encoder(self, opts: EncoderOptions) -> ClaudeEncoder:
        return ClaudeEncoder(opts)

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        return claude_error(status, message)

    def error_message(self, body: bytes) -> str:
        return extract_message(body)


codec = ClaudeCodec()
