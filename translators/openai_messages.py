"""IR request + answer -> one conversation in OpenAI chat format, for prompt logs and datasets.

Why not the openai_chat codec's render_request: it renders what an upstream accepts (it drops
signed thinking, adds stream options, keeps cache markers); a dataset record
wants the conversation as the model saw it and answered it, in the plain shape fine-tuning
tools read: system first, tool results as `tool` messages, the answer last with its text,
`tool_calls` and reasoning text.
"""

from __future__ import annotations

import json
from typing import Any

from translators import ir
from translators.openai_chat import render_user


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
            out.extend(render_user(msg, cache=False))
        elif msg.role == "system":  # a system message inside the conversation, where it was
            out.append(
                {"role": "system", "content": "\n\n".join(p.text for p in msg.parts if isinstance(p, ir.TextPart))}
            )
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
