"""Carrying provider signatures through clients that drop unknown fields.

Gemini binds a `thoughtSignature` to function-call parts and rejects a replayed call without it;
OpenAI-style clients keep only a tool call's id, name and arguments. So the signature rides inside
the id: `<id>__thought__<base64url(origin NUL signature)>` -- base64url without padding stays inside
Claude's tool-id pattern `^[a-zA-Z0-9_-]+$`, so the same id works for every client dialect.

Signatures placed in another dialect's own signature field (a Gemini signature in a Claude thinking
block) are tagged `<origin>:<signature>` so they are only ever replayed to the family that made them.
"""

from __future__ import annotations

import base64
import binascii

THOUGHT_SEP = "__thought__"
_TAGGED_ORIGINS = ("gemini", "openai", "kiro")


def encode_tool_call_id(call_id: str, signature: str | None, origin: str | None) -> str:
    if not signature:
        return call_id
    raw = f"{origin or ''}\x00{signature}".encode()
    return call_id + THOUGHT_SEP + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_tool_call_id(value: str) -> tuple[str, str | None, str | None]:
    """(plain id, signature, origin); an id without an encoded signature comes back unchanged."""
    call_id, sep, blob = value.partition(THOUGHT_SEP)
    if not sep or not blob:
        return value, None, None
    try:
        raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)).decode()
    except (binascii.Error, ValueError):
        return value, None, None
    origin, nul, signature = raw.partition("\x00")
    if not nul or not signature:
        return value, None, None
    return call_id, signature, origin or None


def tag_signature(signature: str, origin: str | None) -> str:
    """A signature for a foreign dialect's signature field; Claude's own pass untagged."""
    if origin and origin != "claude":
        return f"{origin}:{signature}"
    return signature


def untag_signature(value: str, default_origin: str = "claude") -> tuple[str, str]:
    head, sep, rest = value.partition(":")
    if sep and head in _TAGGED_ORIGINS and rest:
        return rest, head
    return value, default_origin
