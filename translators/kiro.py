"""Kiro (AWS CodeWhisperer `generateAssistantResponse`): IR -> conversationState, event stream -> IR.

Wire facts and the request rules that keep the upstream from answering "Improperly formed
request" are in upstreams.md section 2 (2.4-2.13); pitfalls.md section 2 lists the peers' bugs this
module avoids. Pure protocol code: no I/O; the provider adds headers, tokens and retries.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from translators import ir
from translators.base import TranslationError
from translators.eventstream import EventStreamDecoder, EventStreamError, EventStreamMessage
from translators.thinking import effort_to_budget
from translators.tokens import estimate_text_tokens
from translators.turns import fold_system_turns

# Client model name -> Kiro modelId (upstreams.md 2.6). Config replaces/extends it via
# KiroOptions.model_map; a name that already is a Kiro id (a value of the map) passes through.
DEFAULT_MODEL_MAP: dict[str, str] = {
    "claude-sonnet-4-5": "claude-sonnet-4.5",
    "claude-sonnet-4-5-20250929": "claude-sonnet-4.5",
    "claude-sonnet-4-6": "claude-sonnet-4.6",
    "claude-opus-4-5": "claude-opus-4.5",
    "claude-opus-4-5-20251101": "claude-opus-4.5",
    "claude-opus-4-6": "claude-opus-4.6",
    "claude-opus-4-7": "claude-opus-4.7",
    "claude-opus-4-8": "claude-opus-4.8",
    "claude-haiku-4-5": "claude-haiku-4.5",
    "claude-haiku-4-5-20251001": "claude-haiku-4.5",
    "claude-sonnet-4": "claude-sonnet-4",
    "claude-sonnet-4-20250514": "claude-sonnet-4",
    "auto": "auto",
}

ORIGIN = "AI_EDITOR"
MAX_TOOL_NAME = 64
# Kiro rejects descriptions over 10240 bytes; stay 3 under it, cut on a UTF-8 boundary.
MAX_TOOL_DESCRIPTION_BYTES = 10237
MAX_OUTPUT_TOKENS = 32000
# Around 1.3 MB Kiro answers "Improperly formed request" instead of a size error (2.5 rule 12);
# the provider compares its serialised body against this.
MAX_BODY_BYTES = 1_250_000
THINKING_MIN_BUDGET, THINKING_MAX_BUDGET, THINKING_DEFAULT_BUDGET = 1024, 24576, 20000
IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
# Names Kiro refuses as client tools (Claude server web search; upstreams.md 2.5 rule 10).
RESERVED_TOOL_NAMES = frozenset({"web_search", "websearch"})
# Fillers for content Kiro refuses to see empty (2.5 rule 4).
USER_PLACEHOLDER = "Continue"
TOOL_RESULTS_PLACEHOLDER = "Tool results provided."
ASSISTANT_PLACEHOLDER = "OK"
EMPTY_RESULT_PLACEHOLDER = "(no output)"
PLACEHOLDER_TOOL_NAME = "no_tool_available"


@dataclass(slots=True)
class KiroOptions:
    """Per-provider knobs from config. Everything that adds text the client did not send is off."""

    model_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODEL_MAP))
    # Text put before the system prompt (an "identity" prompt). Opt-in only (pitfalls 2.13).
    identity_prompt: str | None = None
    # Send a do-nothing tool when the request has none (AIClient-2-API does; Kiro does not need it).
    placeholder_tool: bool = False
    # Send the client's max_tokens/temperature/top_p as inferenceConfig (maxTokens capped at 32000).
    inference_config: bool = True


class KiroRequest(NamedTuple):
    body: dict[str, Any]
    # Upstream tool name -> client name, for names the gateway shortened or sanitised.
    tool_name_map: dict[str, str]
    # Client tools Kiro cannot take (provider built-ins, web search), for the caller to log.
    dropped_tools: list[str]


# ---------------------------------------------------------------------------------------------
# Request


_NAME_OK = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def kiro_tool_name(name: str) -> str:
    """Kiro-safe tool name: <= 64 chars of [A-Za-z0-9_-]; others become `<prefix>_<12 hex sha256>`."""
    if _NAME_OK.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
    return f"{_NAME_BAD_CHARS.sub('_', name)[: MAX_TOOL_NAME - 13]}_{digest}"


def kiro_model_id(model: str, model_map: Mapping[str, str]) -> str:
    """Explicit mapping only: unknown names are a 404, never a silent fallback (pitfalls 2.14)."""
    mapped = model_map.get(model)
    if mapped:
        return mapped
    if model in model_map.values():
        return model
    raise TranslationError("model", f"model {model!r} is not available on Kiro", status=404)


def thinking_requested(req: ir.Request) -> bool:
    """Whether render_request adds thinking tags, i.e. what KiroStreamDecoder should be told."""
    r = req.reasoning
    if r is None:
        return False
    if r.budget_tokens is not None:
        return r.budget_tokens > 0
    return bool(r.effort) and r.effort.lower() != "none"


def _thinking_tags(r: ir.Reasoning) -> str:
    budget = r.budget_tokens or effort_to_budget(r.effort or "") or THINKING_DEFAULT_BUDGET
    budget = max(THINKING_MIN_BUDGET, min(THINKING_MAX_BUDGET, budget))
    return f"<thinking_mode>enabled</thinking_mode><max_thinking_length>{budget}</max_thinking_length>"


@dataclass(slots=True)
class _Turn:
    role: str
    texts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    uses: list[dict[str, Any]] = field(default_factory=list)
    results: list[ir.ToolResultPart] = field(default_factory=list)
    kiro_results: list[dict[str, Any]] = field(default_factory=list)


def _image(part: ir.ImagePart, where: str) -> dict[str, Any]:
    media, data = part.media_type, part.data
    if not data and part.url and part.url.startswith("data:"):
        head, _, data = part.url[5:].partition(",")
        media = head.split(";")[0] or media
    if not data:
        raise TranslationError(where, "Kiro needs inline image data; image URLs must be downloaded first")
    fmt = (media or "").lower().removeprefix("image/")
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise TranslationError(where, f"image type {media!r} is not supported by Kiro (png, jpeg, gif, webp)")
    return {"format": fmt, "source": {"bytes": data}}


def _turns(req: ir.Request) -> list[_Turn]:
    """IR messages -> turns with adjacent same-role messages merged (2.5 rule 1)."""
    turns: list[_Turn] = []
    # Kiro has no system role inside the history: system turns are folded into a user turn.
    for i, msg in enumerate(fold_system_turns(req.messages)):
        if msg.role not in ("user", "assistant"):
            raise TranslationError(f"messages[{i}].role", f"unknown role {msg.role!r}")
        if not turns or turns[-1].role != msg.role:
            turns.append(_Turn(msg.role))
        turn = turns[-1]
        user = msg.role == "user"
        for j, part in enumerate(msg.parts):
            where = f"messages[{i}].parts[{j}]"
            t = type(part)
            if t is ir.TextPart:
                if part.text.strip():
                    turn.texts.append(part.text)
            elif t is ir.ImagePart and user:
                turn.images.append(_image(part, where))
            elif t is ir.ToolResultPart and user:
                turn.results.append(part)
            elif t is ir.ToolCallPart and not user:
                args = part.arguments if isinstance(part.arguments, dict) else {"value": part.arguments}
                turn.uses.append({"toolUseId": part.id, "name": part.name, "input": args})
            elif t is ir.ThinkingPart and not user:
                if part.text:
                    turn.thinking.append(part.text)
            elif t is not ir.ThinkingPart:
                raise TranslationError(where, f"{t.__name__} cannot appear in a {msg.role} turn for Kiro")
    return turns


def _result_text(r: ir.ToolResultPart) -> str:
    return "\n".join(p.text for p in r.content if type(p) is ir.TextPart and p.text)


def _pair_tools(turns: list[_Turn], refused: set[str]) -> None:
    """Every toolUse answered in the next user turn and every toolResult answering the previous
    assistant turn (2.5 rules 7, 8); orphan results become text, unanswered uses are dropped."""
    seen: set[str] = set()
    for turn in turns:
        if turn.role == "assistant":
            kept = []
            for use in turn.uses:
                uid = use["toolUseId"]
                if uid and uid not in seen and use["name"] not in refused:
                    seen.add(uid)
                    kept.append(use)
            turn.uses = kept
    for i, turn in enumerate(turns):
        if turn.role != "user":
            continue
        open_ids = {u["toolUseId"] for u in turns[i - 1].uses} if i else set()
        answered: set[str] = set()
        for r in turn.results:
            if r.tool_call_id in answered:
                continue  # a repeated result for the same call (2.5 rule 7)
            turn.images.extend(_image(p, "tool_result") for p in r.content if type(p) is ir.ImagePart)
            text = _result_text(r)
            if r.tool_call_id in open_ids:
                answered.add(r.tool_call_id)
                status = "error" if r.is_error else "success"
                turn.kiro_results.append(
                    {
                        "toolUseId": r.tool_call_id,
                        "status": status,
                        "content": [{"text": text or EMPTY_RESULT_PLACEHOLDER}],
                    }
                )
            else:
                label = f"{r.name or 'tool'} {r.tool_call_id}".strip()
                turn.texts.append(f"[Tool result for {label}{' (error)' if r.is_error else ''}]\n{text}")
        if i:
            prev = turns[i - 1]
            prev.uses = [u for u in prev.uses if u["toolUseId"] in answered]


def _spec(name: str, description: str, schema: Any) -> dict[str, Any]:
    desc = description.strip() or name
    raw = desc.encode("utf-8")
    if len(raw) > MAX_TOOL_DESCRIPTION_BYTES:
        desc = raw[:MAX_TOOL_DESCRIPTION_BYTES].decode("utf-8", "ignore")
    if not isinstance(schema, dict) or not schema:
        schema = {"type": "object", "properties": {}}  # never null (2.5 rule 13)
    return {"toolSpecification": {"name": name, "description": desc, "inputSchema": {"json": schema}}}


def render_request(
    req: ir.Request,
    model: str,
    *,
    profile_arn: str | None,
    conversation_id: str,
    options: KiroOptions | None = None,
) -> KiroRequest:
    """IR -> CodeWhisperer body. Raises TranslationError for what Kiro cannot represent.

    Kiro has no field for stop sequences, tool_choice required/tool, response_format, seed or
    penalties; those are left out rather than rejected (clients send them routinely).
    """
    opts = options or KiroOptions()
    model_id = kiro_model_id(model, opts.model_map)
    turns = _turns(req)
    if not turns:
        raise TranslationError("messages", "at least one message is required")
    # Shape: user first, alternating, a user turn last (the current message; 2.5 rules 2, 3).
    if turns[0].role == "assistant":
        turns.insert(0, _Turn("user"))
    if turns[-1].role == "assistant":
        turns.append(_Turn("user"))

    thinking = thinking_requested(req)
    system = "\n\n".join(p.text for p in req.system if p.text.strip())
    if opts.identity_prompt:
        system = opts.identity_prompt + ("\n\n" + system if system else "")
    if thinking and req.reasoning is not None and "<thinking_mode>" not in system:
        tags = _thinking_tags(req.reasoning)
        system = tags + ("\n" + system if system else "")
    if system:
        turns[0].texts.insert(0, system)

    # Tools: drop built-ins and reserved names, keep the first of duplicate names.
    dropped: list[str] = []
    declared: dict[str, ir.Tool] = {}
    for tool in req.tools:
        if tool.kind not in ("function", "custom") or tool.name.lower() in RESERVED_TOOL_NAMES:
            dropped.append(tool.name)
        elif not tool.name:
            raise TranslationError("tools", "a tool needs a name")
        else:
            declared.setdefault(tool.name, tool)
    # History calls to refused tools go too; their results then become plain text.
    refused = set(dropped) | {u["name"] for t in turns for u in t.uses if u["name"].lower() in RESERVED_TOOL_NAMES}
    _pair_tools(turns, refused)

    name_map: dict[str, str] = {}

    def kname(name: str) -> str:
        short = kiro_tool_name(name)
        if short != name:
            name_map[short] = name
        return short

    used = list(dict.fromkeys(u["name"] for t in turns for u in t.uses))
    offered = list(declared)
    if req.tool_choice is not None and req.tool_choice.mode == "none":
        offered = [n for n in offered if n in used]  # Kiro has no switch: offer only what history needs
    specs = [_spec(kname(n), declared[n].description, declared[n].parameters) for n in offered]
    specs += [_spec(kname(n), n, None) for n in used if n not in declared]  # 2.5 rule 9
    if not specs and opts.placeholder_tool:
        specs.append(_spec(PLACEHOLDER_TOOL_NAME, "Placeholder: this conversation has no tools. Never call it.", None))

    entries: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "assistant":
            content = "\n\n".join(turn.texts)
            if thinking and turn.thinking:  # earlier thinking is replayed only while thinking is on
                joined = "\n\n".join(turn.thinking)
                block = f"<thinking>{joined}</thinking>"
                content = f"{block}\n\n{content}" if content else block
            msg: dict[str, Any] = {"content": content if content.strip() else ASSISTANT_PLACEHOLDER}
            if turn.uses:
                msg["toolUses"] = [{**u, "name": kname(u["name"])} for u in turn.uses]
            entries.append({"assistantResponseMessage": msg})
            continue
        content = "\n\n".join(turn.texts)
        if not content.strip():
            content = TOOL_RESULTS_PLACEHOLDER if turn.kiro_results else USER_PLACEHOLDER
        msg = {"content": content, "modelId": model_id, "origin": ORIGIN}
        if turn.images:
            msg["images"] = turn.images
        ctx: dict[str, Any] = {}
        if turn is turns[-1] and specs:
            ctx["tools"] = specs
        if turn.kiro_results:
            ctx["toolResults"] = turn.kiro_results
        if ctx:
            msg["userInputMessageContext"] = ctx
        entries.append({"userInputMessage": msg})

    state: dict[str, Any] = {
        "chatTriggerType": "MANUAL",
        "conversationId": conversation_id,
        "currentMessage": entries[-1],
    }
    if len(entries) > 1:
        state["history"] = entries[:-1]
    body: dict[str, Any] = {"conversationState": state}
    if profile_arn:
        body["profileArn"] = profile_arn
    if opts.inference_config:
        inference: dict[str, Any] = {}
        if req.max_tokens:
            inference["maxTokens"] = min(req.max_tokens, MAX_OUTPUT_TOKENS)
        if req.temperature is not None:
            inference["temperature"] = req.temperature
        if req.top_p is not None:
            inference["topP"] = req.top_p
        if inference:
            body["inferenceConfig"] = inference
    return KiroRequest(body, name_map, dropped)


# ---------------------------------------------------------------------------------------------
# Errors


@dataclass(slots=True)
class KiroError:
    status: int
    message: str
    reason: str | None
    # bad_request | context_too_long | auth | quota | suspended | throttled | transient
    kind: str


def parse_error(status: int, body: bytes) -> KiroError:
    """Classify an HTTP error answer per upstreams.md 2.13, for the provider and the pool."""
    text = body.decode("utf-8", "replace").strip()
    message, reason = text[:500], None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("Message") or obj.get("error_description") or obj.get("error")
        if isinstance(msg, str) and msg:
            message = msg
        if isinstance(obj.get("reason"), str):
            reason = obj["reason"]
    low = f"{message} {reason or ''}".lower()
    if status == 400:
        too_long = "input is too long" in low or "content_length_exceeds_threshold" in low
        kind = "context_too_long" if too_long else "bad_request"
    elif status == 401:
        kind = "auth"
    elif status == 402:
        kind = "quota"
    elif status == 403:
        kind = "suspended" if "suspend" in low else "auth"
    elif status == 429:
        kind = "throttled"
    elif status >= 500 or status == 408:
        kind = "transient"
    else:
        kind = "bad_request"
    return KiroError(status, message or f"HTTP {status}", reason, kind)


# In-band exception type -> HTTP-like status for StreamError.
_EXCEPTION_STATUS = {
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


def _in_band_error(etype: str, message: str) -> ir.StreamError:
    etype = etype.rpartition("#")[2] or "UnknownError"
    status = _EXCEPTION_STATUS.get(etype, 502)
    low = message.lower()
    prefix = "prompt is too long: " if "input is too long" in low or "content_length_exceeds" in low else ""
    return ir.StreamError(f"{prefix}Kiro {etype}: {message or 'no message'}", 400 if prefix else status)


# ---------------------------------------------------------------------------------------------
# Stream decoding

_OPEN, _CLOSE = "<thinking>", "</thinking>"
_QUOTES = "\"'`"
_CALLED = "[Called"
_CALL_HEAD = re.compile(r"\[Called\s+([A-Za-z0-9_.:-]+)\s+with\s+args:\s*")
_BRACKET_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]]', re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_MAX_CALL_HOLD = 256 * 1024  # give up on a text-form call whose "]" never comes
_HEAD_HOLD = 128  # "[Called ..." still undecided after this many chars is plain text
_IGNORED_EVENTS = frozenset({"meteringEvent", "followupPromptEvent", "codeReferenceEvent", "codeEvent", "metricsEvent"})
# thinking splitter states
_START, _IN, _TEXT = 0, 1, 2


def _tail_prefix(s: str, tag: str) -> int:
    """Length of the longest suffix of s that is a proper prefix of tag (tag's first char is unique)."""
    i = s.rfind(tag[0], max(0, len(s) - len(tag) + 1))
    return len(s) - i if i != -1 and tag.startswith(s[i:]) else 0


def _match_bracket(s: str, start: int) -> int:
    """Index of the "]" closing the "[" at start, skipping JSON strings (an unterminated string
    runs to the end); -1 if it has not arrived yet."""
    depth = 0
    for m in _BRACKET_TOKENS.finditer(s, start):
        c = m.group()
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _complete_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class _Call:
    id: str
    index: int
    name: str
    parts: list[str] = field(default_factory=list)
    checked: int = 0  # len(parts) when completeness was last checked
    complete: bool = False


class KiroStreamDecoder:
    """Kiro event-stream body bytes -> IR events (StreamDecoder protocol). Never raises.

    Tool calls stream live (Start, ArgsDelta per fragment, End on `stop`). Output that arrives
    while a call is still open (text, another call's fragments) waits in an ordered queue until
    the call ends -- or is seen to be complete JSON -- so each call stays contiguous.
    Finish and usage are emitted by close(); Kiro sends no reliable finish reason.
    """

    __slots__ = (
        "_active", "_cbuf", "_completed", "_ctx_pct", "_cwait", "_done", "_eat", "_emitted", "_frames", "_n_calls",
        "_names", "_queue", "_saw_frame", "_seen_calls", "_started", "_stop_reason", "_tbuf", "_thinking",
        "_truncated", "_tstate", "_usage", "_window",
    )  # fmt: skip

    def __init__(self, thinking_requested: bool, tool_name_map: dict[str, str] | None, context_window: int = 200_000):
        self._frames = EventStreamDecoder()
        self._thinking = thinking_requested
        self._names = tool_name_map or {}
        self._window = context_window
        self._started = False
        self._done = False
        self._saw_frame = False
        self._tstate = _START if thinking_requested else _TEXT
        self._tbuf = ""  # thinking-tag hold-back
        self._eat = 0  # newlines still to strip after a thinking tag
        self._cbuf = ""  # "[Called" hold-back
        self._cwait = False  # _cbuf holds a call head; only a "]" can complete it
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._active: _Call | None = None
        self._completed: set[str] = set()
        self._seen_calls: set[tuple[str, str]] = set()  # (name, canonical args) of emitted calls
        self._n_calls = 0
        self._truncated = False
        self._emitted: list[str] = []  # output text + tool JSON, for the usage estimate
        self._ctx_pct: float | None = None
        self._usage: ir.Usage | None = None
        self._stop_reason: str | None = None

    # -- protocol --------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[ir.Event]:
        if self._done:
            return []
        out: list[ir.Event] = []
        try:
            try:
                messages = self._frames.feed(data)
            except EventStreamError as exc:
                return self._fail(out, ir.StreamError(f"Kiro event stream broken: {exc}", 502))
            for msg in messages:
                self._saw_frame = True
                self._on_message(msg, out)
                if self._done:
                    break
        except Exception as exc:  # never raise into the proxy; report in-band instead
            return self._fail(out, ir.StreamError(f"Kiro stream decoding failed: {type(exc).__name__}: {exc}", 502))
        return out

    def close(self) -> list[ir.Event]:
        if self._done:
            return []
        out: list[ir.Event] = []
        try:
            try:
                self._frames.close()
            except EventStreamError as exc:
                return self._fail(out, ir.StreamError(f"Kiro event stream ended early: {exc}", 502))
            if not self._saw_frame:
                return self._fail(out, ir.StreamError("Kiro returned an empty event stream", 502))
            self._start(out)
            while self._queue or self._active is not None:
                if self._active is not None:
                    self._end_call(out)
                self._drain(out)
            self._flush(out)
            out.append(ir.UsageUpdate(self._final_usage()))
            out.append(ir.Finish(self._finish_reason()))
        except Exception as exc:
            return self._fail(out, ir.StreamError(f"Kiro stream decoding failed: {type(exc).__name__}: {exc}", 502))
        self._done = True
        return out

    # -- frames ----------------------------------------------------------------------------

    def _fail(self, out: list[ir.Event], err: ir.StreamError) -> list[ir.Event]:
        self._done = True
        out.append(err)
        return out

    def _start(self, out: list[ir.Event]) -> None:
        if not self._started:
            self._started = True
            out.append(ir.MessageStart())

    def _on_message(self, msg: EventStreamMessage, out: list[ir.Event]) -> None:
        h = msg.headers
        mtype = h.get(":message-type", "event")
        if mtype == "exception":
            etype = str(h.get(":exception-type") or "UnknownException")
            self._fail(out, _in_band_error(etype, _payload_message(msg.payload)))
            return
        if mtype == "error":
            code = str(h.get(":error-code") or "UnknownError")
            text = h.get(":error-message")
            self._fail(out, _in_band_error(code, str(text) if text else _payload_message(msg.payload)))
            return
        etype = h.get(":event-type")
        if etype in _IGNORED_EVENTS or not msg.payload:
            return
        try:
            p = json.loads(msg.payload)
        except ValueError:
            if etype in ("assistantResponseEvent", "toolUseEvent", "reasoningContentEvent"):
                self._fail(out, ir.StreamError(f"Kiro sent a {etype} frame that is not JSON", 502))
            return
        if not isinstance(p, dict):
            return
        if len(p) == 1:  # tolerate the wrapped form {"assistantResponseEvent": {...}}
            ((key, inner),) = p.items()
            if isinstance(inner, dict) and (key == etype or (etype is None and key.endswith("Event"))):
                p, etype = inner, key
        if "_type" in p and ("message" in p or "Message" in p):
            self._fail(out, _in_band_error(str(p["_type"]), str(p.get("message") or p.get("Message") or "")))
            return
        self._start(out)
        if etype == "assistantResponseEvent":
            content = p.get("content")
            if isinstance(content, str) and content:
                self._push("text", p, out)
            for use in p.get("toolUses") or ():
                if isinstance(use, dict):
                    self._push("tool", {**use, "stop": True}, out)
        elif etype == "toolUseEvent":
            self._push("tool", p, out)
        elif etype == "reasoningContentEvent":
            self._push("reasoning", p, out)
        elif etype == "contextUsageEvent":
            pct = p.get("contextUsagePercentage")
            if isinstance(pct, (int, float)):
                self._ctx_pct = float(pct)
        elif etype in ("metadataEvent", "messageMetadataEvent"):
            tu = p.get("tokenUsage")
            if isinstance(tu, dict):
                self._take_usage(tu)
        elif etype == "supplementaryWebLinksEvent":
            self._take_usage(p)
        elif etype == "messageStopEvent":
            reason = p.get("stopReason")
            self._stop_reason = reason if isinstance(reason, str) else self._stop_reason

    def _take_usage(self, tu: dict[str, Any]) -> None:
        def num(key: str) -> int:
            v = tu.get(key)
            return int(v) if isinstance(v, (int, float)) else 0

        read, write = num("cacheReadInputTokens"), num("cacheWriteInputTokens")
        inp = num("inputTokens") or (num("uncachedInputTokens") + read + write)
        out = num("outputTokens")
        if inp or out:
            self._usage = ir.Usage(
                input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
            )

    # -- ordering --------------------------------------------------------------------------

    def _push(self, kind: str, p: dict[str, Any], out: list[ir.Event]) -> None:
        a = self._active
        if a is not None and kind == "tool" and (p.get("toolUseId") or a.id) == a.id:
            self._tool(p, out)  # continues the open call, which precedes everything queued
        else:
            self._queue.append((kind, p))
        self._drain(out)

    def _drain(self, out: list[ir.Event]) -> None:
        q = self._queue
        while q:
            kind, p = q[0]
            a = self._active
            if a is not None and not (kind == "tool" and (p.get("toolUseId") or a.id) == a.id):
                if a.checked != len(a.parts):  # re-parse only when the call grew and may be whole
                    a.checked = len(a.parts)
                    a.complete = a.parts[-1].rstrip().endswith("}") and _complete_json("".join(a.parts))
                if not a.complete:
                    return  # wait for the open call to finish
                self._end_call(out)
            q.popleft()
            if kind == "text":
                self._content(p["content"], out)
            elif kind == "tool":
                self._tool(p, out)
            else:
                self._reasoning(p, out)

    # -- tool calls ------------------------------------------------------------------------

    def _tool(self, p: dict[str, Any], out: list[ir.Event]) -> None:
        a = self._active
        tid = p.get("toolUseId") or (a.id if a else "")
        if not isinstance(tid, str) or tid in self._completed:
            return  # a call repeated after its stop
        if a is None:
            self._flush(out)
            raw_name = p.get("name") if isinstance(p.get("name"), str) else ""
            name = self._names.get(raw_name, raw_name)
            a = self._active = _Call(tid, self._n_calls, name)
            self._n_calls += 1
            out.append(ir.ToolCallStart(a.index, tid, name))
        inp = p.get("input")
        if isinstance(inp, (dict, list)):
            inp = "" if a.parts else json.dumps(inp, ensure_ascii=False)
        if isinstance(inp, str) and inp:
            a.parts.append(inp)
            self._emitted.append(inp)
            out.append(ir.ToolCallArgsDelta(a.index, inp))
        if p.get("stop") is True:
            self._end_call(out)

    def _end_call(self, out: list[ir.Event]) -> None:
        a = self._active
        if a is None:
            return
        self._active = None
        raw = "".join(a.parts)
        try:
            args = json.loads(raw) if raw.strip() else {}
            self._seen_calls.add((a.name, _canonical(args)))
        except ValueError:
            self._truncated = True  # tool JSON cut off mid-object: the output limit was hit
        self._completed.add(a.id)
        out.append(ir.ToolCallEnd(a.index))

    def _text_call(self, name: str, args: dict[str, Any], out: list[ir.Event]) -> None:
        name = self._names.get(name, name)
        key = (name, _canonical(args))
        if key in self._seen_calls:
            return
        self._seen_calls.add(key)
        index = self._n_calls
        self._n_calls += 1
        call_id = f"tooluse_{uuid.uuid4().hex[:22]}"  # random: the same call in a later turn needs a new id
        text = json.dumps(args, ensure_ascii=False)
        self._emitted.append(text)
        out += (ir.ToolCallStart(index, call_id, name), ir.ToolCallArgsDelta(index, text), ir.ToolCallEnd(index))
        self._completed.add(call_id)

    # -- thinking --------------------------------------------------------------------------

    def _reasoning(self, p: dict[str, Any], out: list[ir.Event]) -> None:
        self._flush(out)
        text, sig, redacted = p.get("text"), p.get("signature"), p.get("redactedContent")
        if isinstance(text, str) and text:
            self._emitted.append(text)
            out.append(ir.ThinkingDelta(text))
        # Kiro's signatures are made by Claude behind Bedrock, but they are tagged "kiro" so they are
        # only ever replayed to Kiro (which ignores them), never to a Claude API that may reject them.
        if isinstance(sig, str) and sig:
            out.append(ir.ThinkingSignature(sig, origin="kiro"))
        if isinstance(redacted, str) and redacted:
            out.append(ir.ThinkingSignature("", origin="kiro", redacted=redacted))

    def _content(self, text: str, out: list[ir.Event], final: bool = False) -> None:
        """assistantResponseEvent text: a leading <thinking>...</thinking> span becomes thinking
        (only when thinking was requested), the rest goes through the text-call detector."""
        if self._tstate == _TEXT and not self._eat:
            self._text(text, out, final)
            return
        buf = self._tbuf + text
        self._tbuf = ""
        while buf:
            if self._eat:
                stripped = buf.lstrip("\n")
                eaten = min(self._eat, len(buf) - len(stripped))
                buf = buf[eaten:]
                self._eat = 0 if buf or eaten == 0 else self._eat - eaten
                if not buf:
                    return
            if self._tstate == _START:
                s = buf.lstrip()
                if s.startswith(_OPEN):
                    self._tstate, self._eat = _IN, 1
                    buf = s[len(_OPEN) :]
                    continue
                if not final and _OPEN.startswith(s):  # whitespace or a tag prefix so far
                    self._tbuf = buf
                    return
                self._tstate = _TEXT
                self._text(buf, out, final)
                return
            if self._tstate == _IN:
                end = self._close_tag(buf, final)
                if end is None:  # no tag: hold back what may be its start
                    keep = 0 if final else _tail_prefix(buf, _CLOSE)
                    self._think_out(buf[: len(buf) - keep], out)
                    self._tbuf = buf[len(buf) - keep :]
                    return
                pos, complete = end
                self._think_out(buf[:pos], out)
                if not complete:
                    self._tbuf = buf[pos:]
                    return
                buf = buf[pos + len(_CLOSE) :]
                self._tstate, self._eat = _TEXT, 2
                continue
            self._text(buf, out, final)
            return

    @staticmethod
    def _close_tag(buf: str, final: bool) -> tuple[int, bool] | None:
        """Position of a real closing tag (not quoted), and whether it is decided yet."""
        pos = buf.find(_CLOSE)
        while pos != -1:
            after = pos + len(_CLOSE)
            quoted_before = pos > 0 and buf[pos - 1] in _QUOTES
            if not quoted_before:
                if after == len(buf):
                    return pos, final  # the next char decides; at the very end the tag is real
                if buf[after] not in _QUOTES:
                    return pos, True
            pos = buf.find(_CLOSE, pos + 1)
        return None

    def _think_out(self, text: str, out: list[ir.Event]) -> None:
        if text:
            self._emitted.append(text)
            out.append(ir.ThinkingDelta(text))

    # -- text and text-form tool calls -------------------------------------------------------

    def _text(self, text: str, out: list[ir.Event], final: bool = False) -> None:
        if self._cwait and not final and "]" not in text and len(self._cbuf) < _MAX_CALL_HOLD:
            self._cbuf += text
            return
        buf = self._cbuf + text if self._cbuf else text
        self._cbuf = ""
        self._cwait = False
        done = 0  # buf[:done] is handled
        scan = 0
        while True:
            i = buf.find(_CALLED, scan)
            if i == -1:
                keep = 0 if final else _tail_prefix(buf, _CALLED)
                self._text_out(buf[done : len(buf) - keep], out)
                self._cbuf = buf[len(buf) - keep :]
                return
            m = _CALL_HEAD.match(buf, i)
            if m is None:
                rest = buf[i:]
                if not final and len(rest) < _HEAD_HOLD and "]" not in rest and "\n" not in rest:
                    self._text_out(buf[done:i], out)
                    self._cbuf = rest  # "[Called Rea" -- may still become a call
                    return
                scan = i + 1
                continue
            end = _match_bracket(buf, i)
            if end == -1:
                if not final and len(buf) - i < _MAX_CALL_HOLD:
                    self._text_out(buf[done:i], out)
                    self._cbuf, self._cwait = buf[i:], True
                    return
                scan = i + 1
                continue
            args = _parse_args(buf[m.end() : end])
            if args is None:
                scan = i + 1
                continue
            self._text_out(buf[done:i], out)
            self._text_call(m.group(1), args, out)
            done = scan = end + 1

    def _text_out(self, text: str, out: list[ir.Event]) -> None:
        if text:
            self._emitted.append(text)
            out.append(ir.TextDelta(text))

    def _flush(self, out: list[ir.Event]) -> None:
        """Release held-back text before something that must come after it."""
        if self._tbuf:
            self._content("", out, final=True)
        if self._cbuf:
            self._text("", out, final=True)

    # -- end ---------------------------------------------------------------------------------

    def _final_usage(self) -> ir.Usage:
        est = estimate_text_tokens("".join(self._emitted))
        if self._usage is not None:
            usage = self._usage
            if not usage.output_tokens and est:
                usage.output_tokens, usage.estimated = est, True
            return usage
        inp = max(0, int(self._ctx_pct / 100 * self._window) - est) if self._ctx_pct else 0
        return ir.Usage(input_tokens=inp, output_tokens=est, estimated=True)

    def _finish_reason(self) -> ir.FinishReason:
        stop = (self._stop_reason or "").lower()
        if self._truncated or "max_tokens" in stop or "length" in stop:
            return ir.FinishReason.LENGTH
        if self._n_calls:
            return ir.FinishReason.TOOL_CALLS
        return ir.FinishReason.STOP


def _parse_args(text: str) -> dict[str, Any] | None:
    """JSON of a text-form call, repairing trailing commas; None if it is not an object."""
    text = text.strip()
    for candidate in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _payload_message(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("Message")
        if isinstance(msg, str):
            return msg
    return text[:500]
