"""One table for reasoning effort <-> thinking budget, used by every codec.

Effort -> budget follows Google's OpenAI-compatibility docs (the values most peers use);
budget -> effort uses the same boundaries, so a round trip is stable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from translators import ir

EFFORT_TO_BUDGET: dict[str, int] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}

# Claude requires budget_tokens >= 1024 and < max_tokens.
CLAUDE_MIN_BUDGET = 1024


def effort_to_budget(effort: str) -> int | None:
    """None for efforts we do not know (the caller leaves thinking unset)."""
    return EFFORT_TO_BUDGET.get(effort.lower())


def budget_to_effort(budget: int) -> str:
    if budget <= 0:
        return "none"
    if budget <= 512:
        return "minimal"
    if budget <= 1024:
        return "low"
    if budget <= 8192:
        return "medium"
    if budget <= 24576:
        return "high"
    return "xhigh"


def gemini3_level(effort: str) -> str:
    """Gemini 3 takes levels, not budgets."""
    effort = effort.lower()
    if effort in ("none", "minimal", "low"):
        return "low"
    return "high"


# ---------------------------------------------------------------------------------------------
# What each upstream accepts. Clients ask for anything from "none" to "max" (Claude Code sends
# adaptive thinking with output_config.effort "xhigh"); OpenAI answers 400 "Invalid value: 'xhigh'.
# Supported values are: 'minimal', 'low', 'medium', and 'high'". A thinking request must never fail
# only because of its effort, so an effort above what the upstream takes is clamped to its ceiling.

EFFORT_ORDER: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

# The ceiling of each upstream dialect when the provider does not set `max_reasoning_effort`.
DIALECT_MAX_EFFORT: dict[str, str] = {
    "openai_chat": "high",
    "openai_responses": "high",
    "claude": "max",  # adaptive thinking takes low|medium|high|max
    "gemini": "max",  # budgets; effort_to_budget caps at 32768
    "kiro": "max",
}


def effort_ceiling(dialect: str, configured: str | None = None) -> str:
    return configured or DIALECT_MAX_EFFORT.get(dialect, "max")


def clamp_effort(effort: str, ceiling: str) -> str:
    """The effort, or the ceiling when the effort is above it. An unknown effort is read as the
    ceiling too (the client asked for thinking; its name for the level is not ours)."""
    effort = effort.lower()
    if effort not in EFFORT_ORDER:
        return ceiling
    return effort if EFFORT_ORDER.index(effort) <= EFFORT_ORDER.index(ceiling) else ceiling


def limit_reasoning(req: ir.Request, dialect: str, configured: str | None = None) -> ir.Request:
    """The request with its reasoning within what the upstream dialect takes; the same object when
    nothing changes, else a shallow copy (the IR is rendered again on failover, so never edited).

    Effort dialects (OpenAI) get a budget turned into an effort first; budget dialects (Claude
    enabled thinking, Gemini) get a budget above the ceiling's budget cut to it."""
    r = req.reasoning
    if r is None:
        return req
    ceiling = effort_ceiling(dialect, configured)
    effort, budget = r.effort, r.budget_tokens
    if effort is None and budget is not None and budget >= 0 and dialect.startswith("openai"):
        effort = budget_to_effort(budget)
        budget = None
    if effort is not None:
        effort = clamp_effort(effort, ceiling)
    cap = EFFORT_TO_BUDGET[ceiling]
    if budget is not None and configured is not None and budget > cap:
        budget = cap
    if (effort, budget) == (r.effort, r.budget_tokens):
        return req
    return dataclasses.replace(req, reasoning=ir.Reasoning(effort, budget, r.summary))


def limit_body_effort(dialect: str, body: dict[str, Any], configured: str | None = None) -> dict[str, Any]:
    """The same for a client body sent as it is to an upstream of its own dialect (passthrough):
    only the effort field is touched, in a copy; the body itself when nothing changes."""
    ceiling = effort_ceiling(dialect, configured)
    if dialect == "openai_chat":
        effort = body.get("reasoning_effort")
        if isinstance(effort, str) and (clamped := clamp_effort(effort, ceiling)) != effort:
            return {**body, "reasoning_effort": clamped}
    elif dialect == "openai_responses":
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        if isinstance(effort, str) and (clamped := clamp_effort(effort, ceiling)) != effort:
            return {**body, "reasoning": {**reasoning, "effort": clamped}}
    elif dialect == "claude" and configured is not None:
        # Anthropic takes what Claude Code sends; only a configured ceiling changes it.
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        if isinstance(effort, str) and (clamped := clamp_effort(effort, ceiling)) != effort:
            return {**body, "output_config": {**config, "effort": clamped}}
    return body
