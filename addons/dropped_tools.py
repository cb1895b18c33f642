"""DroppedTools: says which client tools the chosen upstream could not take.

Built-in tools of another provider (`web_search`, `code_interpreter`, ...) are left out of the
upstream request by the codecs; clients learn it from the `x-aiclient-dropped-tools` response header
and mitmweb from the flow comment (Inspect reads DROPPED_TOOLS), never silently. Before Inspect,
which drops the live flow metadata this addon reads once a flow is done.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.context import DROPPED_TOOLS, EXCHANGE, ROUTE, Route
from translators.tools import dropped_tools

logger = logging.getLogger(__name__)

HEADER = "x-aiclient-dropped-tools"


class DroppedTools:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Relayed streams: the header goes out with the upstream's headers."""
        self._mark(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._mark(flow)

    @staticmethod
    def _mark(flow: http.HTTPFlow) -> list[str]:
        if flow.response is None:
            return []
        names = flow.metadata.get(DROPPED_TOOLS)
        if names is None:
            route: Route | None = flow.metadata.get(ROUTE)
            exchange = flow.metadata.get(EXCHANGE)
            if route is None or route.request is None or exchange is None or getattr(exchange, "passthrough", True):
                return []
            try:
                dialect = getattr(exchange, "dialect", "") or exchange.adapter.dialect  # Vertex: per model
                names = dropped_tools(route.request.tools, dialect)
            except Exception:
                logger.exception("aiclient-mitm: could not work out the dropped tools")
                return []
            flow.metadata[DROPPED_TOOLS] = names
        if names:
            flow.response.headers[HEADER] = ", ".join(names)
        return names
