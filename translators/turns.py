"""System messages inside the conversation, for upstreams that have no such role.

Claude Code puts `role: "system"` messages between turns, OpenAI clients send `system`/`developer`
messages mid-list and Responses clients `developer` items. The IR keeps them in place
(ir.Message role "system"); a dialect without an in-conversation system role (Gemini, Kiro, and
OpenAI-compatible chat servers whose templates want one system message first) gets each one folded,
in order, into the adjacent user turn as a clearly delimited text block -- never dropped.
"""

from __future__ import annotations

from translators import ir

SYSTEM_OPEN = "<system_message>"
SYSTEM_CLOSE = "</system_message>"


def system_block(message: ir.Message) -> ir.TextPart:
    """One system turn as a delimited text part."""
    text = "\n\n".join(p.text for p in message.parts if isinstance(p, ir.TextPart))
    return ir.TextPart(f"{SYSTEM_OPEN}\n{text}\n{SYSTEM_CLOSE}")


def has_system_turns(messages: list[ir.Message]) -> bool:
    return any(m.role == "system" for m in messages)


def fold_system_turns(messages: list[ir.Message], *, only_after_tool_calls: bool = False) -> list[ir.Message]:
    """The turns with every system turn folded into the adjacent user turn: the next one when the
    conversation goes on with the user, else the previous user turn, else a user turn of its own.
    In a user turn the blocks go after the tool results (they must come first) and before the
    user's own content. Returns the list unchanged when there is nothing to fold; never mutates.

    `only_after_tool_calls`: for upstreams that do take system turns but want tool results right
    after their calls (Claude): only a system turn following an assistant turn with tool calls is folded.
    """
    if not has_system_turns(messages):
        return messages
    out: list[ir.Message] = []
    pending: list[ir.TextPart] = []
    for msg in messages:
        if msg.role == "system":
            after_calls = bool(out) and out[-1].role == "assistant" and _has_calls(out[-1])
            if only_after_tool_calls and not after_calls and not pending:
                out.append(msg)
            else:
                pending.append(system_block(msg))
            continue
        if pending and msg.role == "user":
            out.append(_with_blocks(msg, pending))
            pending = []
            continue
        if pending:
            _append_to_previous_user(out, pending)
            pending = []
        out.append(msg)
    if pending:
        _append_to_previous_user(out, pending)
    return out


def _append_to_previous_user(out: list[ir.Message], blocks: list[ir.TextPart]) -> None:
    if out and out[-1].role == "user":
        out[-1] = _with_blocks(out[-1], blocks)
    else:
        out.append(ir.Message("user", list(blocks)))


def _with_blocks(msg: ir.Message, blocks: list[ir.TextPart]) -> ir.Message:
    """The user turn with the blocks after its tool results and before the user's own words, so the
    user's request stays the last thing the model reads (Claude Code puts its system message last)."""
    at = 0  # after the tool results and the system blocks folded in already (they keep their order)
    while at < len(msg.parts) and _leads(msg.parts[at]):
        at += 1
    return ir.Message("user", [*msg.parts[:at], *blocks, *msg.parts[at:]])


def _leads(part: ir.Part) -> bool:
    return isinstance(part, ir.ToolResultPart) or (isinstance(part, ir.TextPart) and part.text.startswith(SYSTEM_OPEN))


def _has_calls(message: ir.Message) -> bool:
    return any(isinstance(p, ir.ToolCallPart) for p in message.parts)
