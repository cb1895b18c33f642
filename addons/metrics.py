"""Metrics: GET /metrics in Prometheus text format, and the request rates the dashboard draws.

One CollectorRegistry per gateway (never the process-global one). Per exchange the cost is a few
counter increments when it ends (never per stream chunk); everything read from the pools --
account availability, in-flight requests, token refreshes, open streams -- is collected at scrape
time by a custom collector. Every series carries a `process` label (host:pid): with several
processes each one serves its own metrics, the standard Prometheus model. Labels name keys by
their name (or short id), accounts by their label; never a secret.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import prometheus_client
from mitmproxy import http
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from addons import admin
from addons.context import EXCHANGE, ROUTE, Gateway, Route
from addons.outcome import outcome_of
from addons.router import dialect_for_path

logger = logging.getLogger(__name__)

COUNTED = "aiclient.metrics_counted"
# Pool states as the metrics name them (unusable accounts count as disabled).
AVAILABILITY = {"ready": "available", "cooling": "cooling", "disabled": "disabled", "unusable": "disabled"}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
ACCOUNT_LABELS = ["process", "provider", "account"]
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60)


class RateSeries:
    """Requests and errors per 10-second bucket over the last hour: O(1) per request."""

    BUCKET = 10
    SLOTS = 360

    __slots__ = ("errors", "requests", "stamps")

    def __init__(self) -> None:
        self.stamps = [0] * self.SLOTS
        self.requests = [0] * self.SLOTS
        self.errors = [0] * self.SLOTS

    def add(self, now: float, error: bool) -> None:
        bucket = int(now // self.BUCKET)
        i = bucket % self.SLOTS
        if self.stamps[i] != bucket:
            self.stamps[i], self.requests[i], self.errors[i] = bucket, 0, 0
        self.requests[i] += 1
        self.errors[i] += error

    def points(self, now: float) -> list[dict[str, Any]]:
        """Oldest first: bucket start (epoch), requests per second and error share, for the last hour."""
        last = int(now // self.BUCKET)
        out = []
        for bucket in range(last - self.SLOTS + 1, last + 1):
            i = bucket % self.SLOTS
            req, err = (self.requests[i], self.errors[i]) if self.stamps[i] == bucket else (0, 0)
            out.append({"t": bucket * self.BUCKET, "requests": req, "errors": err, "rps": req / self.BUCKET})
        return out


class PoolCollector(Collector):
    """What the pools know, read at scrape time (no per-request cost)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        process = self.metrics.process
        available = GaugeMetricFamily(
            "aiclient_account_available",
            "1 for the account's current state (available, cooling or disabled), else 0",
            labels=["process", "provider", "account", "state"],
        )
        in_flight = GaugeMetricFamily(
            "aiclient_account_in_flight", "requests the account is serving now", labels=ACCOUNT_LABELS
        )
        refreshes = CounterMetricFamily(
            "aiclient_token_refreshes", "OAuth token refreshes started", labels=ACCOUNT_LABELS
        )
        failures = CounterMetricFamily(
            "aiclient_token_refresh_failures", "OAuth token refreshes that failed", labels=ACCOUNT_LABELS
        )
        usage = GaugeMetricFamily(
            "aiclient_account_usage_percent",
            "share of a subscription usage window used, as the upstream last reported it (Codex)",
            labels=["process", "provider", "account", "window"],
        )
        for pid, pool in self.metrics.gateway.pools.items():
            for row, acct in zip(pool.status(), pool.accounts, strict=True):
                state = AVAILABILITY.get(row["state"], "disabled")
                for name in ("available", "cooling", "disabled"):
                    available.add_metric([process, pid, acct.label, name], 1.0 if name == state else 0.0)
                in_flight.add_metric([process, pid, acct.label], acct.state.in_flight)
                for window, values in acct.state.usage_windows.items():
                    percent = values.get("used_percent") if isinstance(values, dict) else None
                    if isinstance(percent, int | float):
                        usage.add_metric([process, pid, acct.label, window], float(percent))
                stats = getattr(acct.credential, "refresh_stats", None) if acct.credential is not None else None
                if stats is not None:
                    refreshes.add_metric([process, pid, acct.label], stats.attempts)
                    failures.add_metric([process, pid, acct.label], stats.failures)
        streams = GaugeMetricFamily("aiclient_open_streams", "streamed answers being relayed now", labels=["process"])
        streams.add_metric([process], len(self.metrics.open_streams))
        yield from (available, in_flight, usage, refreshes, failures, streams)


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "aiclient_requests",
            "LLM requests by client key, provider, model, dialect pair (client->upstream) and HTTP status",
            ["process", "key", "provider", "model", "dialect", "status", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "aiclient_tokens",
            "tokens by client key, provider, model and kind (input, output, cached, reasoning)",
            ["process", "key", "provider", "model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aiclient_upstream_latency_seconds",
            "time from the client's request to the end of the answer, for exchanges that reached an upstream",
            ["process", "provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "aiclient_time_to_first_token_seconds",
            "time from the client's request to the first text, thinking or tool-call event of a stream",
            ["process", "provider", "model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PoolCollector(self))
        self.open_streams: set[str] = set()
        self.series = RateSeries()

    def load(self, loader: Any) -> None:
        # The `_created` twin of every counter only doubles the scrape.
        prometheus_client.disable_created_metrics()

    # -- the endpoint ----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "metrics":
            return
        if not self.gateway.config.metrics.public:
            refused = admin.refusal(flow, "GET /metrics")
            if refused is not None:
                flow.response = refused
                return
        flow.response = http.Response.make(200, generate_latest(self.registry), {"content-type": CONTENT_TYPE_LATEST})

    # -- counting --------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if getattr(flow.metadata.get(EXCHANGE), "transcoder", None) is not None:
            self.open_streams.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    def _count(self, flow: http.HTTPFlow) -> None:
        self.open_streams.discard(flow.id)
        if flow.metadata.get(COUNTED):
            return
        flow.metadata[COUNTED] = True
        try:
            self._count_exchange(flow)
        except Exception:
            logger.exception("aiclient-mitm: could not count the exchange in the metrics")

    def _count_exchange(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get(ROUTE)
        if route is not None and route.operation != "generate":
            return  # local endpoints (model lists, /metrics itself, the dashboard) are not LLM traffic
        status = str(flow.response.status_code) if flow.response is not None else "none"
        key = admin.caller_name(flow)
        if route is None:  # refused before routing: bad key, unknown endpoint, oversized body
            dialect = dialect_for_path(flow.request.path)
            self.requests.labels(self.process, key, "", "", f"{dialect}->local", status, "refused").inc()
            self.series.add(time.time(), True)
            return
        exchange = flow.metadata.get(EXCHANGE)
        outcome = outcome_of(flow)
        provider = getattr(exchange, "provider", None) or route.provider or ""
        model = getattr(exchange, "model", None) or route.upstream_model or route.model
        upstream = exchange.adapter.dialect if exchange is not None else "local"
        result = outcome.status if outcome is not None else "error"
        if outcome is not None and outcome.http_status is not None:
            status = str(outcome.http_status)
        self.requests.labels(self.process, key, provider, model, f"{route.dialect}->{upstream}", status, result).inc()
        self.series.add(time.time(), result != "ok")
        if outcome is None:
            return
        u = outcome.usage
        for kind, count in (
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cached", u.cache_read_tokens),
            ("reasoning", u.reasoning_tokens),
        ):
            if count:
                self.tokens.labels(self.process, key, provider, model, kind).inc(count)
        if exchange is not None and exchange.request is not None:
            self.latency.labels(self.process, provider, model).observe(outcome.latency_ms / 1000)
            if outcome.ttft_ms is not None:
                self.ttft.labels(self.process, provider, model).observe(outcome.ttft_ms / 1000)
