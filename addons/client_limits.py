"""ClientLimits: slow and idle client connections are closed, and their number is bounded.

mitmproxy 12 has one knob, `tcp_timeout` (seconds without any traffic on a connection); on its own it
lets a slowloris client that sends a byte every few seconds hold a connection forever, and it
applies no limit to the number of connections. This addon follows each client connection through
mitmproxy's hooks and closes it when it breaks a limit, whether or not a key was sent:

- head:  from connect, the whole request head must arrive within `limits.header_timeout`;
- body:  while a request body is read, at most `limits.body_timeout` without a byte;
- idle:  after an answer, the next request head must be in within `limits.idle_timeout`;
- busy:  while the gateway works on a request or streams an answer, only mitmproxy's tcp_timeout
         applies (set to `limits.write_timeout`, or the largest limit when that is larger), so a slow
         reader of a long stream is cut only after that long without progress.

Past `limits.max_connections` open client connections, a new one is closed right away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from mitmproxy import connection, ctx, http

from addons.context import Gateway

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _ClientState:
    phase: str  # head | body | busy | idle
    deadline: float  # monotonic; for head and idle
    flows: int = 0  # requests of this connection in progress (HTTP/2 may have several)


class ClientLimits:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._clients: dict[str, _ClientState] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.refused = 0  # connections refused over max_connections, for the log

    def configure(self, updated: set[str]) -> None:
        if "config" in updated:
            limits = self.gateway.config.limits
            longest = max(limits.write_timeout, limits.idle_timeout, limits.body_timeout, limits.header_timeout)
            ctx.options.update(tcp_timeout=math.ceil(longest))

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="aiclient client limits")

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    # -- connection hooks --------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        limits = self.gateway.config.limits
        if len(self._clients) >= limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                logger.warning(
                    "aiclient-mitm: %d open client connections (limits.max_connections); refused %d so far",
                    len(self._clients),
                    self.refused,
                )
            client.error = "too many open client connections (limits.max_connections)"
            return
        self._clients[client.id] = _ClientState("head", time.monotonic() + limits.header_timeout)

    def client_disconnected(self, client: connection.Client) -> None:
        self._clients.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self._clients.get(flow.client_conn.id)
        if state is not None:
            state.flows += 1
            state.phase = "body"

    def request(self, flow: http.HTTPFlow) -> None:
        state = self._clients.get(flow.client_conn.id)
        if state is not None:
            state.phase = "busy"

    def response(self, flow: http.HTTPFlow) -> None:
        self._flow_done(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._flow_done(flow)

    def _flow_done(self, flow: http.HTTPFlow) -> None:
        state = self._clients.get(flow.client_conn.id)
        if state is None:
            return
        state.flows = max(0, state.flows - 1)
        if state.flows == 0:
            state.phase = "idle"
            state.deadline = time.monotonic() + self.gateway.config.limits.idle_timeout

    # -- the watcher -------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            limits = self.gateway.config.limits
            tick = min(1.0, max(0.05, min(limits.header_timeout, limits.body_timeout, limits.idle_timeout) / 4))
            await asyncio.sleep(tick)
            try:
                self._close_expired(limits.body_timeout)
            except Exception:
                logger.exception("aiclient-mitm: checking client connection limits failed")

    def _close_expired(self, body_timeout: float) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return
        now = time.monotonic()
        wall = time.time()
        for client_id, state in list(self._clients.items()):
            handler = proxyserver.connections.get(client_id)
            if handler is None:
                continue
            if state.phase in ("head", "idle") and now > state.deadline:
                reason = "request head not received in time (limits.header_timeout)"
                if state.phase == "idle":
                    reason = "keep-alive connection idle (limits.idle_timeout)"
            elif state.phase == "body" and wall - handler.timeout_watchdog.last_activity > body_timeout:
                reason = "request body stalled (limits.body_timeout)"
            else:
                continue
            transport = handler.transports.get(handler.client)
            if transport is not None and transport.handler is not None:
                logger.info("aiclient-mitm: closing client connection %s: %s", handler.client.peername, reason)
                transport.handler.cancel(reason)
            self._clients.pop(client_id, None)
