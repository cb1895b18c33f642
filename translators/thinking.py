"""One table for reasoning effort <-> thinking budget, used by every codec.

Effort -> budget follows Google's OpenAI-compatibility docs (the values most peers use);
budget -> effort uses the same boundaries, so a round trip is stable.
"""

from __future__ import annotations

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
