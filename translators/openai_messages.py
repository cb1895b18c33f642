"""IR request + answer -> one conversation in OpenAI chat format, for prompt logs and datasets.

Why a separate converter and not the openai_chat codec: the codec renders what an upstream
accepts (it drops signed thinking, adds stream options, keeps cache markers); a dataset record
wants the conversation as the model saw it and answered it, in the plain shape fine-tuning
tools read: system first, tool results as `tool` messages, the answer last with its text,
`tool_calls` and reasoning text.
"""

from __future__ import annotations

import json
from typing import Any

from translators import ir

ContentOut = str | list[dict[str, Any]] | None


def conversation(req: ir.Request, answer: ir.Response | None) -> list[dict[str, Any]]:
    """The whole exchange; the answer (when there is one) is the last message."""
    messages = request_messages(req)
    if answer is not None:
        messages.append(assistant_message(answer.parts))
    return messages


def request_messages(req: ir.Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = "\n\n".join(p.text for p in req.system)
    if system:
        out.append({"role": "system", "content": system})
    for msg in req.messages:
        if msg.role == "user":
            out.extend(_user_messages(msg.parts))
        else:
            out.append(assistant_message(msg.parts))
    return out


def assistant_message(parts: list[ir.Part]) -> dict[str, Any]:
    texts = [p.text for p in parts if isinstance(p, ir.TextPart)]
    calls = [p for p in parts if isinstance(p, ir.ToolCallPart)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    reasoning = "".join(p.text for p in parts if isinstance(p, ir.ThinkingPart) and p.redacted is None)
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_text(c.arguments)}}
            for c in calls
        ]
    return message


def tool_definitions(req: ir.Request) -> list[dict[str, Any]]:
    """Function (and freeform custom) tools as OpenAI function tools; provider built-ins as they came."""
    out: list[dict[str, Any]] = []
    for tool in req.tools:
        if tool.kind in ("function", "custom"):
            fn: dict[str, Any] = {"name": tool.name}
            if tool.description:
                fn["description"] = tool.description
            fn["parameters"] = tool.parameters
            out.append({"type": "function", "function": fn})
        else:
            out.append(dict(tool.raw) if tool.raw else {"type": tool.kind, "name": tool.name})
    return out


def arguments_text(arguments: dict[str, Any]) -> str:
    """Arguments as the JSON string OpenAI carries; undecodable upstream text stays as it came."""
    raw = arguments.get("_raw_arguments")
    if isinstance(raw, str) and len(arguments) == 1:
        return raw
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _user_messages(parts: list[ir.Part]) -> list[dict[str, Any]]:
    """Tool results become `tool` messages first (they answer the previous calls); images inside
    results, which a `tool` message cannot hold, move into the user message that follows."""
    out: list[dict[str, Any]] = []
    content: list[ir.TextPart | ir.ImagePart] = []
    for part in parts:
        if isinstance(part, ir.ToolResultPart):
            texts = [p for p in part.content if isinstance(p, ir.TextPart)]
            content.extend(p for p in part.content if isinstance(p, ir.ImagePart))
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": _content(texts)})
        elif isinstance(part, (ir.TextPart, ir.ImagePart)):
            content.append(part)
    if content or not out:
        out.append({"role": "user", "content": _content(content)})
    return out


def _content(parts: list[ir.TextPart] | list[ir.TextPart | ir.ImagePart]) -> ContentOut:
    """A lone text part (or nothing) as a string, as most clients send it; anything else as parts."""
    if not parts:
        return ""
    if len(parts) == 1 and isinstance(parts[0], ir.TextPart):
        return parts[0].text
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ir.TextPart):
            out.append({"type": "text", "text": p.text})
        else:
            image: dict[str, Any] = {"url": image_url(p)}
            if p.detail is not None:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
    return out


def image_url(part: ir.ImagePart) -> str:
    if part.url is not None:
        return part.url
    return f"data:{part.media_type or 'application/octet-stream'};base64,{part.data or ''}"
