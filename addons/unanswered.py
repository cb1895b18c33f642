"""Unanswered: the last addon of the chain fails closed.

Every flow must be answered locally or re-targeted upstream by the addons before it; one that
was neither would go to the reverse-proxy placeholder. This answers it in the caller's dialect.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons import replies
from addons.context import EXCHANGE, ROUTE
from addons.router import dialect_for_path

logger = logging.getLogger(__name__)


class Unanswered:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        exchange = flow.metadata.get(EXCHANGE)
        if exchange is not None and exchange.relayed:
            return
        route = flow.metadata.get(ROUTE)
        operation = route.operation if route is not None else "unrouted"
        logger.warning("aiclient-mitm: no addon answered %s %s (%s)", flow.request.method, flow.request.path, operation)
        flow.response = replies.error_response(
            dialect_for_path(flow.request.path), 404, f"{flow.request.path.partition('?')[0]} is not available"
        )
