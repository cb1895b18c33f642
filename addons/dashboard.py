"""Dashboard: GET /dashboard (one self-contained page) and GET /dashboard/data (its JSON).

The page is static -- inline CSS, JS and SVG, no build step, nothing from a CDN -- and is served
without a key; it asks for an admin key once, keeps it in the browser's sessionStorage and sends it
as a header to /dashboard/data every few seconds (never in a URL). The data comes from what the
gateway already keeps: the pools' state, the request series of the Metrics addon and the Usage
counters; building it costs one pass over them per poll, nothing per request.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons import admin, replies
from addons.context import ROUTE, Gateway, Route
from addons.local_api import VERSION
from addons.metrics import Metrics
from addons.usage import Usage
from auth.rate_limit import request_limits

PAGE_FILE = Path(__file__).with_name("dashboard.html")
PAGE_HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    # Everything is inline; nothing may be fetched from elsewhere, and no other site may frame it.
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
TOKEN_KINDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


class Dashboard:
    def __init__(self, gateway: Gateway, metrics: Metrics, usage: Usage) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.usage = usage
        self.page = b""

    def load(self, loader: Any) -> None:
        self.page = PAGE_FILE.read_bytes()  # once, at start: the page is part of the code

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation not in ("dashboard", "dashboard_data"):
            return
        if route.operation == "dashboard":
            flow.response = http.Response.make(200, self.page, PAGE_HEADERS)
            return
        refused = admin.refusal(flow, "GET /dashboard/data")
        flow.response = refused or replies.json_response(200, self.data(admin.caller_name(flow)))

    def data(self, viewer: str) -> dict[str, Any]:
        now = time.time()
        providers = []
        for pid, pool in self.gateway.pools.items():
            accounts = []
            for row in pool.status():
                row["windows"] = request_limits.windows(pid, row["label"])
                accounts.append(row)
            providers.append({"id": pid, "strategy": pool.strategy, "accounts": accounts})
        series = self.metrics.series.points(now)
        book = self.usage.book.to_json()
        return {
            "now": now,
            "viewer": viewer,
            "version": VERSION,
            "process": self.metrics.process,
            "providers": providers,
            "series": series,
            "last_hour": {
                "requests": sum(p["requests"] for p in series),
                "errors": sum(p["errors"] for p in series),
            },
            "open_streams": len(self.metrics.open_streams),
            "usage_since": book["since"],
            "tokens_by_key": _totals(book["rows"], "client_key_name"),
            "tokens_by_model": _totals(book["rows"], "model"),
        }


def _totals(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Usage rows summed per key or per model, largest first."""
    sums: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*TOKEN_KINDS, "requests", "errors"), 0))
    for row in rows:
        target = sums[row.get(by) or "-"]
        for field in target:
            target[field] += int(row.get(field) or 0)
    out = [{"name": name, **counts} for name, counts in sums.items()]
    out.sort(key=lambda r: r["input_tokens"] + r["output_tokens"], reverse=True)
    return out
