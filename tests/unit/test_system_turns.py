"""System messages inside the conversation: kept in place in the IR, in place for upstreams that
take them (Claude, Responses), folded into the adjacent user turn for those that don't (OpenAI Chat
servers, Gemini, Kiro). Golden vectors in tests/vectors/cross/system_turns.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from translators import get_codec, ir
from translators.kiro import render_request as kiro_render
from translators.turns import SYSTEM_CLOSE, SYSTEM_OPEN, fold_system_turns

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "cross" / "system_turns.json").read_text())
BODY_KEY = {"claude": "messages", "openai_chat": "messages", "openai_responses": "input", "gemini": "contents"}


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
@pytest.mark.parametrize("upstream", list(BODY_KEY))
def test_system_turns_vector(case: dict[str, Any], upstream: str) -> None:
    client = copy.deepcopy(case["client"])
    req = get_codec(case["dialect"]).parse_request(client)
    assert [m.role for m in req.messages] == case["ir_roles"]
    before = copy.deepcopy(req)
    body = get_codec(upstream).render_request(req, "m")
    assert body[BODY_KEY[upstream]] == case["upstream"][upstream]
    assert req == before, "rendering must not change the IR (failover renders it again)"


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_kiro_gets_system_turns_as_user_text(case: dict[str, Any]) -> None:
    req = get_codec(case["dialect"]).parse_request(copy.deepcopy(case["client"]))
    body = json.dumps(kiro_render(req, "claude-sonnet-4.5", profile_arn=None, conversation_id="c").body)
    system_texts = [p.text for m in req.messages if m.role == "system" for p in m.parts]
    for text in system_texts:
        assert json.dumps(f"{SYSTEM_OPEN}\n{text}\n{SYSTEM_CLOSE}")[1:-1] in body


def test_claude_system_message_with_blocks_and_bad_blocks() -> None:
    codec = get_codec("claude")
    body = {
        "model": "m",
        "max_tokens": 8,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]},
        ],
    }
    req = codec.parse_request(body)
    assert req.messages[1] == ir.Message("system", [ir.TextPart("a", {"type": "ephemeral"})])
    body["messages"][1]["content"] = [{"type": "image", "source": {}}]
    with pytest.raises(ValueError, match=r"messages\[1\]\.content\[0\]\.type"):
        codec.parse_request(body)


_texts = st.text(alphabet="abc ", min_size=1, max_size=5)
_turn = st.one_of(
    st.builds(lambda t: ir.Message("user", [ir.TextPart(t)]), _texts),
    st.builds(lambda t: ir.Message("assistant", [ir.TextPart(t)]), _texts),
    st.builds(lambda t: ir.Message("system", [ir.TextPart(t)]), _texts),
    st.builds(
        lambda t: ir.Message("user", [ir.ToolResultPart("c", [ir.TextPart(t)])]),
        _texts,
    ),
)


@given(st.lists(_turn, max_size=8))
def test_fold_keeps_every_system_text_in_order_and_leaves_no_system_turn(messages: list[ir.Message]) -> None:
    original = copy.deepcopy(messages)
    folded = fold_system_turns(messages)
    assert messages == original
    assert all(m.role != "system" for m in folded)
    wanted = [f"{SYSTEM_OPEN}\n{p.text}\n{SYSTEM_CLOSE}" for m in messages if m.role == "system" for p in m.parts]
    got = [p.text for m in folded for p in m.parts if isinstance(p, ir.TextPart) and p.text.startswith(SYSTEM_OPEN)]
    assert got == wanted
    for m in folded:  # tool results stay first in their turn
        kinds = [isinstance(p, ir.ToolResultPart) for p in m.parts]
        assert kinds == sorted(kinds, reverse=True)
    # nothing else lost or reordered
    others = [p for m in messages if m.role != "system" for p in m.parts]
    assert [
        p for m in folded for p in m.parts if not (isinstance(p, ir.TextPart) and p.text.startswith(SYSTEM_OPEN))
    ] == others
