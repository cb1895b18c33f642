"""OpenAI Responses codec (dialects.md section 2).

Custom (freeform) tools become IR function tools with one string parameter `input`. Whether a call
goes back to the client as `custom_tool_call` depends on the client's tool list, which the IR
response does not carry, so render_response takes the custom tool names (`custom_tools`) and the encoder
reads them from EncoderOptions.custom_tools.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection
from typing import Any

from translators import ir
from translators.base import EncoderOptions, SafeEncoder, TranslationError
from translators.errors import extract_message, openai_error, openai_error_type
from translators.openai_chat import (
    UNDECODABLE,
    append_message,
    arguments_text,
    check,
    check_object,
    error_status,
    error_text,
    image_from_url,
    image_url,
    int_field,
    new_id,
    parse_arguments,
    require,
    text_field,
    upstream_arguments,
)
from translators.signatures import decode_tool_call_id, encode_tool_call_id
from translators.sse import SseParser, dumps, named_event
from translators.thinking import budget_to_effort

_KNOWN_KEYS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "text",
        "user",
        "previous_response_id",
        "conversation",
    }
)
# Hosted-tool records in replayed history: the answer text that follows already holds their results.
_DROPPED_ITEMS = frozenset({"web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call"})
# Responses built-in tool types: kept verbatim for a Responses upstream (other dialects' built-ins are not).
_BUILTIN_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "mcp",
        "computer_use_preview",
    }
)
# Foreign signatures ride in encrypted_content tagged with their origin; OpenAI's own blobs are base64 (no ':').
_TAGGED = ("claude", "gemini", "kiro")
_REDACTED = "redacted-"


def _encrypted(part: ir.ThinkingPart) -> str | None:
    if part.redacted is not None:
        return f"{_REDACTED}{part.signature_origin or 'claude'}:{part.redacted}"
    if part.signature is None or part.signature_origin in (None, "openai"):
        return part.signature
    return f"{part.signature_origin}:{part.signature}"


def _thinking(text: str, encrypted: str | None) -> ir.ThinkingPart:
    """Inverse of _encrypted: an untagged blob is OpenAI's."""
    if not encrypted:
        return ir.ThinkingPart(text)
    head, sep, rest = encrypted.partition(":")
    if sep and rest and head in _TAGGED:
        return ir.ThinkingPart(text, rest, head)
    if sep and rest and head.startswith(_REDACTED):
        return ir.ThinkingPart(text, signature_origin=head.removeprefix(_REDACTED), redacted=rest)
    return ir.ThinkingPart(text, encrypted, "openai")


def _custom_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """The one-string schema a custom tool becomes; its grammar, if any, goes into the description."""
    prop: dict[str, Any] = {"type": "string"}
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        prop["description"] = f"Raw text input, not JSON. Grammar ({fmt.get('syntax', 'lark')}):\n{fmt['definition']}"
    return {"type": "object", "properties": {"input": prop}, "required": ["input"]}


# ---------------------------------------------------------------------------------------------
# Request parsing


def _parts(content: Any, field: str) -> list[ir.TextPart | ir.ImagePart]:
    if isinstance(content, str):
        return [ir.TextPart(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError(field, "must be a string or an array of content parts")
    parts: list[ir.TextPart | ir.ImagePart] = []
    for j, item in enumerate(content):
        f = f"{field}[{j}]"
        kind = check_object(item, f).get("type")
        if kind in ("input_text", "output_text", "text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            text = require(item, key, str, f"{f}.{key}")
            if text:
                parts.append(ir.TextPart(text))
        elif kind == "input_image":
            if item.get("image_url") is None and item.get("file_id") is not None:
                raise TranslationError(f"{f}.file_id", "uploaded files are not supported; send image_url")
            detail = check(item.get("detail"), str, f"{f}.detail")
            parts.append(image_from_url(require(item, "image_url", str, f"{f}.image_url"), detail, f"{f}.image_url"))
        else:
            raise TranslationError(f"{f}.type", f"unsupported content part type {kind!r}")
    return parts


def _input(items: list[Any], system: list[ir.TextPart]) -> list[ir.Message]:
    messages: list[ir.Message] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        f = f"input[{i}]"
        check_object(item, f)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            parts = _parts(item.get("content"), f"{f}.content")
            if role in ("system", "developer"):
                texts: list[ir.TextPart] = []
                for part in parts:
                    if not isinstance(part, ir.TextPart):
                        raise TranslationError(f"{f}.content", f"{role} messages take text only")
                    texts.append(part)
                if messages:  # after the conversation began: kept in place
                    messages.append(ir.Message("system", texts))
                else:
                    system.extend(texts)
            elif role in ("user", "assistant"):
                append_message(messages, role, list(parts), merge=role == "assistant")
            else:
                raise TranslationError(f"{f}.role", f"unsupported role {role!r}")
        elif kind in ("function_call", "custom_tool_call"):
            call_id, signature, origin = decode_tool_call_id(require(item, "call_id", str, f"{f}.call_id"))
            name = require(item, "name", str, f"{f}.name")
            namespace = check(item.get("namespace"), str, f"{f}.namespace")
            if namespace:
                name = namespaced_name(namespace, name)
            if kind == "function_call":
                args = parse_arguments(item.get("arguments"), f"{f}.arguments")
            else:
                args = {"input": require(item, "input", str, f"{f}.input")}
            names[call_id] = name
            append_message(messages, "assistant", [ir.ToolCallPart(call_id, name, args, signature, origin)], True)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = decode_tool_call_id(require(item, "call_id", str, f"{f}.call_id"))[0]
            output = item.get("output")
            content = list(_parts("" if output is None else output, f"{f}.output"))
            append_message(messages, "user", [ir.ToolResultPart(call_id, content, name=names.get(call_id))], False)
        elif kind == "reasoning":
            check(item.get("summary"), list, f"{f}.summary")
            text = _summary_text(item)
            encrypted = check(item.get("encrypted_content"), str, f"{f}.encrypted_content")
            append_message(messages, "assistant", [_thinking(text, encrypted)], True)
        elif kind not in _DROPPED_ITEMS:
            raise TranslationError(f"{f}.type", f"unsupported input item type {kind!r}")
    return messages


# Tool names: 64 characters at most on OpenAI, Claude and Gemini alike.
MAX_TOOL_NAME = 64


def namespaced_name(namespace: str, name: str) -> str:
    """The flat name of a namespaced tool for upstreams without namespaces: `namespace__name`, cut
    to MAX_TOOL_NAME with a hash suffix so distinct tools stay distinct (deterministic, so calls in
    the history map to the same name)."""
    flat = f"{namespace}__{name}"
    if len(flat) <= MAX_TOOL_NAME:
        return flat
    digest = hashlib.sha256(flat.encode()).hexdigest()[:8]
    return f"{flat[: MAX_TOOL_NAME - 9]}_{digest}"


def _tools(raw: Any) -> list[ir.Tool]:
    """Tools, with `namespace` groups flattened into their members (named by namespaced_name)."""
    tools: list[ir.Tool] = []
    for i, t in enumerate(check(raw, list, "tools") or []):
        field = f"tools[{i}]"
        if isinstance(t, dict) and t.get("type") == "namespace":
            namespace = require(t, "name", str, f"{field}.name")
            for j, member in enumerate(check(t.get("tools"), list, f"{field}.tools") or []):
                tool = _tool(member, f"{field}.tools[{j}]")
                tool.namespace = (namespace, tool.name)
                tool.name = namespaced_name(namespace, tool.name)
                tools.append(tool)
            continue
        tools.append(_tool(t, field))
    return tools


def tool_namespaces(tools: list[ir.Tool]) -> dict[str, tuple[str, str]]:
    """Flat name -> (namespace, name) of the namespaced tools of a request."""
    return {t.name: t.namespace for t in tools if t.namespace is not None}


def _tool(t: Any, field: str) -> ir.Tool:
    kind = check_object(t, field).get("type")
    if kind in ("function", "custom"):
        description = check(t.get("description"), str, f"{field}.description") or ""
        tool = ir.Tool(require(t, "name", str, f"{field}.name"), description)
        if kind == "custom":
            tool.kind, tool.raw, tool.parameters = "custom", t, _custom_parameters(t)
        else:
            params = check(t.get("parameters"), dict, f"{field}.parameters")
            if params is not None:
                tool.parameters = params
            tool.strict = check(t.get("strict"), bool, f"{field}.strict")
        return tool
    if not isinstance(kind, str) or not kind:
        raise TranslationError(f"{field}.type", "is required")
    name = t.get("name") if isinstance(t.get("name"), str) else kind
    return ir.Tool(name, kind=kind, raw=t)


def _tool_choice(raw: Any) -> ir.ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ir.ToolChoice(raw)
    if isinstance(raw, dict) and raw.get("type") in ("function", "custom"):
        return ir.ToolChoice("tool", require(raw, "name", str, "tool_choice.name"))
    raise TranslationError("tool_choice", "must be 'auto', 'none', 'required' or {'type':'function','name':...}")


def _text_format(raw: Any) -> ir.ResponseFormat | None:
    if raw is None:
        return None
    kind = check_object(raw, "text.format").get("type")
    if kind in ("text", "json_object"):
        return ir.ResponseFormat(kind)
    if kind == "json_schema":
        return ir.ResponseFormat(
            "json_schema",
            schema=check(raw.get("schema"), dict, "text.format.schema"),
            name=check(raw.get("name"), str, "text.format.name"),
            strict=check(raw.get("strict"), bool, "text.format.strict"),
        )
    raise TranslationError("text.format.type", "must be 'text', 'json_object' or 'json_schema'")


# ---------------------------------------------------------------------------------------------
# Request rendering


def _render_parts(parts: list[ir.TextPart | ir.ImagePart], text_type: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ir.TextPart):
            out.append({"type": text_type, "text": p.text})
        else:
            img: dict[str, Any] = {"type": "input_image", "image_url": image_url(p)}
            if p.detail is not None:
                img["detail"] = p.detail
            out.append(img)
    return out


def _render_input(
    messages: list[ir.Message], custom: set[str], namespaces: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """IR turns -> input items in part order, except that a turn's tool outputs come first (right
    after their calls); consecutive text/images form one message item."""
    items: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for msg in messages:
        run: list[ir.TextPart | ir.ImagePart] = []
        parts = sorted(msg.parts, key=lambda p: not isinstance(p, ir.ToolResultPart))
        for part in [*parts, None]:
            if isinstance(part, (ir.TextPart, ir.ImagePart)):
                if msg.role != "assistant" or isinstance(part, ir.TextPart):
                    run.append(part)
                continue
            if run:
                text_type = "output_text" if msg.role == "assistant" else "input_text"
                role = "developer" if msg.role == "system" else msg.role  # system turns stay in place
                items.append({"type": "message", "role": role, "content": _render_parts(run, text_type)})
                run = []
            if isinstance(part, ir.ToolCallPart):
                names[part.id] = part.name
                item: dict[str, Any] = {"call_id": part.id, "name": part.name}
                if part.name in namespaces:  # a namespaced tool's call names its namespace again
                    item["namespace"], item["name"] = namespaces[part.name]
                if part.name in custom:
                    items.append({"type": "custom_tool_call", **item, "input": _custom_input(part.arguments)})
                else:
                    items.append({"type": "function_call", **item, "arguments": arguments_text(part.arguments)})
            elif isinstance(part, ir.ToolResultPart):
                kind = "custom_tool_call_output" if names.get(part.tool_call_id) in custom else "function_call_output"
                output: Any = "".join(p.text for p in part.content if isinstance(p, ir.TextPart))
                if any(isinstance(p, ir.ImagePart) for p in part.content):
                    output = _render_parts(part.content, "input_text")
                items.append({"type": kind, "call_id": part.tool_call_id, "output": output})
            elif isinstance(part, ir.ThinkingPart) and part.signature_origin == "openai" and part.signature:
                # Only OpenAI can read its encrypted reasoning back; foreign thinking is not replayed.
                summary = [{"type": "summary_text", "text": part.text}] if part.text else []
                items.append({"type": "reasoning", "summary": summary, "encrypted_content": part.signature})
    return items


def _render_tools(tools: list[ir.Tool]) -> list[dict[str, Any]]:
    """Tools for a Responses upstream, namespaced ones regrouped under their namespace."""
    out: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    for tool in tools:
        rendered = render_tool(tool)
        if rendered is None:
            continue
        if tool.namespace is None:
            out.append(rendered)
            continue
        namespace, name = tool.namespace
        if namespace not in groups:
            groups[namespace] = {"type": "namespace", "name": namespace, "tools": []}
            out.append(groups[namespace])
        groups[namespace]["tools"].append({**rendered, "name": name})
    return out


def render_tool(tool: ir.Tool) -> dict[str, Any] | None:
    if tool.kind == "function":
        out: dict[str, Any] = {"type": "function", "name": tool.name}
        if tool.description:
            out["description"] = tool.description
        # Responses treats an omitted `strict` as true, which rejects ordinary (non-strict) schemas.
        out["parameters"] = tool.parameters
        out["strict"] = bool(tool.strict)
        return out
    if tool.kind == "custom":
        return tool.raw or {"type": "custom", "name": tool.name, "description": tool.description}
    return tool.raw if tool.kind in _BUILTIN_TOOLS and tool.raw else None


# ---------------------------------------------------------------------------------------------
# Response pieces shared by render_response and the stream encoder


def _item_id(prefix: str, response_id: str, index: int) -> str:
    """Stable, deterministic item ids derived from the response id."""
    return f"{prefix}_{response_id.partition('_')[2] or response_id}_{index}"


def _render_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _parse_usage(raw: Any) -> ir.Usage:
    return ir.Usage(
        input_tokens=int_field(raw, "input_tokens"),
        output_tokens=int_field(raw, "output_tokens"),
        cache_read_tokens=int_field(
            raw.get("input_tokens_details") if isinstance(raw, dict) else None, "cached_tokens"
        ),
        reasoning_tokens=int_field(
            raw.get("output_tokens_details") if isinstance(raw, dict) else None, "reasoning_tokens"
        ),
    )


def _status(reason: ir.FinishReason) -> tuple[str, dict[str, str] | None, dict[str, str] | None]:
    """(status, incomplete_details, error); a turn ending in tool calls is plainly `completed`."""
    if reason in (ir.FinishReason.LENGTH, ir.FinishReason.CONTEXT_EXCEEDED):
        return "incomplete", {"reason": "max_output_tokens"}, None
    if reason is ir.FinishReason.CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}, None
    if reason is ir.FinishReason.ERROR:
        return "failed", None, {"code": "server_error", "message": "the upstream response failed"}
    return "completed", None, None


def _finish(status: Any, incomplete: Any, has_calls: bool) -> ir.FinishReason:
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        return ir.FinishReason.CONTENT_FILTER if reason == "content_filter" else ir.FinishReason.LENGTH
    if status == "failed":
        return ir.FinishReason.ERROR
    return ir.FinishReason.TOOL_CALLS if has_calls else ir.FinishReason.STOP


def _error_code(status: int) -> str:
    return {429: "rate_limit_exceeded", 402: "insufficient_quota"}.get(status) or openai_error_type(status)


def _reasoning_item(item_id: str, text: str, encrypted: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def _message_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(
    item_id: str,
    call_id: str,
    name: str,
    custom: bool,
    value: str,
    status: str,
    namespaces: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "custom_tool_call" if custom else "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
    }
    split = namespaces.get(name) if namespaces else None
    if split is not None:
        item["namespace"], item["name"] = split
    item["input" if custom else "arguments"] = value
    return item


def _custom_input(arguments: dict[str, Any]) -> str:
    """A custom tool's raw input from the IR's {"input": ...} arguments."""
    value = arguments.get("input")
    return value if isinstance(value, str) else dumps(arguments)


def _summary_text(item: dict[str, Any]) -> str:
    summary = item.get("summary") if isinstance(item.get("summary"), list) else []
    return "\n\n".join(s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str))


def _message_text(item: dict[str, Any]) -> str:
    content = item.get("content") if isinstance(item.get("content"), list) else []
    texts = (c.get("text") if c.get("type") != "refusal" else c.get("refusal") for c in content if isinstance(c, dict))
    return "".join(t for t in texts if isinstance(t, str))


# ---------------------------------------------------------------------------------------------
# Streams


class _UpCall:
    __slots__ = ("custom", "ended", "index", "streamed")

    def __init__(self, index: int, custom: bool) -> None:
        self.index = index
        self.custom = custom
        self.streamed = False
        self.ended = False


class ResponsesDecoder:
    """Upstream Responses SSE -> IR events. The JSON `type` is authoritative, not the event: line.
    Items stream one at a time, so tool calls are contiguous by construction; custom tool input is
    re-encoded on the fly as the JSON arguments {"input": "..."}."""

    def __init__(self) -> None:
        self._sse = SseParser()
        self._started = False
        self._done = False
        self._calls: dict[Any, _UpCall] = {}  # output_index -> call
        self._open: _UpCall | None = None
        self._streamed: set[Any] = set()  # output indexes whose text came as deltas

    def feed(self, data: bytes) -> list[ir.Event]:
        out: list[ir.Event] = []
        for _, payload in self._sse.feed(data):
            self._frame(payload, out)
        return out

    def close(self) -> list[ir.Event]:
        out: list[ir.Event] = []
        for _, payload in self._sse.close():
            self._frame(payload, out)
        if not self._done:  # open calls stay unfinished, as on any failure
            out.append(ir.StreamError("upstream stream ended before finishing", 502))
            self._done = True
        return out

    def _frame(self, payload: str, out: list[ir.Event]) -> None:
        if self._done:
            return
        try:
            self._event(payload, out)
        except Exception as exc:  # a decoder reports, never raises into the proxy
            out.append(ir.StreamError(f"{UNDECODABLE}: {exc!r}", 502))
            self._done = True

    def _event(self, payload: str, out: list[ir.Event]) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            out.append(ir.StreamError(f"malformed upstream stream event: {payload[:200]}", 502))
            self._done = True
            return
        t = obj.get("type")
        idx = obj.get("output_index") if isinstance(obj.get("output_index"), int) else None
        if t == "error":
            err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
            out.append(ir.StreamError(error_text(err), error_status(err)))
            self._done = True
            return
        if t in ("response.created", "response.in_progress"):
            self._start(obj.get("response"), out)
            return
        if not isinstance(t, str) or not t.startswith("response."):
            return  # keep-alives and vendor events (codex.rate_limits, ...)
        self._start(obj.get("response"), out)
        if t in ("response.completed", "response.incomplete", "response.failed"):
            self._complete(obj.get("response") if isinstance(obj.get("response"), dict) else {}, out)
        elif t == "response.output_item.added":
            item = obj.get("item") if isinstance(obj.get("item"), dict) else {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                self._start_call(idx, item, out)
        elif t == "response.output_item.done":
            self._item_done(idx, obj.get("item") if isinstance(obj.get("item"), dict) else {}, out)
        elif t == "response.reasoning_summary_part.added":
            if isinstance(obj.get("summary_index"), int) and obj["summary_index"] > 0:
                self._delta(ir.ThinkingDelta, idx, "\n\n", out)
        elif t in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._delta(ir.ThinkingDelta, idx, obj.get("delta"), out)
        elif t in ("response.output_text.delta", "response.refusal.delta"):
            self._delta(ir.TextDelta, idx, obj.get("delta"), out)
        elif t in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            self._args(idx, obj.get("delta"), out)
        elif t == "response.function_call_arguments.done":
            self._args_done(idx, obj.get("arguments"), out)
        elif t == "response.custom_tool_call_input.done":
            self._args_done(idx, obj.get("input"), out)

    def _start(self, response: Any, out: list[ir.Event]) -> None:
        if not self._started:
            self._started = True
            out.append(ir.MessageStart(text_field(response, "id"), text_field(response, "model")))

    def _delta(
        self, kind: type[ir.TextDelta] | type[ir.ThinkingDelta], idx: Any, delta: Any, out: list[ir.Event]
    ) -> None:
        if isinstance(delta, str) and delta:
            self._end_call(out)
            self._streamed.add(idx)
            out.append(kind(delta))

    def _start_call(self, idx: Any, item: dict[str, Any], out: list[ir.Event]) -> None:
        if idx in self._calls:
            return
        self._end_call(out)
        custom = item.get("type") == "custom_tool_call"
        call = self._calls[idx] = self._open = _UpCall(len(self._calls), custom)
        raw_id = text_field(item, "call_id") or text_field(item, "id") or new_id("call_")
        call_id, signature, origin = decode_tool_call_id(raw_id)
        out.append(ir.ToolCallStart(call.index, call_id, text_field(item, "name"), signature, origin))
        if custom:
            out.append(ir.ToolCallArgsDelta(call.index, '{"input":"'))

    def _args(self, idx: Any, delta: Any, out: list[ir.Event]) -> None:
        call = self._calls.get(idx)
        if call is None or call.ended or not isinstance(delta, str) or not delta:
            return
        call.streamed = True
        out.append(ir.ToolCallArgsDelta(call.index, dumps(delta)[1:-1] if call.custom else delta))

    def _args_done(self, idx: Any, value: Any, out: list[ir.Event]) -> None:
        """Servers that skip the deltas still send the whole value here."""
        call = self._calls.get(idx)
        if call is not None and not call.streamed:
            self._args(idx, value, out)
            call.streamed = True

    def _item_done(self, idx: Any, item: dict[str, Any], out: list[ir.Event]) -> None:
        kind = item.get("type")
        if kind in ("function_call", "custom_tool_call"):
            self._start_call(idx, item, out)
            self._args_done(idx, item.get("input" if kind == "custom_tool_call" else "arguments"), out)
            if self._open is self._calls[idx]:
                self._end_call(out)
        elif kind == "reasoning":
            if idx not in self._streamed:
                self._delta(ir.ThinkingDelta, idx, _summary_text(item), out)
            encrypted = item.get("encrypted_content")
            if isinstance(encrypted, str) and encrypted:
                self._end_call(out)
                part = _thinking("", encrypted)
                out.append(ir.ThinkingSignature(part.signature or "", part.signature_origin, part.redacted))
        elif kind == "message" and idx not in self._streamed:
            self._delta(ir.TextDelta, idx, _message_text(item), out)

    def _end_call(self, out: list[ir.Event]) -> None:
        """Close the open call before anything else is emitted, so its events stay contiguous."""
        call, self._open = self._open, None
        if call is not None:
            call.ended = True
            if call.custom:
                out.append(ir.ToolCallArgsDelta(call.index, '"}'))
            out.append(ir.ToolCallEnd(call.index))

    def _complete(self, response: dict[str, Any], out: list[ir.Event]) -> None:
        self._done = True
        if response.get("status") == "failed":
            err = response.get("error")
            out.append(ir.StreamError(error_text(err) if err else "upstream response failed", error_status(err)))
            return
        self._end_call(out)
        if isinstance(response.get("usage"), dict):
            out.append(ir.UsageUpdate(_parse_usage(response["usage"])))
        out.append(ir.Finish(_finish(response.get("status"), response.get("incomplete_details"), bool(self._calls))))


class ResponsesEncoder(SafeEncoder):
    """IR events -> client Responses SSE: one response id, stable item ids, sequence numbers from 0,
    every opened item and part closed, and a terminal response.completed/incomplete/failed."""

    def __init__(self, opts: EncoderOptions, custom_tools: Collection[str]) -> None:
        self._opts = opts
        self._custom = custom_tools
        self._names = opts.tool_name_map or {}
        self._namespaces = opts.tool_namespaces
        self._id = opts.response_id
        self._created = opts.created or int(time.time())
        self._seq = 0
        self._started = False
        self._done = False
        self._output: list[dict[str, Any]] = []
        self._item: dict[str, Any] | None = None  # the open item (last of _output)
        self._buf: list[str] = []  # its text / summary / arguments so far
        self._summary_open = False
        self._call_index = -1  # IR index of the open call
        self._usage = ir.Usage()

    def _abort(self, error: ir.StreamError, out: list[str]) -> None:
        self._fail(error, out)

    def _end(self, out: list[str]) -> None:
        self._finish(ir.FinishReason.STOP, out)

    def _emit(self, out: list[str], kind: str, **fields: Any) -> None:
        out.append(named_event(kind, {"type": kind, "sequence_number": self._seq, **fields}))
        self._seq += 1

    def _snapshot(self, status: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "model": self._opts.model,
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **fields,
        }

    def _event(self, ev: ir.Event, out: list[str]) -> None:
        self._start(ev.id if type(ev) is ir.MessageStart else "", out)
        t = type(ev)
        if t is ir.TextDelta and ev.text:
            if self._kind() != "message":
                self._open(out, {**_message_item(self._next_id("msg"), ""), "status": "in_progress", "content": []})
                self._emit(
                    out,
                    "response.content_part.added",
                    **self._where(),
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
            self._buf.append(ev.text)
            self._emit(out, "response.output_text.delta", **self._where(), content_index=0, delta=ev.text, logprobs=[])
        elif t is ir.ThinkingDelta and ev.text:
            if self._kind() != "reasoning":
                self._open(out, {"id": self._next_id("rs"), "type": "reasoning", "summary": []})
            if not self._summary_open:
                self._summary_open = True
                self._emit(
                    out,
                    "response.reasoning_summary_part.added",
                    **self._where(),
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
            self._buf.append(ev.text)
            self._emit(out, "response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=ev.text)
        elif t is ir.ThinkingSignature:
            if ev.redacted is not None or self._kind() != "reasoning":
                self._open(out, {"id": self._next_id("rs"), "type": "reasoning", "summary": []})
            part = ir.ThinkingPart("", ev.signature or None, ev.origin, ev.redacted)
            self._item["encrypted_content"] = _encrypted(part)  # type: ignore[index]
            self._close(out)
        elif t is ir.ToolCallStart:
            name = self._names.get(ev.name, ev.name)
            custom = name in self._custom
            call_id = encode_tool_call_id(ev.id, ev.signature, ev.signature_origin)
            item_id = self._next_id("ctc" if custom else "fc")
            self._open(out, _call_item(item_id, call_id, name, custom, "", "in_progress", self._namespaces))
            self._call_index = ev.index
        elif (
            t is ir.ToolCallArgsDelta
            and ev.delta
            and self._kind() in ("function_call", "custom_tool_call")
            and ev.index == self._call_index
        ):
            self._buf.append(ev.delta)
            if self._kind() == "function_call":  # custom input is only known whole: sent at the end
                self._emit(out, "response.function_call_arguments.delta", **self._where(), delta=ev.delta)
        elif t is ir.ToolCallEnd and ev.index == self._call_index:
            self._close(out)
        elif t is ir.UsageUpdate:
            self._usage.merge(ev.usage)
        elif t is ir.Finish:
            self._finish(ev.reason, out)
        elif t is ir.StreamError:
            self._fail(ev, out)

    def _start(self, upstream_id: str, out: list[str]) -> None:
        if not self._started:
            self._started = True
            self._id = self._id or upstream_id or new_id("resp_")
            self._emit(out, "response.created", response=self._snapshot("in_progress"))
            self._emit(out, "response.in_progress", response=self._snapshot("in_progress"))

    def _kind(self) -> str | None:
        return self._item["type"] if self._item is not None else None

    def _next_id(self, prefix: str) -> str:
        return _item_id(prefix, self._id, len(self._output))

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._item["id"], "output_index": len(self._output) - 1}  # type: ignore[index]

    def _open(self, out: list[str], item: dict[str, Any]) -> None:
        self._close(out)
        self._output.append(item)
        self._item = item
        self._emit(out, "response.output_item.added", output_index=len(self._output) - 1, item=item)

    def _close(self, out: list[str]) -> None:
        item = self._item
        if item is None:
            return
        text = "".join(self._buf)
        kind = item["type"]
        if kind == "message":
            self._emit(out, "response.output_text.done", **self._where(), content_index=0, text=text, logprobs=[])
            part = {"type": "output_text", "text": text, "annotations": []}
            self._emit(out, "response.content_part.done", **self._where(), content_index=0, part=part)
            item["content"], item["status"] = [part], "completed"
        elif kind == "reasoning" and self._summary_open:
            self._emit(out, "response.reasoning_summary_text.done", **self._where(), summary_index=0, text=text)
            part = {"type": "summary_text", "text": text}
            self._emit(out, "response.reasoning_summary_part.done", **self._where(), summary_index=0, part=part)
            item["summary"] = [part]
        elif kind == "function_call":
            text = text or "{}"
            self._emit(out, "response.function_call_arguments.done", **self._where(), arguments=text)
            item["arguments"], item["status"] = text, "completed"
        elif kind == "custom_tool_call":
            value = _custom_input(upstream_arguments(text))
            if value:
                self._emit(out, "response.custom_tool_call_input.delta", **self._where(), delta=value)
            self._emit(out, "response.custom_tool_call_input.done", **self._where(), input=value)
            item["input"], item["status"] = value, "completed"
        self._emit(out, "response.output_item.done", output_index=len(self._output) - 1, item=item)
        self._item, self._buf, self._summary_open, self._call_index = None, [], False, -1

    def _finish(self, reason: ir.FinishReason, out: list[str]) -> None:
        self._start("", out)
        self._close(out)
        status, incomplete, error = _status(reason)
        event = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
        self._emit(
            out,
            event,
            response=self._snapshot(
                status,
                output=self._output,
                error=error,
                incomplete_details=incomplete,
                usage=_render_usage(self._usage),
            ),
        )
        self._done = True

    def _fail(self, ev: ir.StreamError, out: list[str]) -> None:
        self._start("", out)
        error = {"code": _error_code(ev.status), "message": ev.message}
        self._emit(
            out,
            "response.failed",
            response=self._snapshot("failed", output=self._output, error=error, usage=_render_usage(self._usage)),
        )
        self._done = True


# ---------------------------------------------------------------------------------------------
# Codec


class OpenAIResponsesCodec:
    name = "openai_responses"
    stream_content_type = "text/event-stream"
    accepts_image_urls = True

    def parse_request(self, body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.Request:
        if not isinstance(body, dict):
            raise TranslationError("", "request body must be a JSON object")
        for key in ("previous_response_id", "conversation"):
            if body.get(key) is not None:
                raise TranslationError(
                    key,
                    "is not supported: this gateway stores no responses or conversations; "
                    "send the whole conversation in `input`",
                )
        model = model or require(body, "model", str, "model")
        if not model:
            raise TranslationError("model", "is required")
        system: list[ir.TextPart] = []
        instructions = check(body.get("instructions"), str, "instructions")
        if instructions:
            system.append(ir.TextPart(instructions))
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            messages = [ir.Message("user", [ir.TextPart(raw_input)])]
        elif isinstance(raw_input, list):
            messages = _input(raw_input, system)
        else:
            raise TranslationError("input", "must be a string or an array of input items")
        req = ir.Request(model=model, messages=messages, system=system)
        req.stream = stream if stream is not None else bool(check(body.get("stream"), bool, "stream"))
        req.tools = _tools(body.get("tools"))
        req.tool_choice = _tool_choice(body.get("tool_choice"))
        req.parallel_tool_calls = check(body.get("parallel_tool_calls"), bool, "parallel_tool_calls")
        req.max_tokens = check(body.get("max_output_tokens"), int, "max_output_tokens")
        req.temperature = check(body.get("temperature"), float, "temperature")
        req.top_p = check(body.get("top_p"), float, "top_p")
        req.user = check(body.get("user"), str, "user")
        reasoning = check(body.get("reasoning"), dict, "reasoning")
        if reasoning:
            req.reasoning = ir.Reasoning(
                effort=check(reasoning.get("effort"), str, "reasoning.effort"),
                summary=check(reasoning.get("summary"), str, "reasoning.summary"),
            )
        extras = {k: v for k, v in body.items() if k not in _KNOWN_KEYS}
        text = check(body.get("text"), dict, "text") or {}
        req.response_format = _text_format(text.get("format"))
        if any(k != "format" for k in text):  # e.g. verbosity, for a Responses upstream
            extras["text"] = {k: v for k, v in text.items() if k != "format"}
        if extras:
            req.extras[self.name] = extras
        return req

    def render_request(self, req: ir.Request, model: str) -> dict[str, Any]:
        custom = {t.name for t in req.tools if t.kind == "custom"}
        body: dict[str, Any] = {"model": model}
        if req.system:
            body["instructions"] = "\n\n".join(p.text for p in req.system)
        namespaces = tool_namespaces(req.tools)
        body["input"] = _render_input(req.messages, custom, namespaces)
        if req.stream:
            body["stream"] = True
        tools = _render_tools(req.tools)
        if tools:
            body["tools"] = tools
            if req.tool_choice is not None:
                if req.tool_choice.mode == "tool":
                    kind = "custom" if req.tool_choice.name in custom else "function"
                    body["tool_choice"] = {"type": kind, "name": req.tool_choice.name}
                else:
                    body["tool_choice"] = req.tool_choice.mode
            if req.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = req.parallel_tool_calls
        # Responses has no stop, seed, penalties or top_k.
        for key, value in (
            ("max_output_tokens", req.max_tokens),
            ("temperature", req.temperature),
            ("top_p", req.top_p),
            ("user", req.user),
        ):
            if value is not None:
                body[key] = value
        if req.reasoning is not None:
            effort = req.reasoning.effort
            if effort is None and req.reasoning.budget_tokens is not None:
                effort = budget_to_effort(req.reasoning.budget_tokens)
            reasoning = {k: v for k, v in (("effort", effort), ("summary", req.reasoning.summary)) if v is not None}
            if reasoning:
                body["reasoning"] = reasoning
        extras = dict(req.extras.get(self.name, {}))
        text = dict(extras.pop("text", None) or {})
        rf = req.response_format
        if rf is not None:
            fmt: dict[str, Any] = {"type": rf.type}
            if rf.type == "json_schema":
                fmt.update(name=rf.name or "response", schema=rf.schema or {})
                if rf.strict is not None:
                    fmt["strict"] = rf.strict
            text["format"] = fmt
        if text:
            body["text"] = text
        for key, value in extras.items():
            body.setdefault(key, value)
        return body

    def parse_response(self, body: Any) -> ir.Response:
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, list):
            raise TranslationError("output", "upstream response has no output", 502)
        parts: list[ir.Part] = []
        for item in output:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "reasoning":
                text = _summary_text(item)
                encrypted = item.get("encrypted_content")
                if text or encrypted:
                    parts.append(_thinking(text, encrypted if isinstance(encrypted, str) else None))
            elif kind == "message":
                text = _message_text(item)
                if text:
                    parts.append(ir.TextPart(text))
            elif kind in ("function_call", "custom_tool_call"):
                call_id, signature, origin = decode_tool_call_id(text_field(item, "call_id") or new_id("call_"))
                if kind == "custom_tool_call":
                    args = {"input": text_field(item, "input")}
                else:
                    args = upstream_arguments(item.get("arguments"))
                parts.append(ir.ToolCallPart(call_id, text_field(item, "name"), args, signature, origin))
        has_calls = any(isinstance(p, ir.ToolCallPart) for p in parts)
        return ir.Response(
            id=text_field(body, "id"),
            model=text_field(body, "model"),
            parts=parts,
            finish_reason=_finish(body.get("status"), body.get("incomplete_details"), has_calls),
            usage=_parse_usage(body.get("usage")),
        )

    def render_response(
        self,
        resp: ir.Response,
        model: str,
        *,
        custom_tools: Collection[str] = (),
        tool_namespaces: dict[str, tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        rid = resp.id or new_id("resp_")
        output: list[dict[str, Any]] = []
        for part in resp.parts:
            if isinstance(part, ir.TextPart):
                last = output[-1] if output else None
                if last is not None and last["type"] == "message":
                    last["content"][0]["text"] += part.text
                else:
                    output.append(_message_item(_item_id("msg", rid, len(output)), part.text))
            elif isinstance(part, ir.ThinkingPart):
                output.append(_reasoning_item(_item_id("rs", rid, len(output)), part.text, _encrypted(part)))
            elif isinstance(part, ir.ToolCallPart):
                custom = part.name in custom_tools
                value = _custom_input(part.arguments) if custom else arguments_text(part.arguments)
                call_id = encode_tool_call_id(part.id, part.signature, part.signature_origin)
                output.append(
                    _call_item(
                        _item_id("ctc" if custom else "fc", rid, len(output)),
                        call_id,
                        part.name,
                        custom,
                        value,
                        "completed",
                        tool_namespaces,
                    )
                )
        status, incomplete, error = _status(resp.finish_reason)
        return {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "error": error,
            "incomplete_details": incomplete,
            "usage": _render_usage(resp.usage),
        }

    def decoder(self) -> ResponsesDecoder:
        return ResponsesDecoder()

    def encoder(self, opts: EncoderOptions) -> ResponsesEncoder:
        return ResponsesEncoder(opts, opts.custom_tools)

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        return openai_error(status, message, code)

    def error_message(self, body: bytes) -> str:
        return extract_message(body)


codec = OpenAIResponsesCodec()
