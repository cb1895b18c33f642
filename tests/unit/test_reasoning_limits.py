"""Reasoning effort each upstream accepts: client efforts and budgets clamped to the upstream's ceiling
(its dialect's default, or providers.<id>.max_reasoning_effort)."""

from __future__ import annotations

from typing import Any

import pytest

from core.config import Provider
from providers.base import render_with_codec
from translators import get_codec, ir
from translators.thinking import clamp_effort, limit_body_effort, limit_reasoning

CLAUDE_CODE_ADAPTIVE = {
    "model": "m",
    "max_tokens": 32000,
    "messages": [{"role": "user", "content": "hi"}],
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "xhigh"},
}


@pytest.mark.parametrize(
    ("effort", "ceiling", "expected"),
    [
        ("xhigh", "high", "high"),
        ("max", "high", "high"),
        ("high", "high", "high"),
        ("minimal", "high", "minimal"),
        ("none", "high", "none"),
        ("XHIGH", "xhigh", "xhigh"),
        ("max", "xhigh", "xhigh"),
        ("ultra", "high", "high"),
        ("medium", "low", "low"),
    ],
)
def test_clamp_effort(effort: str, ceiling: str, expected: str) -> None:
    assert clamp_effort(effort, ceiling) == expected


@pytest.mark.parametrize(
    ("client", "body", "upstream", "ceiling", "expected"),
    [
        # Claude Code 2.1.141 -> openai-custom: the finding.
        ("claude", CLAUDE_CODE_ADAPTIVE, "openai_chat", None, {"reasoning_effort": "high"}),
        ("claude", CLAUDE_CODE_ADAPTIVE, "openai_responses", None, {"reasoning": {"effort": "high"}}),
        ("claude", CLAUDE_CODE_ADAPTIVE, "openai_responses", "xhigh", {"reasoning": {"effort": "xhigh"}}),
        ("claude", CLAUDE_CODE_ADAPTIVE, "openai_chat", "medium", {"reasoning_effort": "medium"}),
        (
            "claude",
            {**CLAUDE_CODE_ADAPTIVE, "thinking": {"type": "enabled", "budget_tokens": 30000}, "output_config": None},
            "openai_chat",
            None,
            {"reasoning_effort": "high"},
        ),
        (
            "openai_chat",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "xhigh"},
            "claude",
            "medium",
            {"thinking": {"type": "enabled", "budget_tokens": 8192}},
        ),
        (
            "openai_chat",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "xhigh"},
            "gemini",
            "low",
            {"generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}}},
        ),
    ],
)
def test_render_clamps_to_the_upstream(
    client: str, body: dict[str, Any], upstream: str, ceiling: str | None, expected: dict[str, Any]
) -> None:
    req = get_codec(client).parse_request({k: v for k, v in body.items() if v is not None})
    before = req.reasoning
    out = render_with_codec(upstream, req, "m", Provider(max_reasoning_effort=ceiling))
    for key, value in expected.items():
        got = out[key]
        if isinstance(value, dict):
            got = {k: v for k, v in got.items() if k in value}
            if key == "generationConfig":
                got = {"thinkingConfig": {"thinkingBudget": got["thinkingConfig"]["thinkingBudget"]}}
        assert got == value
    assert req.reasoning is before, "the IR is not edited (failover renders it again)"


def test_unchanged_request_is_the_same_object() -> None:
    req = ir.Request(model="m", messages=[], reasoning=ir.Reasoning(effort="low"))
    assert limit_reasoning(req, "openai_chat") is req
    assert limit_reasoning(ir.Request(model="m", messages=[]), "openai_chat").reasoning is None


@pytest.mark.parametrize(
    ("dialect", "body", "ceiling", "expected"),
    [
        ("openai_chat", {"reasoning_effort": "xhigh"}, None, {"reasoning_effort": "high"}),
        ("openai_chat", {"reasoning_effort": "xhigh"}, "xhigh", {"reasoning_effort": "xhigh"}),
        ("openai_chat", {"reasoning_effort": "low"}, None, {"reasoning_effort": "low"}),
        (
            "openai_responses",
            {"reasoning": {"effort": "xhigh", "summary": "auto"}},
            None,
            {"reasoning": {"effort": "high", "summary": "auto"}},
        ),
        ("claude", {"output_config": {"effort": "xhigh"}}, None, {"output_config": {"effort": "xhigh"}}),
        ("claude", {"output_config": {"effort": "max"}}, "high", {"output_config": {"effort": "high"}}),
    ],
)
def test_passthrough_body_effort(
    dialect: str, body: dict[str, Any], ceiling: str | None, expected: dict[str, Any]
) -> None:
    original = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
    assert limit_body_effort(dialect, body, ceiling) == expected
    assert body == original
