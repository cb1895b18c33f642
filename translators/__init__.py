"""Pure protocol code: the IR and one codec per dialect. No I/O, no mitmproxy."""

from __future__ import annotations

import importlib

from translators.base import Codec

DIALECTS = ("openai_chat", "openai_responses", "claude", "gemini")

_cache: dict[str, Codec] = {}


def get_codec(name: str) -> Codec:
    """The codec object of a dialect module (`translators.<name>.codec`)."""
    codec = _cache.get(name)
    if codec is None:
        codec = importlib.import_module(f"translators.{name}").codec
        _cache[name] = codec
    return codec
