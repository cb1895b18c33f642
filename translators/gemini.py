"""Gemini generateContent codec, for the public API and Google Code Assist (Gemini CLI's backend).

Code Assist speaks the same GenerateContentRequest/Response, wrapped in an envelope
(upstreams.md 1.6-1.7): `wrap_code_assist` builds it and every response path unwraps it, so one
codec serves both upstreams and Gemini clients.

Choices worth knowing:
- Function calls get ids when Gemini gives none: `call_<n>` by position in a parsed request (so
  re-parsing a conversation yields the same ids) and `call_<responseId>_<i>` in responses.
- A functionResponse without an id answers the previous model turn's call of the same name, in
  order; `name` is required by Gemini and recovered from history on render.
- Finish reasons: STOP becomes TOOL_CALLS when calls were made; MALFORMED_FUNCTION_CALL,
  UNEXPECTED_TOOL_CALL and TOO_MANY_TOOL_CALLS become ERROR (the turn produced no usable call);
  OTHER and unknown reasons become STOP, since Gemini uses OTHER for endings that are not failures.
- A stream's Finish is emitted on close(): Gemini may send usage after the finishReason chunk,
  and the event grammar puts usage before Finish.
- Signatures: only `gemini`-origin signatures are sent as thoughtSignature. A signature on a
  non-thought part becomes an empty signed ThinkingPart before it (the IR's only signature
  carrier besides tool calls). Gemini 3 rejects a current-turn functionCall without one, so the
  first call of each model step in the current turn gets Google's documented dummy when no real
  signature survived (e.g. history from another model).
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache
from typing import Any

from translators import errors, thinking
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, TranslationError
from translators.ir import (
    Event,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    MessageStart,
    Part,
    Reasoning,
    Request,
    Response,
    ResponseFormat,
    StreamError,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ThinkingPart,
    ThinkingSignature,
    Tool,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolCallStart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageUpdate,
)
from translators.schema_clean import clean_schema, gemini_to_json_schema
from translators.sse import SseParser, dumps
from translators.turns import fold_system_turns

ORIGIN = "gemini"
# Google's documented placeholder for function calls whose real signature does not exist.
DUMMY_SIGNATURE = "skip_thought_signature_validator"

_ROLES = {"user": "user", "model": "assistant", "function": "user"}
_RESULT_KEYS = ("result", "output", "content")
_FILE_URI_PREFIXES = ("gs://", "https://generativelanguage.googleapis.com/")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

_FILTERED = FinishReason.CONTENT_FILTER
_FINISH_IN = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": _FILTERED,
    "RECITATION": _FILTERED,
    "LANGUAGE": _FILTERED,
    "BLOCKLIST": _FILTERED,
    "PROHIBITED_CONTENT": _FILTERED,
    "SPII": _FILTERED,
    "IMAGE_SAFETY": _FILTERED,
    "IMAGE_PROHIBITED_CONTENT": _FILTERED,
    "IMAGE_RECITATION": _FILTERED,
    "MALFORMED_FUNCTION_CALL": FinishReason.ERROR,
    "UNEXPECTED_TOOL_CALL": FinishReason.ERROR,
    "TOO_MANY_TOOL_CALLS": FinishReason.ERROR,
}
_FINISH_OUT = {
    FinishReason.LENGTH: "MAX_TOKENS",
    FinishReason.CONTEXT_EXCEEDED: "MAX_TOKENS",
    FinishReason.CONTENT_FILTER: "SAFETY",
    FinishReason.ERROR: "OTHER",
}

# generationConfig fields the IR models: Gemini name -> (Request attribute, numeric kind).
_SAMPLING: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "topP": ("top_p", float),
    "topK": ("top_k", int),
    "maxOutputTokens": ("max_tokens", int),
    "seed": ("seed", int),
    "presencePenalty": ("presence_penalty", float),
    "frequencyPenalty": ("frequency_penalty", float),
}


# ---------------------------------------------------------------------------------------------
# Field names: Gemini's JSON accepts lowerCamel and snake_case alike.


@lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


@lru_cache(maxsize=256)
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _get(obj: dict[str, Any], key: str) -> Any:
    """A field by its lowerCamel name or its snake_case spelling."""
    value = obj.get(key)
    return obj.get(_snake(key)) if value is None else value


def _strip_models(model: str) -> str:
    return model.removeprefix("models/")


def _is_gemini3(model: str) -> bool:
    return _strip_models(model).startswith("gemini-3")


# ---------------------------------------------------------------------------------------------
# Code Assist envelope


def wrap_code_assist(
    request_body: dict[str, Any], model: str, project: str, user_prompt_id: str | None = None
) -> dict[str, Any]:
    """The v1internal body: the GenerateContentRequest (without model) under `request`."""
    body: dict[str, Any] = {"model": _strip_models(model), "project": project}
    if user_prompt_id:
        body["user_prompt_id"] = user_prompt_id
    body["request"] = request_body
    return body


def unwrap_code_assist(obj: Any) -> Any:
    """The GenerateContentResponse inside `{"response": ..., "traceId": ...}`; anything else as is.

    traceId stands in for a missing responseId so ids stay stable per response."""
    if not isinstance(obj, dict) or not isinstance(obj.get("response"), dict):
        return obj
    inner: dict[str, Any] = obj["response"]
    trace = obj.get("traceId")
    if trace and not inner.get("responseId"):
        inner = {**inner, "responseId": trace}
    return inner


# ---------------------------------------------------------------------------------------------
# Request: Gemini client -> IR


def _parse_contents(contents: Any) -> list[Message]:
    if not isinstance(contents, list):
        raise TranslationError("contents", "must be an array of Content objects")
    messages: list[Message] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the current model turn's unanswered calls
    n_calls = 0
    prev_role = ""
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        if not isinstance(content, dict):
            raise TranslationError(where, "must be a Content object")
        role = _ROLES.get(content.get("role") or "user")
        if role is None:
            raise TranslationError(f"{where}.role", f"unknown role {content.get('role')!r}; use user or model")
        raw_parts = content.get("parts")
        if not isinstance(raw_parts, list):
            raise TranslationError(f"{where}.parts", "must be an array of Part objects")
        if role == "assistant" and prev_role != "assistant":
            pending = []
        prev_role = role
        parts: list[Part] = []
        for j, raw in enumerate(raw_parts):
            pw = f"{where}.parts[{j}]"
            if not isinstance(raw, dict):
                raise TranslationError(pw, "must be a Part object")
            call = _get(raw, "functionCall")
            response = _get(raw, "functionResponse")
            if call is not None:
                part = _parse_call(call, raw, pw, n_calls)
                n_calls += 1
                pending.append((part.id, part.name))
                parts.append(part)
            elif response is not None:
                parts.append(_parse_result(response, pw, pending))
            else:
                parts.extend(_parse_plain(raw, pw))
        if parts:
            messages.append(Message(role, parts))
    return messages


def _parse_call(call: Any, raw: dict[str, Any], where: str, n: int) -> ToolCallPart:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise TranslationError(f"{where}.functionCall.name", "is required")
    args = call.get("args")
    if args is None:
        args = {}
    elif not isinstance(args, dict):
        raise TranslationError(f"{where}.functionCall.args", "must be an object")
    sig = _signature(raw)
    return ToolCallPart(call.get("id") or f"call_{n}", call["name"], args, sig, ORIGIN if sig else None)


def _parse_result(resp: Any, where: str, pending: list[tuple[str, str]]) -> ToolResultPart:
    """A functionResponse, tied to its call by id, else by name and order within the previous turn."""
    if not isinstance(resp, dict) or not isinstance(resp.get("name"), str) or not resp["name"]:
        raise TranslationError(f"{where}.functionResponse.name", "is required")
    name: str = resp["name"]
    rid = resp.get("id")
    match = next((k for k, (cid, _) in enumerate(pending) if rid and cid == rid), None)
    if match is None:
        match = next((k for k, (_, cname) in enumerate(pending) if cname == name), None)
    if match is not None:
        call_id = pending.pop(match)[0]
    elif isinstance(rid, str) and rid:
        call_id = rid
    else:
        raise TranslationError(
            f"{where}.functionResponse", f"no functionCall named {name!r} in the previous model turn to answer"
        )
    text, is_error = _result_text(resp.get("response"))
    content: list[TextPart | ImagePart] = [TextPart(text)]
    for k, extra in enumerate(resp.get("parts") or ()):
        if isinstance(extra, dict) and _get(extra, "inlineData") is not None:
            content.append(_inline_image(_get(extra, "inlineData"), f"{where}.functionResponse.parts[{k}].inlineData"))
    return ToolResultPart(call_id, content, is_error, name)


def _result_text(response: Any) -> tuple[str, bool]:
    """The tool output as text: a lone result/output/content string unwrapped, else compact JSON."""
    if isinstance(response, str):
        return response, False
    if isinstance(response, dict) and len(response) == 1:
        key, value = next(iter(response.items()))
        if isinstance(value, str) and key in _RESULT_KEYS:
            return value, False
        if isinstance(value, str) and key == "error":
            return value, True
    return ("" if response is None else dumps(response)), False


def _signature(part: dict[str, Any]) -> str | None:
    sig = _get(part, "thoughtSignature")
    return sig if isinstance(sig, str) and sig else None


def _parse_plain(raw: dict[str, Any], where: str) -> list[Part]:
    sig = _signature(raw)
    text = raw.get("text")
    if raw.get("thought") is True:
        if not isinstance(text, str) and text is not None:
            raise TranslationError(f"{where}.text", "must be a string")
        return [ThinkingPart(text or "", sig, ORIGIN if sig else None)] if text or sig else []
    out: list[Part] = [ThinkingPart("", sig, ORIGIN)] if sig else []
    if text is not None:
        if not isinstance(text, str):
            raise TranslationError(f"{where}.text", "must be a string")
        if text:
            out.append(TextPart(text))
    elif _get(raw, "inlineData") is not None:
        out.append(_inline_image(_get(raw, "inlineData"), f"{where}.inlineData"))
    elif _get(raw, "fileData") is not None:
        data = _get(raw, "fileData")
        uri = _get(data, "fileUri") if isinstance(data, dict) else None
        if not isinstance(uri, str) or not uri:
            raise TranslationError(f"{where}.fileData.fileUri", "is required")
        out.append(ImagePart(media_type=_get(data, "mimeType"), url=uri))
    elif (code := _code_text(raw)) is not None:
        out.append(TextPart(code))
    elif not sig:
        raise TranslationError(where, f"unsupported part with fields {sorted(raw)}")
    return out


def _inline_image(data: Any, where: str) -> ImagePart:
    if not isinstance(data, dict) or not isinstance(data.get("data"), str):
        raise TranslationError(f"{where}.data", "must be a base64 string")
    mime = _get(data, "mimeType")
    if not isinstance(mime, str) or not mime:
        raise TranslationError(f"{where}.mimeType", "is required")
    return ImagePart(media_type=mime, data=_standard_base64(data["data"]))


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _standard_base64(data: str) -> str:
    """Google's JSON mapping of bytes accepts URL-safe base64 (the google-genai SDK sends it);
    the IR and every other upstream want the standard alphabet with padding."""
    if "-" in data or "_" in data or len(data) % 4:
        data = data.translate(_URLSAFE_TO_STANDARD)
        data += "=" * (-len(data) % 4)
    return data


def _code_text(part: dict[str, Any]) -> str | None:
    """Built-in code execution parts, which the IR has no type for, as markdown text."""
    code = _get(part, "executableCode")
    if isinstance(code, dict):
        return f"```{str(code.get('language') or '').lower()}\n{code.get('code') or ''}\n```"
    result = _get(part, "codeExecutionResult")
    if isinstance(result, dict):
        return f"```\n{result.get('output') or ''}\n```"
    return None


def _lower_types(schema: Any) -> Any:
    """Gemini `Schema` objects spell types as enums ("OBJECT"); JSON Schema wants lowercase."""
    if isinstance(schema, list):
        return [_lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if isinstance(value, str):
                value = value.lower()
            elif isinstance(value, list):
                value = [v.lower() if isinstance(v, str) else v for v in value]
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            value = {name: _lower_types(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "not", "prefixItems"):
            value = _lower_types(value)
        out[key] = value
    return out


def _parse_tools(tools: Any) -> list[Tool]:
    if not isinstance(tools, list):
        raise TranslationError("tools", "must be an array")
    out: list[Tool] = []
    for i, entry in enumerate(tools):
        if not isinstance(entry, dict):
            raise TranslationError(f"tools[{i}]", "must be a Tool object")
        for key, value in entry.items():
            kind = _camel(key)
            if kind != "functionDeclarations":
                # Gemini built-ins (googleSearch, codeExecution, urlContext, ...), replayed as sent.
                out.append(Tool(name=kind, kind=kind, raw={kind: value}))
                continue
            if not isinstance(value, list):
                raise TranslationError(f"tools[{i}].functionDeclarations", "must be an array")
            for j, decl in enumerate(value):
                where = f"tools[{i}].functionDeclarations[{j}]"
                if not isinstance(decl, dict) or not isinstance(decl.get("name"), str) or not decl["name"]:
                    raise TranslationError(f"{where}.name", "is required")
                params = _get(decl, "parametersJsonSchema")
                if params is None:
                    params = _lower_types(decl.get("parameters"))
                if params is not None and not isinstance(params, dict):
                    raise TranslationError(f"{where}.parameters", "must be an object")
                tool = Tool(decl["name"], decl.get("description") or "")
                if params:
                    tool.parameters = params
                out.append(tool)
    return out


def _parse_tool_choice(config: Any) -> ToolChoice | None:
    fcc = _get(config, "functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(fcc, dict):
        return None
    mode = str(fcc.get("mode") or "").upper()
    names = _get(fcc, "allowedFunctionNames")
    if mode in ("AUTO", "VALIDATED"):
        return ToolChoice("auto")
    if mode == "NONE":
        return ToolChoice("none")
    if mode == "ANY":
        if isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
            return ToolChoice("tool", names[0])
        return ToolChoice("required")
    if mode in ("", "MODE_UNSPECIFIED"):
        return None
    raise TranslationError("toolConfig.functionCallingConfig.mode", f"unknown mode {fcc.get('mode')!r}")


def _parse_generation(config: Any, req: Request, extras: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise TranslationError("generationConfig", "must be an object")
    rest: dict[str, Any] = {}
    mime: str | None = None
    schema: Any = None
    for raw_key, value in config.items():
        key = _camel(raw_key)
        where = f"generationConfig.{key}"
        if value is None:
            continue
        if key in _SAMPLING:
            attr, kind = _SAMPLING[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TranslationError(where, "must be a number")
            if kind is int and not float(value).is_integer():
                raise TranslationError(where, "must be an integer")
            setattr(req, attr, kind(value))
        elif key == "stopSequences":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise TranslationError(where, "must be an array of strings")
            req.stop = list(stops)
        elif key == "candidateCount":
            if value != 1:
                raise TranslationError(where, "only one candidate is supported")
        elif key == "responseMimeType":
            mime = value
        elif key in ("responseSchema", "responseJsonSchema"):
            if not isinstance(value, dict):
                raise TranslationError(where, "must be an object")
            # Both carry Gemini's Schema form in practice (Gemini CLI: "type": "OBJECT" in
            # responseJsonSchema); the IR holds plain JSON Schema.
            schema = gemini_to_json_schema(value)
        elif key == "thinkingConfig":
            req.reasoning = _parse_thinking(value)
        else:
            rest[raw_key] = value
    if mime == "application/json":
        req.response_format = ResponseFormat("json_schema", schema) if schema else ResponseFormat("json_object")
    elif mime is not None and mime != "text/plain":
        rest["responseMimeType"] = mime
        if schema is not None:
            rest["responseJsonSchema"] = schema
    if rest:
        extras["generationConfig"] = rest


def _parse_thinking(config: Any) -> Reasoning | None:
    if not isinstance(config, dict):
        raise TranslationError("generationConfig.thinkingConfig", "must be an object")
    budget = _get(config, "thinkingBudget")
    level = _get(config, "thinkingLevel")
    if budget is not None and level is not None:
        raise TranslationError("generationConfig.thinkingConfig", "set thinkingBudget or thinkingLevel, not both")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise TranslationError("generationConfig.thinkingConfig.thinkingBudget", "must be an integer")
    if level is not None and not isinstance(level, str):
        raise TranslationError("generationConfig.thinkingConfig.thinkingLevel", "must be a string")
    show = _get(config, "includeThoughts") is True
    # -1 is "dynamic": thinking on at the model's discretion, which is what no budget means.
    reasoning = Reasoning(
        effort=level.lower() if level else None,
        budget_tokens=budget if budget is not None and budget >= 0 else None,
        summary="auto" if show else None,
    )
    if reasoning.effort is None and reasoning.budget_tokens is None and not show:
        return None
    return reasoning


# ---------------------------------------------------------------------------------------------
# Request: IR -> Gemini upstream


def _image_part(image: ImagePart, where: str) -> dict[str, Any]:
    if image.data is not None:
        if not image.media_type:
            raise TranslationError(f"{where}.media_type", "an inline image needs a media type")
        return {"inlineData": {"mimeType": image.media_type, "data": image.data}}
    url = image.url or ""
    if url.startswith(_FILE_URI_PREFIXES):
        data = {"mimeType": image.media_type, "fileUri": url} if image.media_type else {"fileUri": url}
        return {"fileData": data}
    raise TranslationError(
        f"{where}.url",
        "the image must be inline (base64) for Gemini; only gs:// and Gemini file URIs can be referenced",
    )


def _thought_part(part: ThinkingPart) -> dict[str, Any] | None:
    """A thought part; a signature-only part keeps Google's shape `{"text": "", "thoughtSignature"}`."""
    sig = part.signature if part.signature_origin == ORIGIN else None
    if part.redacted is not None or not (part.text or sig):
        return None
    out: dict[str, Any] = {"text": part.text, "thought": True} if part.text else {"text": ""}
    if sig:
        out["thoughtSignature"] = sig
    return out


def _call_part(call_id: str, name: str, args: dict[str, Any], sig: str | None, origin: str | None) -> dict[str, Any]:
    fc: dict[str, Any] = {"id": call_id, "name": name, "args": args} if call_id else {"name": name, "args": args}
    part: dict[str, Any] = {"functionCall": fc}
    if sig and origin == ORIGIN:
        part["thoughtSignature"] = sig
    return part


def _result_object(text: str, is_error: bool) -> dict[str, Any]:
    """functionResponse.response must be an object: a JSON object output as is, else wrapped."""
    value: Any = text
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    if is_error:
        return {"error": value}
    return value if isinstance(value, dict) else {"result": text}


def _render_contents(req: Request) -> list[dict[str, Any]]:
    names = {p.id: p.name for m in req.messages for p in m.parts if isinstance(p, ToolCallPart)}
    contents: list[dict[str, Any]] = []
    # Gemini has no system role inside `contents`: system turns are folded into a user turn.
    for i, msg in enumerate(fold_system_turns(req.messages)):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(msg.parts):
            where = f"messages[{i}].parts[{j}]"
            if isinstance(part, TextPart):
                if part.text:
                    parts.append({"text": part.text})
            elif isinstance(part, ToolCallPart):
                parts.append(_call_part(part.id, part.name, part.arguments, part.signature, part.signature_origin))
            elif isinstance(part, ToolResultPart):
                name = part.name or names.get(part.tool_call_id)
                if not name:
                    raise TranslationError(
                        f"{where}.tool_call_id", f"no tool call {part.tool_call_id!r} in the conversation to name"
                    )
                text = "\n".join(c.text for c in part.content if isinstance(c, TextPart))
                fr: dict[str, Any] = {"name": name, "response": _result_object(text, part.is_error)}
                if part.tool_call_id:
                    fr = {"id": part.tool_call_id, **fr}
                parts.append({"functionResponse": fr})
                for k, c in enumerate(part.content):
                    if isinstance(c, ImagePart):
                        parts.append(_image_part(c, f"{where}.content[{k}]"))
            elif isinstance(part, ThinkingPart):
                # Only Gemini's own signed thoughts mean anything to Gemini; the rest is dropped.
                if part.signature and part.signature_origin == ORIGIN and (thought := _thought_part(part)):
                    parts.append(thought)
            else:
                parts.append(_image_part(part, where))
        if not parts:
            continue
        role = "model" if msg.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    _check_pairing(contents)
    return contents


def _check_pairing(contents: list[dict[str, Any]]) -> None:
    """Gemini 400s unless a model turn's N functionCalls are answered by N functionResponses next."""
    for k, content in enumerate(contents):
        if content["role"] != "user":
            continue
        answers = sum("functionResponse" in p for p in content["parts"])
        prev = contents[k - 1] if k else None
        calls = sum("functionCall" in p for p in prev["parts"]) if prev and prev["role"] == "model" else 0
        if answers != calls:
            raise TranslationError(
                "messages",
                f"Gemini turn {k} answers {answers} function call(s) but the model turn before it made {calls}",
            )


def _sign_current_turn(contents: list[dict[str, Any]]) -> None:
    """Gemini 3: the first functionCall of each model step in the current turn needs a signature.

    The current turn starts at the last user turn that is not only function responses."""
    start = 0
    for k, content in enumerate(contents):
        if content["role"] == "user" and not any("functionResponse" in p for p in content["parts"]):
            start = k
    for content in contents[start:]:
        if content["role"] != "model":
            continue
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and "thoughtSignature" not in first:
            first["thoughtSignature"] = DUMMY_SIGNATURE


def _render_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    builtins: list[dict[str, Any]] = []
    for tool in tools:
        if tool.kind in ("function", "custom"):
            decl: dict[str, Any] = {"name": tool.name}
            if tool.description:
                decl["description"] = tool.description
            params = (
                {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}
                if tool.kind == "custom"  # freeform tools take their text as one string argument
                else clean_schema(tool.parameters)
            )
            # Gemini 400s on an OBJECT schema with no properties: a no-argument tool omits them.
            if params.get("properties"):
                decl["parameters"] = params
            declarations.append(decl)
        elif tool.raw is not None and list(tool.raw) == [tool.kind]:
            # A Gemini built-in as parse_request keeps it; other providers' built-ins cannot run here.
            builtins.append(dict(tool.raw))
    return ([{"functionDeclarations": declarations}] if declarations else []) + builtins


def _render_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "tool" and choice.name:
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE"}.get(choice.mode, "ANY")}


def _clamp_budget(model: str, budget: int) -> int:
    """Gemini 2.5 ranges: Pro cannot turn thinking off (128..32768); Flash tops out at 24576."""
    name = _strip_models(model)
    if budget < 0:  # -1: dynamic
        return budget
    if "2.5-pro" in name:
        return min(max(budget, 128), 32768)
    if "2.5-flash" in name:
        return min(budget, 24576)
    return budget


def _render_thinking(r: Reasoning, model: str) -> dict[str, Any]:
    effort = r.effort.lower() if r.effort else None
    off = effort == "none" or (effort is None and r.budget_tokens == 0)
    config: dict[str, Any] = {}
    if _is_gemini3(model):
        source = effort or (thinking.budget_to_effort(r.budget_tokens) if r.budget_tokens is not None else None)
        if source:
            config["thinkingLevel"] = thinking.gemini3_level(source)
    else:
        budget = (
            r.budget_tokens if r.budget_tokens is not None else (thinking.effort_to_budget(effort) if effort else None)
        )
        if budget is not None:
            config["thinkingBudget"] = _clamp_budget(model, budget)
    if not off:
        config["includeThoughts"] = True
    return config


def _render_generation(req: Request, model: str, extra: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = dict(extra)
    for key, (attr, _) in _SAMPLING.items():
        value = getattr(req, attr)
        if value is not None:
            config[key] = value
    if req.stop:
        config["stopSequences"] = list(req.stop)
    rf = req.response_format
    if rf is not None and rf.type != "text":
        config["responseMimeType"] = "application/json"
        if rf.type == "json_schema" and rf.schema:
            config["responseJsonSchema"] = rf.schema
    if req.reasoning is not None and (thinking_config := _render_thinking(req.reasoning, model)):
        config["thinkingConfig"] = thinking_config
    return config


# ---------------------------------------------------------------------------------------------
# Responses: Gemini upstream -> IR events (shared by the stream decoder and parse_response)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(meta: dict[str, Any]) -> Usage:
    """candidatesTokenCount excludes thoughts; the IR's output includes them (dialects.md 7)."""
    thoughts = _int(meta.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=_int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount")),
        output_tokens=_int(meta.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _usage_metadata(usage: Usage) -> dict[str, Any]:
    meta = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": max(usage.output_tokens - usage.reasoning_tokens, 0),
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens:
        meta["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cache_read_tokens:
        meta["cachedContentTokenCount"] = usage.cache_read_tokens
    return meta


def _stream_error(err: Any) -> StreamError:
    if not isinstance(err, dict):
        return StreamError(str(err), 502)
    code = _int(err.get("code"))
    message = err.get("message") if isinstance(err.get("message"), str) else dumps(err)
    return StreamError(message, code if 400 <= code <= 599 else 502)


class _Reader:
    """GenerateContentResponse chunks (plain, Code Assist-wrapped or arrays of them) -> IR events."""

    __slots__ = ("_blocked", "_calls", "_finish", "_id_base", "_started")

    def __init__(self) -> None:
        self._started = False
        self._id_base = ""
        self._calls = 0
        self._finish: str | None = None
        self._blocked = False

    def chunk(self, obj: Any) -> list[Event]:
        if isinstance(obj, list):
            out: list[Event] = []
            for item in obj:
                out.extend(self.chunk(item))
                if out and type(out[-1]) is StreamError:
                    break
            return out
        obj = unwrap_code_assist(obj)
        if not isinstance(obj, dict):
            return [StreamError(f"upstream sent a {type(obj).__name__} instead of a response object", 502)]
        if "error" in obj:
            return [_stream_error(obj["error"])]
        out = []
        if not self._started:
            self._started = True
            rid = obj.get("responseId") if isinstance(obj.get("responseId"), str) else ""
            self._id_base = _ID_UNSAFE.sub("", rid) or uuid.uuid4().hex
            model = obj.get("modelVersion")
            out.append(MessageStart(rid or self._id_base, model if isinstance(model, str) else ""))
        candidates = obj.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if isinstance(candidate, dict):
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    self._part(part, out)
            if isinstance(candidate.get("finishReason"), str):
                self._finish = candidate["finishReason"]
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._blocked = True
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict):
            out.append(UsageUpdate(_usage(meta)))
        return out

    def _part(self, part: dict[str, Any], out: list[Event]) -> None:
        sig = part.get("thoughtSignature") if isinstance(part.get("thoughtSignature"), str) else None
        call = part.get("functionCall")
        if isinstance(call, dict):
            index = self._calls
            self._calls += 1
            call_id = call.get("id") or f"call_{self._id_base}_{index}"
            args = call.get("args")
            name = call.get("name")
            out.append(
                ToolCallStart(index, call_id, name if isinstance(name, str) else "", sig, ORIGIN if sig else None)
            )
            out.append(ToolCallArgsDelta(index, dumps(args if isinstance(args, dict) else {})))
            out.append(ToolCallEnd(index))
            return
        text = part.get("text")
        text = text if isinstance(text, str) else _code_text(part) or ""
        if part.get("thought") is True:
            if text:
                out.append(ThinkingDelta(text))
            if sig:
                out.append(ThinkingSignature(sig, ORIGIN))
            return
        if sig:
            out.append(ThinkingSignature(sig, ORIGIN))
        if text:
            out.append(TextDelta(text))

    def finish_reason(self) -> FinishReason | None:
        """None while nothing said the response ended."""
        if self._blocked and self._finish is None:
            return FinishReason.CONTENT_FILTER
        if self._finish is None:
            return None
        reason = _FINISH_IN.get(self._finish, FinishReason.STOP)
        if reason is FinishReason.STOP and self._calls:
            return FinishReason.TOOL_CALLS
        return reason


class _Decoder:
    """Upstream SSE (`data: <chunk>` events, plain or Code Assist-wrapped) -> IR events."""

    __slots__ = ("_done", "_reader", "_sse")

    def __init__(self) -> None:
        self._sse = SseParser()
        self._reader = _Reader()
        self._done = False

    def feed(self, data: bytes) -> list[Event]:
        return [] if self._done else self._events(self._sse.feed(data))

    def close(self) -> list[Event]:
        if self._done:
            return []
        out = self._events(self._sse.close())
        if not self._done:
            self._done = True
            reason = self._reader.finish_reason()
            out.append(Finish(reason) if reason else StreamError("upstream stream ended before finishing", 502))
        return out

    def _events(self, frames: list[tuple[str | None, str]]) -> list[Event]:
        out: list[Event] = []
        for _, data in frames:
            try:
                obj = json.loads(data)
            except ValueError:
                out.append(StreamError(f"upstream sent malformed JSON: {data[:200]}", 502))
            else:
                out.extend(self._reader.chunk(obj))
            if out and type(out[-1]) is StreamError:
                self._done = True
                break
        return out


# ---------------------------------------------------------------------------------------------
# IR events -> Gemini client stream


def _add_text(parts: list[dict[str, Any]], text: str, thought: bool) -> None:
    last = parts[-1] if parts else None
    if last is not None and "text" in last and "thoughtSignature" not in last and bool(last.get("thought")) == thought:
        last["text"] += text
    else:
        parts.append({"text": text, "thought": True} if thought else {"text": text})


class _Encoder:
    """IR events -> `data: <chunk>` SSE (?alt=sse) or one incrementally written JSON array."""

    __slots__ = ("_array", "_calls", "_done", "_framed", "_id", "_opts", "_upstream_id", "_usage")

    def __init__(self, opts: EncoderOptions) -> None:
        self._opts = opts
        self._array = opts.gemini_mode == "json"
        self._id = ""
        self._upstream_id = ""
        self._framed = False
        self._done = False
        self._usage = Usage()
        self._calls: dict[int, tuple[ToolCallStart, list[str]]] = {}

    def feed(self, events: list[Event]) -> bytes:
        """One chunk per feed (one upstream read), adjacent text merged into one part as Google does."""
        if self._done:
            return b""
        parts: list[dict[str, Any]] = []
        for ev in events:
            t = type(ev)
            if t is TextDelta or t is ThinkingDelta:
                if ev.text:
                    _add_text(parts, ev.text, t is ThinkingDelta)
            elif t is ThinkingSignature:
                if ev.origin == ORIGIN and ev.signature:
                    last = parts[-1] if parts else None
                    if last is not None and last.get("thought") and "thoughtSignature" not in last:
                        last["thoughtSignature"] = ev.signature
                    else:
                        parts.append({"text": "", "thoughtSignature": ev.signature})
            elif t is ToolCallStart:
                self._calls[ev.index] = (ev, [])
            elif t is ToolCallArgsDelta:
                if ev.index in self._calls:
                    self._calls[ev.index][1].append(ev.delta)
            elif t is ToolCallEnd:
                if ev.index in self._calls:
                    parts.append(self._function_call(*self._calls.pop(ev.index)))
            elif t is UsageUpdate:
                self._usage.merge(ev.usage)
            elif t is MessageStart:
                self._upstream_id = self._upstream_id or ev.id
            elif t is Finish:
                return self._end(parts, _FINISH_OUT.get(ev.reason, "STOP")).encode()
            elif t is StreamError:
                head = self._chunk(parts) if parts else ""
                self._done = True
                error = self._frame(errors.gemini_error(ev.status, ev.message))
                return (head + error + ("]" if self._array else "")).encode()
        return self._chunk(parts).encode() if parts else b""

    def close(self) -> bytes:
        return b"" if self._done else self._end([], "STOP").encode()

    def _function_call(self, start: ToolCallStart, deltas: list[str]) -> dict[str, Any]:
        raw = "".join(deltas)
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            args = {"_raw_arguments": raw}
        name = (self._opts.tool_name_map or {}).get(start.name, start.name)
        return _call_part(
            start.id, name, args if isinstance(args, dict) else {"value": args}, start.signature, start.signature_origin
        )

    def _end(self, parts: list[dict[str, Any]], finish: str) -> str:
        """The last chunk: remaining parts and unfinished calls, finishReason, usage; then `]`."""
        parts.extend(self._function_call(*self._calls.pop(i)) for i in sorted(self._calls))
        self._done = True
        return self._chunk(parts or [{"text": ""}], finish) + ("]" if self._array else "")

    def _chunk(self, parts: list[dict[str, Any]], finish: str | None = None) -> str:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if finish:
            candidate["finishReason"] = finish
            chunk["usageMetadata"] = _usage_metadata(self._usage)
        if not self._id:
            self._id = self._opts.response_id or self._upstream_id or uuid.uuid4().hex
        chunk["modelVersion"] = self._opts.model
        chunk["responseId"] = self._id
        return self._frame(chunk)

    def _frame(self, obj: dict[str, Any]) -> str:
        if not self._array:
            return f"data: {dumps(obj)}\r\n\r\n"
        sep = ",\r\n" if self._framed else "["
        self._framed = True
        return sep + dumps(obj)


# ---------------------------------------------------------------------------------------------
# The codec


class GeminiCodec:
    name = "gemini"
    stream_content_type = "text/event-stream"
    accepts_image_urls = False

    def parse_request(self, body: Any, *, model: str | None = None, stream: bool | None = None) -> Request:
        """The model and stream flag come from the URL path; the body never names them."""
        if not isinstance(body, dict):
            raise TranslationError("", "the request body must be a JSON object")
        if _get(body, "contents") is None:
            raise TranslationError("contents", "is required")
        if _get(body, "contents") == []:
            # Google answers 400 "contents is not specified"; refused here before any upstream or
            # model check, so every provider (Kiro's model list included) gets the same 400.
            raise TranslationError("contents", "must not be empty")
        req = Request(_strip_models(model or ""), _parse_contents(_get(body, "contents")), stream=bool(stream))
        extras: dict[str, Any] = {}
        for raw_key, value in body.items():
            key = _camel(raw_key)
            if key in ("contents", "model") or value is None:
                continue
            if key == "systemInstruction":
                req.system = _parse_system(value)
            elif key == "tools":
                req.tools = _parse_tools(value)
            elif key == "toolConfig":
                if not isinstance(value, dict):
                    raise TranslationError("toolConfig", "must be an object")
                req.tool_choice = _parse_tool_choice(value)
                rest = {k: v for k, v in value.items() if _camel(k) != "functionCallingConfig"}
                if rest:
                    extras["toolConfig"] = rest
            elif key == "generationConfig":
                _parse_generation(value, req, extras)
            else:  # safetySettings, cachedContent, labels, ...: only a Gemini upstream understands them
                extras[raw_key] = value
        if extras:
            req.extras["gemini"] = extras
        return req

    def render_request(self, req: Request, model: str) -> dict[str, Any]:
        """A GenerateContentRequest without `model`, as both the public API and Code Assist take it."""
        extra = dict(req.extras.get("gemini") or {})
        contents = _render_contents(req)
        if _is_gemini3(model):
            _sign_current_turn(contents)
        body: dict[str, Any] = {"contents": contents}
        if req.system:
            body["systemInstruction"] = {"parts": [{"text": t.text} for t in req.system]}
        tools = _render_tools(req.tools)
        if tools:
            body["tools"] = tools
        tool_config = extra.pop("toolConfig", None) or {}
        if req.tool_choice is not None:
            tool_config = {**tool_config, "functionCallingConfig": _render_tool_choice(req.tool_choice)}
        if tool_config:
            body["toolConfig"] = tool_config
        generation = _render_generation(req, model, extra.pop("generationConfig", None) or {})
        if generation:
            body["generationConfig"] = generation
        for key, value in extra.items():
            body.setdefault(key, value)
        return body

    def parse_response(self, body: Any) -> Response:
        """A GenerateContentResponse, its Code Assist envelope, or an array of stream chunks."""
        reader = _Reader()
        events = reader.chunk(body)
        if events and type(events[-1]) is StreamError:
            raise TranslationError("", events[-1].message, events[-1].status)
        acc = ResponseAccumulator()
        acc.feed(events)
        acc.feed([Finish(reader.finish_reason() or FinishReason.STOP)])
        return acc.response()

    def render_response(self, resp: Response, model: str) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        for part in resp.parts:
            if isinstance(part, TextPart):
                if part.text:
                    parts.append({"text": part.text})
            elif isinstance(part, ThinkingPart):
                if thought := _thought_part(part):
                    parts.append(thought)
            elif isinstance(part, ToolCallPart):
                parts.append(_call_part(part.id, part.name, part.arguments, part.signature, part.signature_origin))
            elif isinstance(part, ImagePart) and part.data is not None and part.media_type:
                parts.append({"inlineData": {"mimeType": part.media_type, "data": part.data}})
        candidate = {
            "content": {"role": "model", "parts": parts},
            "finishReason": _FINISH_OUT.get(resp.finish_reason, "STOP"),
            "index": 0,
        }
        return {
            "candidates": [candidate],
            "usageMetadata": _usage_metadata(resp.usage),
            "modelVersion": model or resp.model,
            "responseId": resp.id,
        }

    def decoder(self) -> _Decoder:
        return _Decoder()

    def encoder(self, opts: EncoderOptions) -> _Encoder:
        return _Encoder(opts)

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        return errors.gemini_error(status, message)

    def error_message(self, body: bytes) -> str:
        """Google errors come as {"error": {...}} or, from stream endpoints, [{"error": {...}}]."""
        return errors.extract_message(body)


def _parse_system(value: Any) -> list[TextPart]:
    if isinstance(value, str):
        return [TextPart(value)] if value else []
    parts = value.get("parts") if isinstance(value, dict) else None
    if not isinstance(parts, list):
        raise TranslationError("systemInstruction.parts", "must be an array of text parts")
    return [TextPart(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]


codec = GeminiCodec()
