"""Kiro wire helpers for tests and the fake Kiro server: frames, hostile write splits, and the
upstream's request rules as a validator (upstreams.md 2.5, 2.8, 2.14)."""

from __future__ import annotations

import itertools
import json
import random
import re
import struct
from collections.abc import Iterable
from typing import Any

from translators.eventstream import encode_message

# The exact 400 body Kiro sends when a rule of upstreams.md 2.5 is broken.
IMPROPERLY_FORMED = {"message": "Improperly formed request.", "reason": None}
MAX_BODY_BYTES = 1_300_000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_FORMATS = {"png", "jpeg", "gif", "webp"}


def _json(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_frame(event_type: str, payload: Any) -> bytes:
    """A `:message-type event` frame with the three string headers Kiro sends."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, _json(payload))


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, _json({"message": message}))


def error_frame(code: str, message: str) -> bytes:
    return encode_message({":error-code": code, ":error-message": message, ":message-type": "error"}, b"")


def tricky_cuts(data: bytes) -> list[int]:
    """Offsets that split a frame mid-prelude, mid-headers, mid-payload and inside every
    multi-byte UTF-8 character of the payloads (walks the frames by their preludes)."""
    cuts: list[int] = []
    off = 0
    while off + 12 <= len(data):
        total, hlen = struct.unpack_from("!II", data, off)
        cuts += [off + 3, off + 9, off + 12 + hlen // 2, off + 12 + hlen + 1, off + total - 2]
        for i in range(off + 12 + hlen, off + total - 4):
            if data[i] & 0xC0 == 0x80:  # continuation byte: cutting before it splits a character
                cuts.append(i)
        off += total
    return sorted(c for c in set(cuts) if 0 < c < len(data))


def split_writes(data: bytes, rng: random.Random, *, max_size: int = 48, cut_at: Iterable[int] = ()) -> list[bytes]:
    """`data` as random-sized writes (1..max_size bytes), also cut at every offset in cut_at."""
    cuts = set(cut_at)
    pos = 0
    while pos < len(data):
        pos += rng.randint(1, max_size)
        cuts.add(pos)
    edges = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def realistic_transcript() -> list[bytes]:
    """One answer as Kiro streams it when thinking was requested: a <thinking> span split across
    events, text with multi-byte characters, a fragmented toolUseEvent repeated after its stop, a
    text-form call whose JSON holds "]" and an escaped quote (split across events), the same call
    again with a trailing comma, repeated identical text frames, and the usage/metering events."""
    ev = event_frame
    return [
        ev("assistantResponseEvent", {"content": "<think"}),
        ev("assistantResponseEvent", {"content": "ing>\nLet me check the file"}),
        ev("assistantResponseEvent", {"content": " — naïve 你好</thin"}),
        ev("assistantResponseEvent", {"content": "king>\n\nI'll read it."}),
        ev("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Read", "input": '{"file_'}),
        ev("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Read", "input": 'path": "/tmp/ä.txt"}'}),
        ev("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Read", "stop": True}),
        ev("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Read", "input": {"file_path": "x"}, "stop": True}),
        ev("assistantResponseEvent", {"content": 'Also [Called Grep with args: {"pattern": "a]'}),
        ev("assistantResponseEvent", {"content": 'b\\"c", "path": "src"}] done.'}),
        ev("assistantResponseEvent", {"content": ' [Called Grep with args: {"path": "src", "pattern": "a]b\\"c",}]'}),
        ev("assistantResponseEvent", {"content": " ok"}),
        ev("assistantResponseEvent", {"content": " ok"}),
        ev("contextUsageEvent", {"contextUsagePercentage": 12.5}),
        ev("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": 0.0123}),
        ev(
            "metadataEvent",
            {
                "tokenUsage": {
                    "uncachedInputTokens": 100,
                    "cacheReadInputTokens": 20,
                    "cacheWriteInputTokens": 5,
                    "outputTokens": 42,
                    "totalTokens": 167,
                }
            },
        ),
        ev("messageStopEvent", {}),
    ]


# ---------------------------------------------------------------------------------------------
# The upstream's request rules


def _content_ok(msg: dict[str, Any], where: str) -> str | None:
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        return f"{where}: empty content"
    return None


def _user_ok(msg: Any, where: str) -> str | None:
    if not isinstance(msg, dict):
        return f"{where}: userInputMessage is not an object"
    if err := _content_ok(msg, where):
        return err
    if not isinstance(msg.get("modelId"), str) or not msg["modelId"]:
        return f"{where}: missing modelId"
    if msg.get("origin") not in ("AI_EDITOR", "CLI", "KIRO_CLI"):
        return f"{where}: bad origin {msg.get('origin')!r}"
    images = msg.get("images")
    if images is not None:
        if not isinstance(images, list) or not images:
            return f"{where}: images must be a non-empty list when present"
        for img in images:
            if not isinstance(img, dict) or img.get("format") not in _FORMATS:
                return f"{where}: bad image format"
            if not isinstance(img.get("source"), dict) or not img["source"].get("bytes"):
                return f"{where}: image without bytes"
    ctx = msg.get("userInputMessageContext")
    if ctx is not None:
        if not isinstance(ctx, dict) or not ctx:
            return f"{where}: empty userInputMessageContext"
        for key in ("tools", "toolResults"):
            if key in ctx and (not isinstance(ctx[key], list) or not ctx[key]):
                return f"{where}: {key} must be a non-empty list when present"
    return None


def _results(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return (msg.get("userInputMessageContext") or {}).get("toolResults") or []


def validate_kiro_request(body: Any) -> str | None:
    """None when Kiro would accept the body, else why it answers "Improperly formed request"."""
    if not isinstance(body, dict) or not isinstance(body.get("conversationState"), dict):
        return "missing conversationState"
    if len(json.dumps(body, ensure_ascii=False).encode("utf-8")) > MAX_BODY_BYTES:
        return "body too large"
    if "profileArn" in body and (not isinstance(body["profileArn"], str) or not body["profileArn"]):
        return "profileArn must be a non-empty string when present"
    state = body["conversationState"]
    if state.get("chatTriggerType") not in ("MANUAL", "AUTO"):
        return "bad chatTriggerType"
    if not isinstance(state.get("conversationId"), str) or not state["conversationId"]:
        return "missing conversationId"
    current = (state.get("currentMessage") or {}).get("userInputMessage")
    if err := _user_ok(current, "currentMessage"):
        return err
    history = state.get("history", [])
    if not isinstance(history, list):
        return "history is not a list"
    entries: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or len(entry) != 1:
            return f"history[{i}]: needs exactly one of userInputMessage / assistantResponseMessage"
        ((kind, msg),) = entry.items()
        expected = "userInputMessage" if i % 2 == 0 else "assistantResponseMessage"
        if kind != expected:
            return f"history[{i}]: {kind} breaks user/assistant alternation"
        if kind == "userInputMessage":
            if err := _user_ok(msg, f"history[{i}]"):
                return err
            if "tools" in (msg.get("userInputMessageContext") or {}):
                return f"history[{i}]: tools belong in currentMessage only"
        else:
            if not isinstance(msg, dict):
                return f"history[{i}]: assistantResponseMessage is not an object"
            if err := _content_ok(msg, f"history[{i}]"):
                return err
            if "images" in msg:
                return f"history[{i}]: images on an assistant message"
        entries.append((kind, msg))
    if entries and entries[-1][0] != "assistantResponseMessage":
        return "history must end with an assistant entry"
    entries.append(("userInputMessage", current))

    # Tool uses and results pair up turn by turn; ids are unique.
    seen_uses: set[str] = set()
    used_names: set[str] = set()
    open_ids: list[str] = []
    for i, (kind, msg) in enumerate(entries):
        where = "currentMessage" if i == len(entries) - 1 else f"history[{i}]"
        if kind == "assistantResponseMessage":
            open_ids = []
            uses = msg.get("toolUses")
            if uses is None:
                continue
            if not isinstance(uses, list) or not uses:
                return f"{where}: toolUses must be a non-empty list when present"
            for use in uses:
                if not isinstance(use, dict) or not isinstance(use.get("toolUseId"), str) or not use["toolUseId"]:
                    return f"{where}: toolUse without toolUseId"
                if use["toolUseId"] in seen_uses:
                    return f"{where}: duplicate toolUseId {use['toolUseId']}"
                if not isinstance(use.get("name"), str) or not _NAME.match(use["name"]):
                    return f"{where}: bad toolUse name {use.get('name')!r}"
                if not isinstance(use.get("input"), dict):
                    return f"{where}: toolUse input must be an object"
                seen_uses.add(use["toolUseId"])
                used_names.add(use["name"])
                open_ids.append(use["toolUseId"])
            continue
        answered: list[str] = []
        for res in _results(msg):
            rid = res.get("toolUseId") if isinstance(res, dict) else None
            if rid in answered:
                return f"{where}: duplicate toolResult for {rid}"
            if rid not in open_ids:
                return f"{where}: toolResult {rid} answers no toolUse of the previous assistant entry"
            if res.get("status") not in ("success", "error"):
                return f"{where}: bad toolResult status {res.get('status')!r}"
            content = res.get("content")
            if not isinstance(content, list) or not content:
                return f"{where}: toolResult {rid} without content"
            for block in content:
                if not isinstance(block, dict) or not (
                    (isinstance(block.get("text"), str) and block["text"].strip()) or "json" in block
                ):
                    return f"{where}: toolResult {rid} with empty content"
            answered.append(rid)
        if missing := [u for u in open_ids if u not in answered]:
            return f"{where}: toolUse {missing[0]} has no toolResult in the next user entry"
        open_ids = []

    tools = (current.get("userInputMessageContext") or {}).get("tools") or []
    names: set[str] = set()
    for tool in tools:
        spec = tool.get("toolSpecification") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or set(tool) != {"toolSpecification"}:
            return "tool without toolSpecification (or with extra keys such as cachePoint)"
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            return f"bad tool name {name!r}"
        if name in names:
            return f"duplicate tool {name}"
        if name.lower() in ("web_search", "websearch"):
            return f"tool {name} is not allowed"
        desc = spec.get("description")
        if not isinstance(desc, str) or not desc.strip():
            return f"tool {name}: empty description"
        if len(desc.encode("utf-8")) > 10240:
            return f"tool {name}: description over 10240 bytes"
        schema = (spec.get("inputSchema") or {}).get("json")
        if not isinstance(schema, dict):
            return f"tool {name}: inputSchema.json must be an object"
        names.add(name)
    if missing_tools := sorted(used_names - names):
        return f"TOOL_CONFIG_MISSING: history uses {missing_tools[0]} but no tool spec declares it"
    return None
