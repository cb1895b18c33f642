"""Upstream providers: how the IR of a routed request becomes an HTTP request to a backend.

Each adapter knows its upstream's dialect, URL, auth headers and default models; it does no I/O.
"""

from __future__ import annotations

from providers.api_key import ClaudeCustom, Demo, OpenAICustom, OpenAIResponsesCustom
from providers.base import ProviderAdapter, UpstreamRequest, upstream_dialect
from providers.codex import Codex
from providers.gemini_cli import GeminiCli
from providers.google import GeminiCustom, VertexAI
from providers.kiro import Kiro
from providers.qwen import Qwen

ADAPTERS: dict[str, ProviderAdapter] = {a.id: a for a in (OpenAICustom(), ClaudeCustom(), OpenAIResponsesCustom())}
ADAPTERS[Qwen.id] = Qwen()
ADAPTERS[Kiro.id] = Kiro()
ADAPTERS[GeminiCli.id] = GeminiCli()
ADAPTERS[Codex.id] = Codex()
ADAPTERS[GeminiCustom.id] = GeminiCustom()
ADAPTERS[VertexAI.id] = VertexAI()
ADAPTERS[Demo.id] = Demo()

__all__ = ["ADAPTERS", "ProviderAdapter", "UpstreamRequest", "upstream_dialect"]
