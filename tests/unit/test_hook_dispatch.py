"""addons/hook_dispatch.py against mitmproxy's own dispatch: the same addon trees, events and
changes to the tree, run once through each; the calls, their order and the logged errors must be
the same. Real AddonManager (mitmproxy's test master), real hooks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons as mitmproxy_taddons
from mitmproxy.test import tflow

from addons import hook_dispatch

Calls = list[str]


class taddons:
    """mitmproxy's test context, minus the log handler its master leaves installed (it would
    forward later tests' errors to this test's closed event loop)."""

    class context(mitmproxy_taddons.context):
        def __exit__(self, *exc) -> bool:
            self.master._legacy_log_events.uninstall()
            return super().__exit__(*exc)


class Recorder:
    """An addon whose request/response hooks record their calls; `children` become its `addons`."""

    def __init__(self, name: str, calls: Calls, children: list[object] | None = None, mode: str = "sync") -> None:
        self.name = name
        self.calls = calls
        self.mode = mode
        if children is not None:
            self.addons = children

    def request(self, flow):
        if self.mode == "async":
            return self._later("request")
        self.calls.append(f"{self.name}.request")
        if self.mode == "raise":
            raise ValueError(f"{self.name} failed")
        if self.mode == "halt":
            raise exceptions.AddonHalt()
        return None

    async def _later(self, hook: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.{hook}")

    def response(self, flow):
        self.calls.append(f"{self.name}.response")


class OnlyResponse:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def response(self, flow):
        self.calls.append("only.response")


def _tree(calls: Calls) -> list[object]:
    inner = Recorder("inner", calls, mode="async")
    return [
        Recorder("a", calls),
        Recorder("parent", calls, children=[Recorder("child1", calls), inner, SimpleNamespace()]),
        OnlyResponse(calls),
        Recorder("z", calls),
    ]


def _error_tree(calls: Calls) -> list[object]:
    # An error skips the rest of its top-level group only; the next top-level addon still runs.
    return [
        Recorder("p", calls, children=[Recorder("boom", calls, mode="raise"), Recorder("skipped", calls)]),
        Recorder("after", calls),
    ]


def _halt_tree(calls: Calls) -> list[object]:
    return [Recorder("first", calls), Recorder("stop", calls, mode="halt"), Recorder("never", calls)]


def _change_chain(tctx, calls: Calls, tree: list[object]) -> None:
    tctx.master.addons.remove(tree[0])
    tctx.master.addons.add(Recorder("new", calls))


def _change_nested(tctx, calls: Calls, tree: list[object]) -> None:
    tree[1].addons.append(Recorder("late-child", calls))


def _replace_nested(tctx, calls: Calls, tree: list[object]) -> None:
    tree[1].addons = [Recorder("replacement", calls)]


SCENARIOS: list[tuple[str, Callable[[Calls], list[object]], Callable | None]] = [
    ("nested sync and async handlers", _tree, None),
    ("an error skips the rest of its addon", _error_tree, None),
    ("AddonHalt stops the dispatch", _halt_tree, None),
    ("an addon removed and one added", _tree, _change_chain),
    ("a nested list grows", _tree, _change_nested),
    ("a nested list is replaced", _tree, _replace_nested),
]


def _run(fast: bool, build, change, caplog) -> tuple[Calls, list[str]]:
    calls: Calls = []
    caplog.clear()

    async def scenario() -> None:
        # The test master is made inside the running loop: mitmproxy's log handler uses it.
        with taddons.context() as tctx:
            tree = build(calls)
            tctx.master.addons.add(*tree)
            flow = tflow.tflow(resp=True)
            for _ in range(2):  # the second round runs from the table
                await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
                await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))
                calls.append("|")
            if change is not None:
                change(tctx, calls, tree)
                await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
                await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))

    hook_dispatch.install(fast)
    try:
        asyncio.run(scenario())
    finally:
        hook_dispatch.install(False)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return calls, errors


@pytest.mark.parametrize(("build", "change"), [(b, c) for _, b, c in SCENARIOS], ids=[n for n, _, _ in SCENARIOS])
def test_same_calls_in_the_same_order_as_mitmproxy(build, change, caplog):
    expected = _run(False, build, change, caplog)
    assert expected[0], "the scenario calls nothing"
    assert _run(True, build, change, caplog) == expected


def test_the_table_is_used_and_the_option_restores_mitmproxy():
    calls: Calls = []
    hook_dispatch.install(True)
    try:
        assert AddonManager.trigger_event is hook_dispatch.trigger_event

        async def scenario() -> None:
            with taddons.context() as tctx:
                tctx.master.addons.add(*_tree(calls))
                await tctx.master.addons.trigger_event(HttpRequestHook(tflow.tflow(resp=True)))
                table = tctx.master.addons._hook_table
                groups = table.groups("request")
                # Only the addons with a request handler, grouped by top-level addon.
                assert [[f.__self__.name for f in g] for g in groups] == [["a"], ["parent", "child1", "inner"], ["z"]]
                assert table.groups("requestheaders") == []

        asyncio.run(scenario())
        assert calls == ["a.request", "parent.request", "child1.request", "inner.request", "z.request"]
    finally:
        hook_dispatch.install(False)
    assert AddonManager.trigger_event is hook_dispatch._MITMPROXY_TRIGGER_EVENT


def test_the_option_switches_the_dispatch():
    addon = hook_dispatch.FastHookDispatch()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, fast_hook_dispatch=True)
        assert AddonManager.trigger_event is hook_dispatch.trigger_event
        tctx.configure(addon, fast_hook_dispatch=False)
        assert AddonManager.trigger_event is hook_dispatch._MITMPROXY_TRIGGER_EVENT
        tctx.configure(addon, fast_hook_dispatch=True)
        assert AddonManager.trigger_event is hook_dispatch.trigger_event
    hook_dispatch.install(False)


def test_a_non_callable_hook_attribute_falls_back_to_mitmproxy(caplog):
    calls: Calls = []
    odd = SimpleNamespace(request="not callable")
    hook_dispatch.install(True)
    try:

        async def scenario() -> None:
            with taddons.context() as tctx:
                tctx.master.addons.add(Recorder("a", calls), odd)
                await tctx.master.addons.trigger_event(HttpRequestHook(tflow.tflow()))

        asyncio.run(scenario())
    finally:
        hook_dispatch.install(False)
    assert calls == ["a.request"]
    assert any("not callable" in r.getMessage() for r in caplog.records)
