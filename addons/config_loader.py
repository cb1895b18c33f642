"""Loads config.yaml and sets the mitmproxy options the gateway needs.

The listener itself comes from the command line (core/launch.py re-executes mitmproxy with the
configured `--mode reverse:…@PORT --listen-host HOST` when none was given: a script cannot choose
it). running() checks that mitmproxy really listens as a reverse proxy and stops it otherwise,
since any other mode would be an open proxy.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.context import Gateway
from auth.client_keys import Keyring
from core.config import ConfigError, load_config
from core.launch import DEFAULT_CONFIG, PLACEHOLDER_TARGET

logger = logging.getLogger(__name__)


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
                # At start the logged error makes mitmproxy exit (errorcheck) and no key is accepted
                # meanwhile; later (a mitmweb option edit) the running configuration and keys stay.
                if self.gateway.config_path is None:
                    self.gateway.keyring = Keyring()
                logger.error("aiclient-mitm: invalid configuration %s: %s", path, e)
                return
            self.gateway.config = config
            self.gateway.config_path = path.resolve()
            max_body = int(config.limits.max_body)
            ctx.options.update(
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
            ctx.master.shutdown()
            return
        if not any(expected.port in (0, a[1]) for a in addrs):
            logger.warning(
                "aiclient-mitm: listening where the command line says, not on port %d of the configuration",
                expected.port,
            )
        loop = type(asyncio.get_running_loop())
        for host, port, *_ in addrs:
            shown = f"[{host}]" if ":" in host else host
            logger.info(
                "aiclient-mitm listening on http://%s:%d (event loop: %s.%s)",
                shown,
                port,
                loop.__module__.partition(".")[0],
                loop.__name__,
            )
