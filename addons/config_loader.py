"""Loads config.yaml and puts mitmproxy into the mode the gateway needs.

`mitmdump -s run.py` with no other flag must listen where config.yaml says, as a reverse proxy.
Options are set in configure(); running() checks that mitmproxy really did it, because some
versions ignore a mode set from a script and would run an open forward proxy on *:8080.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.context import Gateway
from core.config import ConfigError, load_config

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
# Reverse mode needs a target; nothing is ever sent there (every flow is answered or re-targeted),
# and a flow that slipped through would fail closed against a port nobody listens on.
PLACEHOLDER_TARGET = "http://127.0.0.1:1"


class ConfigLoader:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def load(self, loader) -> None:
        loader.add_option("config", str, str(DEFAULT_CONFIG), "Path of the aiclient-mitm configuration file.")

    def configure(self, updated: set[str]) -> None:
        if "config" in updated:
            path = Path(ctx.options.config).expanduser()
            try:
                config = load_config(path)
            except ConfigError as e:
                # Never leave mitmproxy's default open forward proxy on *:8080 up, not even while it
                # exits: park it on a loopback port. The logged error makes startup abort (exit 1).
                ctx.options.update(mode=[f"{ReverseMode.type_name}:{PLACEHOLDER_TARGET}@0"], listen_host="127.0.0.1")
                self.gateway.client_keys = []
                logger.error("aiclient-mitm: invalid configuration %s: %s", path, e)
                return
            self.gateway.config = config
            self.gateway.config_path = path.resolve()
            listen = config.listen
            max_body = int(config.limits.max_body)
            ctx.options.update(
                mode=[f"{ReverseMode.type_name}:{PLACEHOLDER_TARGET}@{listen.port}"],
                listen_host=listen.host,
                connection_strategy="lazy",
                http2=config.http2,
                # Bodies between max_body and this hard cap get a 413 in the caller's dialect from
                # the Router; beyond it mitmproxy refuses them itself before buffering more.
                body_size_limit=str(2 * max_body + 1024 * 1024),
            )
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            # mitmproxy would forward such bodies before any request hook could check the key.
            raise exceptions.OptionsError("aiclient-mitm: stream_large_bodies must stay unset")

    def running(self) -> None:
        expected = self.gateway.config.listen
        proxyserver = ctx.master.addons.get("proxyserver")
        servers = list(proxyserver.servers) if proxyserver else []
        ok = len(servers) == 1 and isinstance(servers[0].mode, ReverseMode)
        addrs = servers[0].listen_addrs if ok else []
        if ok:
            ok = any(expected.port in (0, a[1]) for a in addrs)
        if not ok:
            found = ", ".join(f"{s.mode.full_spec} on {s.listen_addrs}" for s in servers) or "no listener"
            logger.error(
                "aiclient-mitm: mitmproxy is not running the configured reverse listener (found: %s). "
                "Start it with: mitmdump -s run.py --mode reverse:%s@%d --listen-host %s",
                found,
                PLACEHOLDER_TARGET,
                expected.port,
                expected.host,
            )
            return
        for host, port, *_ in addrs:
            shown = f"[{host}]" if ":" in host else host
            logger.info("aiclient-mitm listening on http://%s:%d", shown, port)
