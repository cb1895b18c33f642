"""Session affinity: which conversation a request belongs to, so its turns stay on one account.

Upstream prompt caches are per account: Claude Code and Codex resend long prefixes on every
turn, and a turn served by another account pays for the whole prefix again. The session key is
the client's own when it sends one, else a digest of the conversation's first messages (the same
on every turn of a conversation, different across conversations).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Characters of each string of the first messages that are hashed (with the string's length).
TEXT_PREFIX = 4096


def session_key(dialect: str, body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str | None:
    """The conversation's key, or None when the request carries nothing to tell it by."""
    explicit = headers.get("x-session-id")
    if explicit:
        return "h:" + explicit[:200]
    if not isinstance(body, Mapping):
        return None
    if dialect == "claude":
        found = _claude_session(body.get("metadata"))
        if found:
            return "c:" + found
    if dialect == "openai_responses":
        found = body.get("prompt_cache_key") or headers.get("session_id")
        if isinstance(found, str) and found:
            return "r:" + found[:200]
    head = _first_messages(dialect, body)
    if not head:
        return None
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, head)
    return "d:" + digest.hexdigest()


def _feed(digest: hashlib.blake2b, value: Any) -> None:
    """Hashes a JSON value's structure, each string by its first TEXT_PREFIX characters and its length
    (a long system prompt costs no more than its prefix; no serialisation of the whole)."""
    if isinstance(value, str):
        digest.update(b"s%d:" % len(value))
        digest.update(value[:TEXT_PREFIX].encode("utf-8", "surrogatepass"))
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for k in sorted(value):
            digest.update(str(k).encode("utf-8", "surrogatepass") + b"=")
            _feed(digest, value[k])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def _claude_session(metadata: Any) -> str | None:
    """Claude Code's `metadata.user_id`: `user_<hash>_account_<uuid>_session_<uuid>`, or (newer
    versions) a JSON object with `session_id`."""
    if not isinstance(metadata, Mapping):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
            return parsed["session_id"][:200]
    _, sep, session = user_id.rpartition("_session_")
    return session[:200] if sep and session else None


def _first_messages(dialect: str, body: Mapping[str, Any]) -> list[Any]:
    """What every turn of a conversation starts with: the system text and the first user message."""
    if dialect == "claude":
        messages = body.get("messages")
        first = messages[:1] if isinstance(messages, list) else []
        return [body.get("system"), *first] if first else []
    if dialect == "openai_responses":
        items = body.get("input")
        first = items[:1] if isinstance(items, list) else ([items] if items else [])
        return [body.get("instructions"), *first] if first else []
    if dialect == "gemini":
        contents = body.get("contents") or (body.get("request") or {}).get("contents")
        first = contents[:1] if isinstance(contents, list) else []
        return [body.get("systemInstruction") or body.get("system_instruction"), *first] if first else []
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    head: list[Any] = []
    for message in messages:  # system/developer messages, then the first other message
        head.append(message)
        if not (isinstance(message, Mapping) and message.get("role") in ("system", "developer")):
            break
    return head
