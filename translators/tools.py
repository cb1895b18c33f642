"""Which of a request's tools an upstream dialect cannot take.

Function and freeform tools go everywhere; a provider's built-in tool (Responses `web_search`,
`code_interpreter`, Claude `web_search_20250305`, Gemini `googleSearch`, ...) only runs on an
upstream of its own kind, and each codec leaves the others out of its body. The gateway says so
(response header, flow comment) instead of dropping them silently.
"""

from __future__ import annotations

from translators import claude, ir, openai_responses


def dropped_tools(tools: list[ir.Tool], dialect: str) -> list[str]:
    """Names of the tools the codec of `dialect` leaves out, in request order."""
    out: list[str] = []
    for tool in tools:
        if tool.kind in ("function", "custom"):
            continue
        if dialect == "claude" and claude.render_tool(tool) is not None:
            continue
        if dialect == "openai_responses" and openai_responses.render_tool(tool) is not None:
            continue
        if dialect == "gemini" and tool.raw is not None and list(tool.raw) == [tool.kind]:
            continue
        out.append(tool.name or tool.kind)
    return out
