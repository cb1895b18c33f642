"""OpenAI Chat Completions codec (dialects.md section 1).

Also home of the small helpers the Responses codec shares (field checks, image URLs, tool-call
arguments, error statuses), since both dialects spell those the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any

from translators import ir
from translators.base import EncoderOptions, SafeEncoder, TranslationError
from translators.errors import extract_message, openai_error
from translators.signatures import decode_tool_call_id, encode_tool_call_id
from translators.sse import SseParser, data_event, dumps, encode_string
from translators.thinking import budget_to_effort
from translators.turns import fold_system_turns

# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by translators.openai_responses)

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
}


def check(value: Any, kind: type, field: str) -> Any:
    """`value` unchanged when None or of `kind`; floats accept ints, and booleans are never numbers."""
    if value is None:
        return None
    ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok or (isinstance(value, bool) and kind is not bool):
        raise TranslationError(field, f"must be {_TYPE_NAMES[kind]}")
    return value


def require(obj: dict[str, Any], key: str, kind: type, field: str) -> Any:
    value = check(obj.get(key), kind, field)
    if value is None:
        raise TranslationError(field, "is required")
    return value


def check_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranslationError(field, "must be an object")
    return value


def image_from_url(url: str, detail: str | None, field: str) -> ir.ImagePart:
    """A data: URL becomes inline base64 (validated now: a bad image is the client's 400, not an
    opaque upstream one); an http(s) URL stays a URL."""
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type = header.removesuffix(";base64")
        if not sep or media_type == header or not media_type.startswith("image/"):
            raise TranslationError(field, "must be a data:image/<type>;base64,... URL or an http(s) URL")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise TranslationError(field, "data URL does not hold valid base64") from None
        return ir.ImagePart(media_type=media_type, data=data, detail=detail)
    if url.startswith(("http://", "https://")):
        return ir.ImagePart(url=url, detail=detail)
    raise TranslationError(field, "must be a data:image/<type>;base64,... URL or an http(s) URL")


def image_url(part: ir.ImagePart) -> str:
    return f"data:{part.media_type};base64,{part.data}" if part.data is not None else part.url or ""


def parse_arguments(raw: Any, field: str) -> dict[str, Any]:
    """Client tool-call arguments: a JSON object string ("" = {}); an already-decoded object is accepted."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if not isinstance(raw, str):
        raise TranslationError(field, "must be a JSON string")
    try:
        value = json.loads(raw)
    except ValueError:
        raise TranslationError(field, "is not valid JSON") from None
    if not isinstance(value, dict):
        raise TranslationError(field, "must encode a JSON object")
    return value


def upstream_arguments(raw: Any) -> dict[str, Any]:
    """Upstream arguments never fail the response: undecodable text is kept as the accumulator does."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw_arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def arguments_text(arguments: dict[str, Any]) -> str:
    """Arguments as the JSON string OpenAI dialects carry; undecodable upstream text (kept by the
    accumulator as {"_raw_arguments": ...}) goes back out as it came."""
    raw = arguments.get("_raw_arguments")
    return raw if isinstance(raw, str) and len(arguments) == 1 else dumps(arguments)


def append_message(messages: list[ir.Message], role: ir.Role, parts: list[ir.Part], merge: bool) -> None:
    """Add a turn; user parts join a preceding turn of tool results (so results and the user's
    follow-up stay one turn), other turns join the previous one only when `merge`."""
    last = messages[-1] if messages else None
    if last is not None and last.role == role:
        if merge or (role == "user" and last.parts and isinstance(last.parts[-1], ir.ToolResultPart)):
            last.parts.extend(parts)
            return
    messages.append(ir.Message(role, parts))


def text_field(obj: Any, key: str) -> str:
    """A string from an upstream body; absent or odd values count as ""."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


def int_field(obj: Any, key: str) -> int:
    """A count from an upstream body; absent or odd values count as 0."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_ERROR_STATUS = {
    "invalid_request_error": 400,
    "invalid_prompt": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "overloaded_error": 529,
}


def error_status(err: Any) -> int:
    """HTTP-like status of an in-band OpenAI error object (numeric code, else code/type names)."""
    if not isinstance(err, dict):
        return 502
    code = err.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    names = [v for v in (code, err.get("type")) if isinstance(v, str) and v in _ERROR_STATUS]
    return _ERROR_STATUS[names[0]] if names else 502


def error_text(err: Any) -> str:
    if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]:
        return err["message"]
    return err if isinstance(err, str) and err else dumps(err)


# Message of the StreamError a decoder emits when a frame breaks it (a bug, not an upstream fault).
UNDECODABLE = "upstream stream event could not be translated"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------------------------------------
# Request

_FINISH_IN = {
    "stop": ir.FinishReason.STOP,
    "length": ir.FinishReason.LENGTH,
    "tool_calls": ir.FinishReason.TOOL_CALLS,
    "function_call": ir.FinishReason.TOOL_CALLS,
    "content_filter": ir.FinishReason.CONTENT_FILTER,
}
_FINISH_OUT = {
    ir.FinishReason.STOP: "stop",
    ir.FinishReason.STOP_SEQUENCE: "stop",
    ir.FinishReason.LENGTH: "length",
    ir.FinishReason.TOOL_CALLS: "tool_calls",
    ir.FinishReason.CONTENT_FILTER: "content_filter",
    ir.FinishReason.CONTEXT_EXCEEDED: "length",
    ir.FinishReason.PAUSE: "stop",
    ir.FinishReason.ERROR: "stop",
}

# Vendor extensions (`top_k`, flat `thinking`) are read into the IR for other upstreams and also left in
# the extras, so a Chat upstream that knows them gets them as sent and OpenAI never sees them unasked.
_KNOWN_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "reasoning_effort",
        "response_format",
        "user",
    }
)


def _content(content: Any, field: str, *, optional: bool = False) -> list[ir.TextPart | ir.ImagePart]:
    """Chat message content (string or parts) -> IR parts; empty text is dropped (Claude rejects it)."""
    if isinstance(content, str):
        return [ir.TextPart(content)] if content else []
    if content is None and optional:
        return []
    if not isinstance(content, list):
        raise TranslationError(field, "must be a string or an array of content parts")
    parts: list[ir.TextPart | ir.ImagePart] = []
    for j, item in enumerate(content):
        f = f"{field}[{j}]"
        check_object(item, f)
        kind = item.get("type")
        if kind in ("text", "refusal"):
            text = require(item, kind, str, f"{f}.{kind}")
            if text:
                parts.append(ir.TextPart(text, check(item.get("cache_control"), dict, f"{f}.cache_control")))
        elif kind == "image_url":
            img = item.get("image_url")
            if isinstance(img, str):
                parts.append(image_from_url(img, None, f"{f}.image_url"))
            else:
                img = check_object(img, f"{f}.image_url")
                detail = check(img.get("detail"), str, f"{f}.image_url.detail")
                url = require(img, "url", str, f"{f}.image_url.url")
                parts.append(image_from_url(url, detail, f"{f}.image_url.url"))
        else:
            raise TranslationError(f"{f}.type", f"unsupported content part type {kind!r}")
    return parts


def _tool_call(call: Any, field: str) -> ir.ToolCallPart:
    check_object(call, field)
    if call.get("type", "function") != "function":
        raise TranslationError(f"{field}.type", "only function tool calls are supported")
    fn = check_object(call.get("function"), f"{field}.function")
    call_id, signature, origin = decode_tool_call_id(require(call, "id", str, f"{field}.id"))
    name = require(fn, "name", str, f"{field}.function.name")
    args = parse_arguments(fn.get("arguments"), f"{field}.function.arguments")
    return ir.ToolCallPart(call_id, name, args, signature, origin)


def _function_tool(fn: Any, field: str) -> ir.Tool:
    check_object(fn, field)
    params = check(fn.get("parameters"), dict, f"{field}.parameters")
    description = check(fn.get("description"), str, f"{field}.description") or ""
    tool = ir.Tool(require(fn, "name", str, f"{field}.name"), description)
    if params is not None:
        tool.parameters = params
    tool.strict = check(fn.get("strict"), bool, f"{field}.strict")
    return tool


def _tools(body: dict[str, Any]) -> list[ir.Tool]:
    tools = []
    for i, t in enumerate(check(body.get("tools"), list, "tools") or []):
        if check_object(t, f"tools[{i}]").get("type", "function") != "function":
            raise TranslationError(f"tools[{i}].type", "only function tools are supported")
        tools.append(_function_tool(t.get("function"), f"tools[{i}].function"))
    for i, fn in enumerate(check(body.get("functions"), list, "functions") or []):  # legacy
        tools.append(_function_tool(fn, f"functions[{i}]"))
    return tools


def _tool_choice(raw: Any, field: str) -> ir.ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ir.ToolChoice(raw)
    if isinstance(raw, dict):
        # {"type":"function","function":{"name"}}; legacy function_call uses {"name"}.
        fn = raw.get("function") if raw.get("type") == "function" else raw
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            return ir.ToolChoice("tool", fn["name"])
    raise TranslationError(field, "must be 'auto', 'none', 'required' or {'type':'function','function':{'name':...}}")


def _response_format(raw: Any) -> ir.ResponseFormat | None:
    if raw is None:
        return None
    check_object(raw, "response_format")
    kind = raw.get("type")
    if kind in ("text", "json_object"):
        return ir.ResponseFormat(kind)
    if kind == "json_schema":
        js = check_object(raw.get("json_schema"), "response_format.json_schema")
        return ir.ResponseFormat(
            "json_schema",
            schema=check(js.get("schema"), dict, "response_format.json_schema.schema"),
            name=check(js.get("name"), str, "response_format.json_schema.name"),
            strict=check(js.get("strict"), bool, "response_format.json_schema.strict"),
        )
    raise TranslationError("response_format.type", "must be 'text', 'json_object' or 'json_schema'")


def _reasoning(body: dict[str, Any]) -> ir.Reasoning | None:
    """`reasoning_effort`, or the non-standard flat `thinking` some clients pass through extra_body."""
    effort = check(body.get("reasoning_effort"), str, "reasoning_effort")
    thinking = check(body.get("thinking"), dict, "thinking")
    budget = None
    if thinking is not None:
        if thinking.get("type") == "disabled":
            effort = effort or "none"
        else:
            budget = check(thinking.get("budget_tokens"), int, "thinking.budget_tokens")
    if effort is None and budget is None:
        return None
    return ir.Reasoning(effort=effort, budget_tokens=budget)


def _stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return list(raw)
    raise TranslationError("stop", "must be a string or an array of strings")


def _messages(raw: Any) -> tuple[list[ir.TextPart], list[ir.Message]]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages", "must be a non-empty array")
    system: list[ir.TextPart] = []
    messages: list[ir.Message] = []
    names: dict[str, str] = {}  # call id -> function name, for results (Gemini needs names)
    legacy: dict[str, str] = {}  # legacy function name -> id minted for its latest call
    for i, m in enumerate(raw):
        f = f"messages[{i}]"
        check_object(m, f)
        role = m.get("role")
        if role in ("system", "developer"):
            texts: list[ir.TextPart] = []
            for part in _content(m.get("content"), f"{f}.content"):
                if not isinstance(part, ir.TextPart):
                    raise TranslationError(f"{f}.content", "system messages take text only")
                texts.append(part)
            if messages:  # after the conversation began: kept in place
                messages.append(ir.Message("system", texts))
            else:
                system.extend(texts)
        elif role == "user":
            append_message(messages, "user", list(_content(m.get("content"), f"{f}.content")), merge=False)
        elif role == "assistant":
            parts: list[ir.Part] = []
            reasoning = check(m.get("reasoning_content"), str, f"{f}.reasoning_content")
            if reasoning:
                parts.append(ir.ThinkingPart(reasoning))
            parts.extend(_content(m.get("content"), f"{f}.content", optional=True))
            for j, call in enumerate(check(m.get("tool_calls"), list, f"{f}.tool_calls") or []):
                parts.append(_tool_call(call, f"{f}.tool_calls[{j}]"))
            fc = m.get("function_call")
            if fc is not None:
                fc = check_object(fc, f"{f}.function_call")
                name = require(fc, "name", str, f"{f}.function_call.name")
                legacy[name] = f"call_{i}"
                args = parse_arguments(fc.get("arguments"), f"{f}.function_call.arguments")
                parts.append(ir.ToolCallPart(legacy[name], name, args))
            names.update((p.id, p.name) for p in parts if isinstance(p, ir.ToolCallPart))
            messages.append(ir.Message("assistant", parts))
        elif role in ("tool", "function"):
            if role == "tool":
                call_id = decode_tool_call_id(require(m, "tool_call_id", str, f"{f}.tool_call_id"))[0]
                name = names.get(call_id)
            else:
                name = require(m, "name", str, f"{f}.name")
                call_id = legacy.get(name, f"call_{i}")
            content = list(_content(m.get("content"), f"{f}.content", optional=True))
            append_message(messages, "user", [ir.ToolResultPart(call_id, content, name=name)], merge=False)
        else:
            raise TranslationError(f"{f}.role", f"unsupported role {role!r}")
    return system, messages


# ---------------------------------------------------------------------------------------------
# Rendering helpers


def _render_part(part: ir.TextPart | ir.ImagePart, cache: bool = True) -> dict[str, Any]:
    if isinstance(part, ir.TextPart):
        out: dict[str, Any] = {"type": "text", "text": part.text}
        if cache and part.cache_control is not None:
            out["cache_control"] = part.cache_control
        return out
    img: dict[str, Any] = {"url": image_url(part)}
    if part.detail is not None:
        img["detail"] = part.detail
    return {"type": "image_url", "image_url": img}


def _render_content(parts: list[ir.TextPart | ir.ImagePart], cache: bool = True) -> str | list[dict[str, Any]]:
    """A lone plain text part goes out as a string (what most clients send); anything else as parts."""
    if not parts:
        return ""
    if len(parts) == 1 and isinstance(parts[0], ir.TextPart) and (not cache or parts[0].cache_control is None):
        return parts[0].text
    return [_render_part(p, cache) for p in parts]


def render_user(msg: ir.Message, cache: bool = True) -> list[dict[str, Any]]:
    """Tool results become `tool` messages first (Chat wants them right after the calls); images in
    results, which `tool` messages cannot hold, move into the user message that follows. `cache`
    keeps Claude-style cache markers (for upstreams; datasets drop them)."""
    out: list[dict[str, Any]] = []
    content: list[ir.TextPart | ir.ImagePart] = []
    for part in msg.parts:
        if isinstance(part, ir.ToolResultPart):
            texts = [p for p in part.content if isinstance(p, ir.TextPart)]
            content.extend(p for p in part.content if isinstance(p, ir.ImagePart))
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": _render_content(texts, cache)})
        elif isinstance(part, (ir.TextPart, ir.ImagePart)):
            content.append(part)
    if content or not out:
        out.append({"role": "user", "content": _render_content(content, cache)})
    return out


def _render_assistant(msg: ir.Message) -> dict[str, Any]:
    texts = [p for p in msg.parts if isinstance(p, ir.TextPart)]
    calls = [p for p in msg.parts if isinstance(p, ir.ToolCallPart)]
    out: dict[str, Any] = {"role": "assistant", "content": _render_content(texts) if texts or not calls else None}
    # Only unsigned reasoning text (what Chat clients send back) -- signed thoughts belong to their family.
    reasoning = "".join(
        p.text for p in msg.parts if isinstance(p, ir.ThinkingPart) and p.signature is None and p.redacted is None
    )
    if reasoning:
        out["reasoning_content"] = reasoning
    if calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_text(c.arguments)}}
            for c in calls
        ]
    return out


def _render_tool_choice(choice: ir.ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _render_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _parse_usage(raw: Any) -> ir.Usage:
    details_in = raw.get("prompt_tokens_details") if isinstance(raw, dict) else None
    details_out = raw.get("completion_tokens_details") if isinstance(raw, dict) else None
    return ir.Usage(
        input_tokens=int_field(raw, "prompt_tokens"),
        output_tokens=int_field(raw, "completion_tokens"),
        # DeepSeek reports cache hits as prompt_cache_hit_tokens.
        cache_read_tokens=int_field(details_in, "cached_tokens") or int_field(raw, "prompt_cache_hit_tokens"),
        reasoning_tokens=int_field(details_out, "reasoning_tokens"),
    )


def _finish_out(reason: ir.FinishReason, has_calls: bool) -> str:
    """A natural stop with tool calls is `tool_calls` (Gemini has no tool-call finish reason)."""
    if has_calls and reason is ir.FinishReason.STOP:
        return "tool_calls"
    return _FINISH_OUT[reason]


def _finish_in(raw: Any, has_calls: bool) -> ir.FinishReason:
    reason = _FINISH_IN.get(raw, ir.FinishReason.STOP) if isinstance(raw, str) else ir.FinishReason.STOP
    return ir.FinishReason.TOOL_CALLS if has_calls and reason is ir.FinishReason.STOP else reason


# ---------------------------------------------------------------------------------------------
# Streams


class _Call:
    __slots__ = ("args", "id", "index", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.args: list[str] = []
        self.index = -1  # IR index once its ToolCallStart went out


class ChatDecoder:
    """Upstream Chat SSE -> IR events.

    Tool calls are streamed live one at a time. A call that starts while another is still open
    (its arguments not yet a complete JSON value) is held back, as is any text arriving while calls
    are open, and both are released once the calls are finished -- so each call's events stay
    contiguous even when an upstream interleaves parallel calls.
    """

    def __init__(self) -> None:
        self._sse = SseParser()
        self._started = False
        self._done = False
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None
        self._calls: dict[int, _Call] = {}
        self._live: int | None = None
        self._held: list[int] = []
        self._held_events: list[ir.Event] = []
        self._emitted = 0

    def feed(self, data: bytes) -> list[ir.Event]:
        out: list[ir.Event] = []
        for _, payload in self._sse.feed(data):
            self._frame(payload, out)
        return out

    def close(self) -> list[ir.Event]:
        out: list[ir.Event] = []
        for _, payload in self._sse.close():
            self._frame(payload, out)
        if not self._done:
            if self._finish is not None:  # some upstreams never send [DONE]
                self._end(out)
            else:
                self._fail("upstream stream ended before finishing", 502, out)
        return out

    def _frame(self, payload: str, out: list[ir.Event]) -> None:
        if self._done:
            return
        try:
            self._chunk(payload, out)
        except Exception as exc:  # a decoder reports, never raises into the proxy
            self._fail(f"{UNDECODABLE}: {exc!r}", 502, out)

    def _chunk(self, payload: str, out: list[ir.Event]) -> None:
        if payload.strip() == "[DONE]":
            self._end(out)
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            self._fail(f"malformed upstream stream chunk: {payload[:200]}", 502, out)
            return
        if not isinstance(obj, dict):
            self._fail(f"malformed upstream stream chunk: {payload[:200]}", 502, out)
            return
        if obj.get("error") is not None:
            self._fail(error_text(obj["error"]), error_status(obj["error"]), out)
            return
        self._start(obj, out)
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._text(ir.ThinkingDelta(reasoning), out)
            if isinstance(delta.get("content"), str) and delta["content"]:
                self._text(ir.TextDelta(delta["content"]), out)
            calls = delta.get("tool_calls")
            for td in calls if isinstance(calls, list) else ():
                if isinstance(td, dict):
                    self._tool_delta(td, out)
        if choice.get("finish_reason"):
            self._finish = _finish_in(choice["finish_reason"], False)
            self._release(out)
        if isinstance(obj.get("usage"), dict):
            usage = _parse_usage(obj["usage"])
            if self._usage is None:
                self._usage = usage
            else:
                self._usage.merge(usage)

    def _start(self, obj: dict[str, Any], out: list[ir.Event]) -> None:
        if not self._started:
            self._started = True
            out.append(ir.MessageStart(text_field(obj, "id"), text_field(obj, "model")))

    def _text(self, event: ir.Event, out: list[ir.Event]) -> None:
        if self._live is not None and not self._held and self._complete(self._calls[self._live]):
            self._end_live(out)
        if self._live is None and not self._held:
            out.append(event)
        else:
            self._held_events.append(event)

    def _tool_delta(self, td: dict[str, Any], out: list[ir.Event]) -> None:
        index = td.get("index")
        if not isinstance(index, int):  # a few servers omit it for single calls
            index = (
                len(self._calls)
                if td.get("id") and td["id"] not in (c.id for c in self._calls.values())
                else max(self._calls, default=0)
            )
        fn = td.get("function") if isinstance(td.get("function"), dict) else {}
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call("", "")
            if self._live is not None and not self._held and self._complete(self._calls[self._live]):
                self._end_live(out)
            if self._live is None and not self._held:
                self._live = index
            else:
                self._held.append(index)
        if call.index < 0:  # fields may trickle in before the call is announced
            call.id = call.id or text_field(td, "id")
            call.name = call.name or text_field(fn, "name")
            if index == self._live:
                self._announce(call, out)
        frag = fn.get("arguments")
        if isinstance(frag, str) and frag:
            call.args.append(frag)
            if index == self._live:
                out.append(ir.ToolCallArgsDelta(call.index, frag))

    def _announce(self, call: _Call, out: list[ir.Event]) -> None:
        call.index = self._emitted
        self._emitted += 1
        call_id, signature, origin = decode_tool_call_id(call.id or new_id("call_"))
        out.append(ir.ToolCallStart(call.index, call_id, call.name, signature, origin))

    @staticmethod
    def _complete(call: _Call) -> bool:
        try:
            json.loads("".join(call.args))
        except ValueError:
            return False
        return True

    def _end_live(self, out: list[ir.Event]) -> None:
        if self._live is not None:
            out.append(ir.ToolCallEnd(self._calls[self._live].index))
            self._live = None
        if not self._held:
            out.extend(self._held_events)
            self._held_events.clear()

    def _release(self, out: list[ir.Event]) -> None:
        """Finish every open call, then the held ones whole, then the held text."""
        self._end_live(out)
        for index in self._held:
            call = self._calls[index]
            self._announce(call, out)
            if call.args:
                out.append(ir.ToolCallArgsDelta(call.index, "".join(call.args)))
            out.append(ir.ToolCallEnd(call.index))
        self._held.clear()
        out.extend(self._held_events)
        self._held_events.clear()

    def _end(self, out: list[ir.Event]) -> None:
        self._release(out)
        self._start({}, out)
        if self._usage is not None:
            out.append(ir.UsageUpdate(self._usage))
        reason = self._finish or ir.FinishReason.STOP
        if self._emitted and reason is ir.FinishReason.STOP:
            reason = ir.FinishReason.TOOL_CALLS
        out.append(ir.Finish(reason))
        self._done = True

    def _fail(self, message: str, status: int, out: list[ir.Event]) -> None:
        # Open calls stay unfinished: ending them would present truncated arguments as complete.
        out.append(ir.StreamError(message, status))
        self._done = True


class ChatEncoder(SafeEncoder):
    """IR events -> client Chat SSE: one id for every chunk, contiguous tool indexes, always [DONE]."""

    def __init__(self, opts: EncoderOptions) -> None:
        self._opts = opts
        self._id = opts.response_id
        self._created = opts.created or int(time.time())
        self._names = opts.tool_name_map or {}
        self._started = False
        self._done = False
        self._indexes: dict[int, int] = {}  # IR tool index -> client index
        self._calls = 0
        self._usage = ir.Usage()
        # (before the delta's field, after its value) of a text chunk; made at the first one.
        self._template: tuple[str, str] | None = None

    def _abort(self, error: ir.StreamError, out: list[str]) -> None:
        self._error(error, out)

    def _end(self, out: list[str]) -> None:
        self._finish(ir.Finish(ir.FinishReason.STOP), out)

    def _event(self, ev: ir.Event, out: list[str]) -> None:
        if type(ev) is ir.StreamError:
            self._error(ev, out)
            return
        self._start(ev.id if type(ev) is ir.MessageStart else "", out)
        t = type(ev)
        if t is ir.TextDelta and ev.text:
            out.append(self._text_chunk("content", ev.text))
        elif t is ir.ThinkingDelta and ev.text:
            out.append(self._text_chunk("reasoning_content", ev.text))
        elif t is ir.ToolCallStart:
            index = self._indexes[ev.index] = self._calls
            self._calls += 1
            call = {
                "index": index,
                "id": encode_tool_call_id(ev.id, ev.signature, ev.signature_origin),
                "type": "function",
                "function": {"name": self._names.get(ev.name, ev.name), "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))
        elif t is ir.ToolCallArgsDelta and ev.delta and ev.index in self._indexes:
            call = {"index": self._indexes[ev.index], "function": {"arguments": ev.delta}}
            out.append(self._chunk({"tool_calls": [call]}))
        elif t is ir.UsageUpdate:
            self._usage.merge(ev.usage)
        elif t is ir.Finish:
            self._finish(ev, out)
        # ThinkingSignature and ToolCallEnd have no Chat form.

    def _start(self, upstream_id: str, out: list[str]) -> None:
        if not self._started:
            self._started = True
            self._id = self._id or upstream_id or new_id("chatcmpl-")
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._opts.model,
            "choices": choices,
        }

    def _text_chunk(self, field: str, text: str) -> str:
        """`_chunk({field: text})`, byte for byte, from a template made once per stream (its id,
        created and model do not change): the chunk most streams are made of, without building and
        encoding four dicts per token (test_openai_chat checks both give the same bytes)."""
        if self._template is None:
            marker = "\x00"
            whole = self._chunk({"content": marker})
            # The last occurrence: the id and the model come before the delta and may hold the
            # marker too (hypothesis found a model named "\x00"); nothing after it is a string.
            head, _, tail = whole.rpartition(dumps(marker))
            self._template = (head.removesuffix('"content":'), tail)
        head, tail = self._template
        return f'{head}"{field}":{encode_string(text)}{tail}'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        obj = self._envelope([{"index": 0, "delta": delta, "finish_reason": finish}])
        if self._opts.include_usage:
            obj["usage"] = None
        return data_event(obj)

    def _finish(self, ev: ir.Finish, out: list[str]) -> None:
        self._start("", out)
        out.append(self._chunk({}, _finish_out(ev.reason, self._calls > 0)))
        if self._opts.include_usage:
            out.append(data_event({**self._envelope([]), "usage": _render_usage(self._usage)}))
        out.append("data: [DONE]\n\n")
        self._done = True

    def _error(self, ev: ir.StreamError, out: list[str]) -> None:
        out.append(data_event(openai_error(ev.status, ev.message)))
        out.append("data: [DONE]\n\n")
        self._done = True


# ---------------------------------------------------------------------------------------------
# Codec


class OpenAIChatCodec:
    name = "openai_chat"
    stream_content_type = "text/event-stream"
    accepts_image_urls = True

    def parse_request(self, body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.Request:
        if not isinstance(body, dict):
            raise TranslationError("", "request body must be a JSON object")
        model = model or require(body, "model", str, "model")
        if not model:
            raise TranslationError("model", "is required")
        n = check(body.get("n"), int, "n")
        if n not in (None, 1):
            raise TranslationError("n", "only n=1 is supported")
        system, messages = _messages(body.get("messages"))
        stream_options = check(body.get("stream_options"), dict, "stream_options") or {}
        req = ir.Request(model=model, messages=messages, system=system)
        req.stream = stream if stream is not None else bool(check(body.get("stream"), bool, "stream"))
        req.include_usage = bool(check(stream_options.get("include_usage"), bool, "stream_options.include_usage"))
        req.tools = _tools(body)
        req.tool_choice = _tool_choice(body.get("tool_choice"), "tool_choice") or _tool_choice(
            body.get("function_call"), "function_call"
        )
        req.parallel_tool_calls = check(body.get("parallel_tool_calls"), bool, "parallel_tool_calls")
        req.max_tokens = check(body.get("max_completion_tokens"), int, "max_completion_tokens")
        if req.max_tokens is None:
            req.max_tokens = check(body.get("max_tokens"), int, "max_tokens")
        req.temperature = check(body.get("temperature"), float, "temperature")
        req.top_p = check(body.get("top_p"), float, "top_p")
        req.top_k = check(body.get("top_k"), int, "top_k")
        req.stop = _stop(body.get("stop"))
        req.seed = check(body.get("seed"), int, "seed")
        req.presence_penalty = check(body.get("presence_penalty"), float, "presence_penalty")
        req.frequency_penalty = check(body.get("frequency_penalty"), float, "frequency_penalty")
        req.reasoning = _reasoning(body)
        req.response_format = _response_format(body.get("response_format"))
        req.user = check(body.get("user"), str, "user")
        extras = {k: v for k, v in body.items() if k not in _KNOWN_KEYS}
        if extras:
            req.extras[self.name] = extras
        return req

    def render_request(self, req: ir.Request, model: str) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if req.system:
            # One system message: several, or one not first, trip many open-model chat templates.
            if any(p.cache_control is not None for p in req.system):
                messages.append({"role": "system", "content": [_render_part(p) for p in req.system]})
            else:
                messages.append({"role": "system", "content": "\n\n".join(p.text for p in req.system)})
        # System turns inside the conversation are folded into the user turn next to them (see above).
        for msg in fold_system_turns(req.messages):
            if msg.role == "user":
                messages.extend(render_user(msg))
            else:
                messages.append(_render_assistant(msg))
        body: dict[str, Any] = {"model": model, "messages": messages}
        if req.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        # Built-in tools of other providers cannot run here; custom tools already carry their `input` schema.
        tools = [t for t in req.tools if t.kind in ("function", "custom")]
        if tools:
            body["tools"] = [{"type": "function", "function": _render_function(t)} for t in tools]
            if req.tool_choice is not None:
                body["tool_choice"] = _render_tool_choice(req.tool_choice)
            if req.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = req.parallel_tool_calls
        if req.max_tokens is not None:
            # OpenAI reasoning models refuse max_tokens; older compatible servers only know max_tokens.
            body["max_completion_tokens" if req.reasoning is not None else "max_tokens"] = req.max_tokens
        for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "user"):
            value = getattr(req, key)
            if value is not None:
                body[key] = value
        if req.stop:
            body["stop"] = list(req.stop)
        if req.reasoning is not None:
            effort = req.reasoning.effort
            if effort is None and req.reasoning.budget_tokens is not None:
                effort = budget_to_effort(req.reasoning.budget_tokens)
            if effort is not None:
                body["reasoning_effort"] = effort
        if req.response_format is not None:
            body["response_format"] = _render_response_format(req.response_format)
        for key, value in req.extras.get(self.name, {}).items():
            body.setdefault(key, value)
        return body

    def parse_response(self, body: Any) -> ir.Response:
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise TranslationError("choices", "upstream response has no choices", 502)
        message = choices[0].get("message") if isinstance(choices[0].get("message"), dict) else {}
        parts: list[ir.Part] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append(ir.ThinkingPart(reasoning))
        content = message.get("content")
        if isinstance(content, list):  # a few servers answer with parts
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        text = content if isinstance(content, str) and content else message.get("refusal")
        if isinstance(text, str) and text:
            parts.append(ir.TextPart(text))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                call_id, signature, origin = decode_tool_call_id(text_field(call, "id") or new_id("call_"))
                args = upstream_arguments(fn.get("arguments"))
                parts.append(ir.ToolCallPart(call_id, text_field(fn, "name"), args, signature, origin))
        has_calls = any(isinstance(p, ir.ToolCallPart) for p in parts)
        return ir.Response(
            id=text_field(body, "id"),
            model=text_field(body, "model"),
            parts=parts,
            finish_reason=_finish_in(choices[0].get("finish_reason"), has_calls),
            usage=_parse_usage(body.get("usage")),
        )

    def render_response(self, resp: ir.Response, model: str) -> dict[str, Any]:
        calls = [p for p in resp.parts if isinstance(p, ir.ToolCallPart)]
        text = "".join(p.text for p in resp.parts if isinstance(p, ir.TextPart))
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        reasoning = "".join(p.text for p in resp.parts if isinstance(p, ir.ThinkingPart))
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [
                {
                    "id": encode_tool_call_id(c.id, c.signature, c.signature_origin),
                    "type": "function",
                    "function": {"name": c.name, "arguments": arguments_text(c.arguments)},
                }
                for c in calls
            ]
        return {
            "id": resp.id or new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish_out(resp.finish_reason, bool(calls)),
                }
            ],
            "usage": _render_usage(resp.usage),
        }

    def decoder(self) -> ChatDecoder:
        return ChatDecoder()

    def encoder(self, opts: EncoderOptions) -> ChatEncoder:
        return ChatEncoder(opts)

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        return openai_error(status, message, code)

    def error_message(self, body: bytes) -> str:
        return extract_message(body)


def _render_function(tool: ir.Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description:
        fn["description"] = tool.description
    fn["parameters"] = tool.parameters
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return fn


def _render_response_format(rf: ir.ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    js: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema or {}}
    if rf.strict is not None:
        js["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": js}


codec = OpenAIChatCodec()
