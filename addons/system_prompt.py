"""SystemPrompt: overwrite or extend every request's system prompt from a file.

Applied on the IR, before the Upstream renders it, so every client dialect and every provider
gets the same system text. Only the system prompt is touched: the conversation's messages are
never moved into or out of it. The file is re-read when its mtime (or size) changes; a stat per
request is the only cost while it stays the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import http

from addons import replies
from addons.context import ROUTE, Gateway, Route
from core.config import SystemPromptSettings
from translators import ir

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Loaded:
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when read
    text: str


class PromptFile:
    """The configured file's text, read again only when it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded: _Loaded | None = None
        self._missing_reported = False

    def load_now(self) -> str:
        """Reads it at start; raises OSError so configure can report a missing file."""
        stamp = self._stamp()
        text = self._read()
        self._loaded = _Loaded(stamp, text)
        return text

    async def text(self) -> str | None:
        """The current text, or None when the file is gone (then nothing is changed)."""
        try:
            stamp = self._stamp()
        except OSError as e:
            if not self._missing_reported:
                logger.warning(
                    "aiclient-mitm: system_prompt.file %s is unreadable (%s); prompts left as sent",
                    self.path,
                    e.strerror or e,
                )
                self._missing_reported = True
            return None
        loaded = self._loaded
        if loaded is not None and loaded.stamp == stamp:
            return loaded.text
        try:
            text = await asyncio.to_thread(self._read)
        except OSError as e:
            logger.warning("aiclient-mitm: cannot read system_prompt.file %s: %s", self.path, e.strerror or e)
            return None
        self._loaded = _Loaded(stamp, text)
        self._missing_reported = False
        logger.info("aiclient-mitm: system prompt loaded from %s (%d characters)", self.path, len(text))
        return text

    def _stamp(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def _read(self) -> str:
        return self.path.read_text(encoding="utf-8").rstrip()


def apply_system_prompt(req: ir.Request, settings: SystemPromptSettings, file_text: str | None) -> bool:
    """Edits req.system in place; True when anything changed. Pure, for every dialect alike."""
    before = [(p.text, p.cache_control) for p in req.system]
    system = req.system
    if settings.replacements:
        system = [ir.TextPart(_replace(p.text, settings), p.cache_control) for p in system]
    if file_text is not None:
        if settings.mode == "overwrite":
            system = [ir.TextPart(file_text)] if file_text else []
        elif file_text:
            system = [*system, ir.TextPart(file_text)]
    if [(p.text, p.cache_control) for p in system] == before:
        return False
    req.system = system
    return True


def _replace(text: str, settings: SystemPromptSettings) -> str:
    for r in settings.replacements:
        text = text.replace(r.old, r.new)
    return text


class SystemPrompt:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = SystemPromptSettings()
        self.file: PromptFile | None = None

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        self.settings = self.gateway.config.system_prompt
        self.file = None
        if self.settings.file is None:
            return
        path = self.settings.file.expanduser()
        if not path.is_absolute():
            path = self.gateway.config_path.parent / path
        prompt_file = PromptFile(path)
        try:
            text = prompt_file.load_now()
        except OSError as e:
            # A logged error at start makes mitmproxy stop (errorcheck): the user meant a file.
            logger.error("aiclient-mitm: system_prompt.file %s cannot be read: %s", path, e.strerror or e)
            return
        self.file = prompt_file
        logger.info("aiclient-mitm: system prompt (%s) from %s, %d characters", self.settings.mode, path, len(text))

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or (self.file is None and not self.settings.replacements):
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation not in ("generate", "count_tokens") or route.request is None:
            return
        try:
            text = await self.file.text() if self.file is not None else None
            if apply_system_prompt(route.request, self.settings, text):
                route.ir_modified = True
        except Exception:
            flow.response = replies.internal_error(route.dialect, "applying the system prompt")
