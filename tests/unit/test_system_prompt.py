"""SystemPrompt: overwrite/append on the IR, replacements, file reloads, and what it never does."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from addons.context import ROUTE, Gateway, Route
from addons.system_prompt import PromptFile, SystemPrompt, apply_system_prompt
from core.config import SystemPromptSettings, parse_config
from translators import get_codec, ir

USER_TEXT = "please summarise my secret notes"


def request(system: list[ir.TextPart] | None = None) -> ir.Request:
    return ir.Request(
        model="m",
        messages=[ir.Message("user", [ir.TextPart(USER_TEXT)])],
        system=list(system or []),
    )


def settings(**kw) -> SystemPromptSettings:
    return SystemPromptSettings(**kw)


def test_overwrite_replaces_the_clients_system():
    req = request([ir.TextPart("client rules", {"type": "ephemeral"}), ir.TextPart("more")])
    assert apply_system_prompt(req, settings(mode="overwrite"), "file rules")
    assert [(p.text, p.cache_control) for p in req.system] == [("file rules", None)]


def test_append_keeps_the_clients_parts_and_adds_the_file():
    req = request([ir.TextPart("client rules", {"type": "ephemeral"})])
    assert apply_system_prompt(req, settings(mode="append"), "file rules")
    assert [(p.text, p.cache_control) for p in req.system] == [
        ("client rules", {"type": "ephemeral"}),
        ("file rules", None),
    ]


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_no_client_system_never_takes_the_users_message(mode):
    req = request()
    assert apply_system_prompt(req, settings(mode=mode), "file rules")
    assert [p.text for p in req.system] == ["file rules"]
    assert req.messages == [ir.Message("user", [ir.TextPart(USER_TEXT)])]


def test_replacements_apply_in_order_to_the_clients_text():
    s = settings(mode="append", replacements=[{"old": "Claude", "new": "Bot"}, {"old": "Bot Code", "new": "Agent"}])
    req = request([ir.TextPart("You are Claude Code. Claude is careful.")])
    assert apply_system_prompt(req, s, "extra")
    assert [p.text for p in req.system] == ["You are Agent. Bot is careful.", "extra"]


def test_replacements_alone_work_without_a_file():
    req = request([ir.TextPart("You are Claude.")])
    assert apply_system_prompt(req, settings(replacements=[{"old": "Claude", "new": "Bot"}]), None)
    assert [p.text for p in req.system] == ["You are Bot."]


def test_nothing_changed_reports_false_so_passthrough_stays_on():
    req = request([ir.TextPart("same")])
    assert not apply_system_prompt(req, settings(mode="overwrite"), "same")
    assert not apply_system_prompt(req, settings(replacements=[{"old": "absent", "new": "x"}]), None)
    assert not apply_system_prompt(req, settings(mode="append"), "")
    assert [p.text for p in req.system] == ["same"]


def test_empty_file_in_overwrite_mode_removes_the_system_prompt():
    req = request([ir.TextPart("client rules")])
    assert apply_system_prompt(req, settings(mode="overwrite"), "")
    assert req.system == []


def test_prompt_file_rereads_only_when_mtime_or_size_changes(tmp_path: Path):
    path = tmp_path / "system.txt"
    path.write_text("first\n", encoding="utf-8")
    pf = PromptFile(path)
    assert pf.load_now() == "first"
    stat = path.stat()
    # Same size and mtime: the file is not read again (the stat is the only cost).
    path.write_text("FIRST\n", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert asyncio.run(pf.text()) == "first"
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert asyncio.run(pf.text()) == "FIRST"
    path.write_text("second version\n", encoding="utf-8")
    assert asyncio.run(pf.text()) == "second version"


def test_prompt_file_gone_at_request_time_changes_nothing(tmp_path: Path, caplog):
    path = tmp_path / "system.txt"
    path.write_text("rules", encoding="utf-8")
    pf = PromptFile(path)
    pf.load_now()
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(pf.text()) is None
        assert asyncio.run(pf.text()) is None
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1  # reported once
    path.write_text("back", encoding="utf-8")
    assert asyncio.run(pf.text()) == "back"


def _addon(tmp_path: Path, system_prompt: dict) -> SystemPrompt:
    config_path = tmp_path / "config.yaml"
    gateway = Gateway(parse_config({"system_prompt": system_prompt}), config_path)
    addon = SystemPrompt(gateway)
    addon.configure({"config"})
    return addon


def test_missing_file_at_start_is_a_clear_error(tmp_path: Path, caplog):
    with caplog.at_level(logging.ERROR):
        addon = _addon(tmp_path, {"file": "missing.txt"})
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "system_prompt.file" in errors[0] and str(tmp_path / "missing.txt") in errors[0]
    assert addon.file is None


@pytest.mark.parametrize(
    ("dialect", "body"),
    [
        (
            "openai_chat",
            {"model": "m", "messages": [{"role": "system", "content": "c"}, {"role": "user", "content": "u"}]},
        ),
        ("openai_responses", {"model": "m", "instructions": "c", "input": "u"}),
        ("claude", {"model": "m", "max_tokens": 5, "system": "c", "messages": [{"role": "user", "content": "u"}]}),
        ("gemini", {"systemInstruction": {"parts": [{"text": "c"}]}, "contents": [{"parts": [{"text": "u"}]}]}),
    ],
)
def test_request_hook_edits_the_ir_of_every_dialect_and_turns_passthrough_off(tmp_path: Path, dialect, body):
    (tmp_path / "sys.txt").write_text("house rules\n", encoding="utf-8")
    addon = _addon(tmp_path, {"file": "sys.txt", "mode": "append"})
    req = get_codec(dialect).parse_request(body, model="m" if dialect == "gemini" else None)
    flow = tflow.tflow()
    route = Route(dialect, "generate", provider="openai-custom", model="m", request=req, body=body)
    flow.metadata[ROUTE] = route
    asyncio.run(addon.request(flow))
    assert [p.text for p in req.system] == ["c", "house rules"]
    assert route.ir_modified
    assert flow.response is None


def test_request_hook_applies_to_generate_and_count_tokens_only(tmp_path: Path):
    """count_tokens counts what the upstream will get, so it sees the same system prompt."""
    (tmp_path / "sys.txt").write_text("house rules", encoding="utf-8")
    addon = _addon(tmp_path, {"file": "sys.txt"})
    for operation, expected in (("count_tokens", ["house rules"]), ("models", ["c"])):
        req = request([ir.TextPart("c")])
        flow = tflow.tflow()
        flow.metadata[ROUTE] = Route("claude", operation, request=req)
        asyncio.run(addon.request(flow))
        assert [p.text for p in req.system] == expected
