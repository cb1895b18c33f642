"""Which conversation a request belongs to: the client's own session key where it sends one, else a
digest of the first messages that is the same on every turn and differs across conversations."""

from __future__ import annotations

import json

import pytest

from addons.affinity import session_key

FIRST = {"role": "user", "content": "refactor the parser"}
TURN2 = [FIRST, {"role": "assistant", "content": "done"}, {"role": "user", "content": "now the tests"}]
CC_USER = "user_5f1e_account_4a2b_session_0199c3e8-7d1a-7bd2-a0f4-2a41c8a9f0e1"


@pytest.mark.parametrize(
    ("dialect", "body", "headers", "expected"),
    [
        (
            "claude",
            {"metadata": {"user_id": CC_USER}, "messages": [FIRST]},
            {},
            "c:0199c3e8-7d1a-7bd2-a0f4-2a41c8a9f0e1",
        ),
        (
            "claude",
            {"metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s-42"})}, "messages": [FIRST]},
            {},
            "c:s-42",
        ),
        ("openai_responses", {"prompt_cache_key": "pck-1", "input": "hi"}, {}, "r:pck-1"),
        ("openai_responses", {"input": "hi"}, {"session_id": "codex-9"}, "r:codex-9"),
        ("openai_chat", {"messages": [FIRST]}, {"x-session-id": "mine"}, "h:mine"),
        ("gemini", {"contents": []}, {}, None),
        ("openai_chat", {"messages": []}, {}, None),
        ("openai_chat", None, {}, None),
    ],
)
def test_the_clients_own_session_key_wins(dialect, body, headers, expected):
    assert session_key(dialect, body, headers) == expected


@pytest.mark.parametrize(
    ("dialect", "turn1", "turn2", "other"),
    [
        (
            "openai_chat",
            {"messages": [{"role": "system", "content": "be brief"}, FIRST]},
            {"messages": [{"role": "system", "content": "be brief"}, *TURN2]},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "other task"}]},
        ),
        (
            "claude",
            {"system": "s", "messages": [FIRST]},
            {"system": "s", "messages": TURN2},
            {"system": "another system", "messages": [FIRST]},
        ),
        (
            "openai_responses",
            {"instructions": "i", "input": [FIRST]},
            {"instructions": "i", "input": TURN2},
            {"instructions": "i", "input": [{"role": "user", "content": "x"}]},
        ),
        (
            "gemini",
            {"contents": [{"role": "user", "parts": [{"text": "a"}]}]},
            {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "b"}]}]},
            {"contents": [{"role": "user", "parts": [{"text": "c"}]}]},
        ),
    ],
)
def test_the_digest_is_the_same_on_every_turn_and_differs_across_conversations(dialect, turn1, turn2, other):
    first = session_key(dialect, turn1, {})
    assert first is not None and first.startswith("d:")
    assert session_key(dialect, turn2, {}) == first
    assert session_key(dialect, other, {}) != first


def test_a_long_system_prompt_is_told_apart_by_its_length_and_prefix():
    a = {"messages": [{"role": "system", "content": "x" * 50_000}, FIRST]}
    b = {"messages": [{"role": "system", "content": "x" * 50_001}, FIRST]}
    assert session_key("openai_chat", a, {}) != session_key("openai_chat", b, {})
