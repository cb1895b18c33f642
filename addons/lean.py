"""Lean: under mitmdump, keeps only the parts of mitmproxy the gateway uses.

Why: mitmproxy calls every addon for every event of every flow, and a DumpMaster carries ~36
built-ins; walking them (plus one `add_log` walk per log record, httpx/httpcore write about ten
debug records per upstream request) costs more CPU than the gateway's own translation.
- built-in addons that do nothing at their option defaults (map_local, save_stream_file,
  anticache...) are removed at `running`; one whose option the user set is kept, so every
  user option keeps working;
- the deprecated `add_log` relay (mitmproxy.log.LegacyLogEvents) is uninstalled when no addon
  implements `add_log`;
- httpx/httpcore log at WARNING and above only (the Upstream addon logs failures itself).
Only under DumpMaster (`mitmdump -s run.py`): mitmweb and the console change options at run time
and offer these addons' commands, so they keep everything. `--set lean=false` keeps everything too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy.addonmanager import traverse

logger = logging.getLogger(__name__)

# Built-in addon module -> options that make it act; at their defaults the addon is inert.
INERT_AT_DEFAULTS: dict[str, tuple[str, ...]] = {
    "mitmproxy.addons.anticache": ("anticache",),
    "mitmproxy.addons.anticomp": ("anticomp",),
    "mitmproxy.addons.blocklist": ("block_list",),
    "mitmproxy.addons.browser": (),
    "mitmproxy.addons.command_history": (),
    "mitmproxy.addons.comment": (),
    "mitmproxy.addons.cut": (),
    "mitmproxy.addons.export": (),
    "mitmproxy.addons.onboarding": (),
    "mitmproxy.addons.proxyauth": ("proxyauth",),
    "mitmproxy.addons.serverplayback": ("server_replay",),
    "mitmproxy.addons.mapremote": ("map_remote",),
    "mitmproxy.addons.maplocal": ("map_local",),
    "mitmproxy.addons.modifybody": ("modify_body",),
    "mitmproxy.addons.modifyheaders": ("modify_headers",),
    "mitmproxy.addons.stickyauth": ("stickyauth",),
    "mitmproxy.addons.stickycookie": ("stickycookie",),
    "mitmproxy.addons.save": ("save_stream_file",),
    "mitmproxy.addons.savehar": ("hardump",),
    "mitmproxy.addons.upstream_auth": ("upstream_auth",),
    "mitmproxy.addons.strip_dns_https_records": (),
    "mitmproxy.addons.dns_resolver": (),
    "mitmproxy.addons.keepserving": ("keepserving",),
    "mitmproxy.addons.readfile": ("rfile",),
}
# Inert only at a value other than the default: the dumper prints nothing at flow_detail 0 (-q).
INERT_WHEN: dict[str, Callable[[Any], bool]] = {
    "mitmproxy.addons.dumper": lambda options: options.flow_detail == 0,
}
# Kept on purpose: core, proxyserver, next_layer, tlsconfig, script (this gateway), termlog,
# block and disable_h2c (protection), update_alt_svc (reverse mode), clientplayback (its async
# `done` cannot run from `remove()`), errorcheck (mitmproxy reads it right after `running` to
# exit on errors logged during startup).
QUIET_LOGGERS = ("httpx2", "httpcore2", "httpx", "httpcore")


class Lean:
    def __init__(self) -> None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    def load(self, loader) -> None:
        loader.add_option(
            "lean", bool, True, "mitmdump only: remove built-in addons that are inert at their option defaults."
        )

    def running(self) -> None:
        from mitmproxy.tools.dump import DumpMaster

        master = ctx.master
        if not ctx.options.lean or not isinstance(master, DumpMaster):
            return
        removed = []
        for addon in list(master.addons.chain):
            module = type(addon).__module__
            options = INERT_AT_DEFAULTS.get(module)
            inert_when = INERT_WHEN.get(module)
            if options is not None:
                inert = not any(ctx.options.has_changed(o) for o in options)
            else:
                inert = inert_when is not None and inert_when(ctx.options)
            if inert:
                master.addons.remove(addon)
                removed.append(type(addon).__name__)
        legacy = getattr(master, "_legacy_log_events", None)
        if legacy is not None and not any(hasattr(a, "add_log") for a in traverse(master.addons.chain)):
            legacy.uninstall()
        logger.debug("aiclient-mitm: removed inert mitmproxy addons: %s", ", ".join(removed))
