"""Lean removes mitmproxy built-ins that are inert at their option defaults, and only those."""

from __future__ import annotations

import asyncio

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from addons.lean import Lean


def names_after_running(**opts) -> set[str]:
    async def main() -> set[str]:
        master = DumpMaster(options.Options(), with_termlog=False)
        lean = Lean()
        master.addons.add(lean)
        master.options.update(**opts)
        lean.running()
        return {type(a).__module__ for a in master.addons.chain}

    return asyncio.run(main())


def test_inert_built_ins_go_and_what_the_gateway_needs_stays():
    kept = names_after_running(flow_detail=0)
    for gone in ("mitmproxy.addons.maplocal", "mitmproxy.addons.anticache", "mitmproxy.addons.dumper"):
        assert gone not in kept
    for needed in (
        "mitmproxy.addons.proxyserver",
        "mitmproxy.addons.next_layer",
        "mitmproxy.addons.errorcheck",
        "mitmproxy.addons.script",
    ):
        assert needed in kept


def test_a_user_option_keeps_its_addon_and_lean_false_keeps_everything():
    assert "mitmproxy.addons.anticache" in names_after_running(anticache=True)
    assert "mitmproxy.addons.dumper" in names_after_running(flow_detail=1)
    assert "mitmproxy.addons.maplocal" in names_after_running(lean=False)
