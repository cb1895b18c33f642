"""Upstream: takes an account, renders the request for the provider and gets the answer.

Two paths, chosen by what mitmproxy can and cannot do:
- unary requests are sent with the gateway's own pooled httpx client from the `request` hook;
  that keeps keep-alive connections across clients and lets every failure (connect errors
  included) be answered in the caller's dialect;
- streamed requests are re-targeted so mitmproxy relays the upstream body chunk by chunk
  through a StreamTranscoder installed at `responseheaders`. mitmproxy answers a failed
  connect with its own HTML page, so the upstream is first reached with a TCP probe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
from mitmproxy import http

from addons import replies
from addons.context import EXCHANGE, ROUTE, Gateway, Route
from addons.images import inline_remote_images
from addons.stream import StreamRelay, StreamTranscoder
from auth.credentials import CredentialError
from auth.pool import AccountPool, NoUsableAccount, PoolAccount
from core.config import Provider
from providers import ADAPTERS, ProviderAdapter, UpstreamRequest
from translators import errors, get_codec
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, TranslationError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Exchange:
    """One request's trip upstream, kept in flow.metadata for later hooks and addons."""

    provider: str
    account: str
    upstream_dialect: str
    url: str
    passthrough: bool
    attempts: list[str] = field(default_factory=list)
    # True once the flow was re-targeted for mitmproxy to relay (streams).
    relayed: bool = False
    transcoder: StreamTranscoder | StreamRelay | None = None


class Upstream:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.pools: dict[str, AccountPool] = {}
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated:
            return
        self.pools = {}
        for pid in self.gateway.config.configured_providers():
            adapter = ADAPTERS.get(pid)
            if adapter is None:
                continue
            provider = self.gateway.config.providers[pid]
            members = []
            for i, account in enumerate(provider.accounts):
                label = account.display_label(i)
                try:
                    if not account.enabled:
                        raise CredentialError("disabled in config")
                    members.append(PoolAccount(label, adapter.credential(provider, account)))
                except CredentialError as e:
                    logger.warning("aiclient-mitm: %s account %s is skipped: %s", pid, label, e)
                    members.append(PoolAccount(label, None, str(e)))
            self.pools[pid] = AccountPool(pid, members)

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def done(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- request ---------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "generate":
            return
        try:
            flow.response = await self._dispatch(flow, route)
        except Exception:
            logger.exception("aiclient-mitm: upstream dispatch failed unexpectedly")
            flow.response = replies.error_response(route.dialect, 500, "internal error while calling the upstream")

    async def _dispatch(self, flow: http.HTTPFlow, route: Route) -> http.Response | None:
        assert route.provider is not None and route.request is not None and route.body is not None
        adapter = ADAPTERS.get(route.provider)
        if adapter is None:
            return replies.error_response(route.dialect, 501, f"provider {route.provider} is not implemented yet")
        pool = self.pools[route.provider]
        try:
            member = pool.next()
        except NoUsableAccount as e:
            return replies.error_response(route.dialect, 503, str(e))
        provider_cfg = self.gateway.config.providers[route.provider]
        passthrough = adapter.dialect == route.dialect
        try:
            if not passthrough and not get_codec(adapter.dialect).accepts_image_urls:
                await inline_remote_images(route.request, self.gateway.config.images, self.client(), route.provider)
            body = self._upstream_body(route, adapter, passthrough)
        except TranslationError as e:
            return replies.error_response(route.dialect, e.status, str(e))
        try:
            auth = await member.credential.auth()
        except CredentialError as e:
            return replies.error_response(route.dialect, 503, f"account {member.label} of {route.provider}: {e}")
        up = adapter.build(
            provider_cfg,
            auth,
            body,
            model=route.upstream_model,
            stream=route.stream,
            client_headers=flow.request.headers,
        )
        exchange = Exchange(route.provider, member.label, adapter.dialect, up.url, passthrough)
        exchange.attempts.append(member.label)
        flow.metadata[EXCHANGE] = exchange
        if route.stream:
            return await self._retarget(flow, route, up, provider_cfg)
        return await self._unary(route, adapter, up, provider_cfg, exchange)

    def _upstream_body(self, route: Route, adapter: ProviderAdapter, passthrough: bool) -> dict[str, Any]:
        if passthrough:
            # Same dialect: the client's JSON with only the model changed.
            body = dict(route.body or {})
            if "model" in body or adapter.dialect != "gemini":
                body["model"] = route.upstream_model
            return body
        return get_codec(adapter.dialect).render_request(route.request, route.upstream_model)

    # -- unary -----------------------------------------------------------------------------

    async def _unary(
        self, route: Route, adapter: ProviderAdapter, up: UpstreamRequest, cfg: Provider, exchange: Exchange
    ) -> http.Response:
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        try:
            r = await self.client().post(up.url, headers=up.headers, content=up.body, timeout=timeout)
        except httpx.TransportError as e:
            logger.warning("aiclient-mitm: %s unreachable (%s): %s", route.provider, exchange.account, e)
            return replies.error_response(
                route.dialect, 502, f"upstream {route.provider} unreachable: {type(e).__name__}: {e}"
            )
        if r.status_code >= 400:
            return self._upstream_error(route, r.status_code, r.content, r.headers.get("retry-after"))
        if exchange.passthrough:
            ctype = r.headers.get("content-type", "application/json")
            return http.Response.make(r.status_code, r.content, {"content-type": ctype, **replies.CORS_HEADERS})
        try:
            upstream_json = json.loads(r.content)
            ir_response = get_codec(adapter.dialect).parse_response(upstream_json)
        except (ValueError, TypeError, KeyError, TranslationError) as e:
            logger.warning("aiclient-mitm: %s returned an unreadable body: %s", route.provider, e)
            return replies.error_response(route.dialect, 502, f"upstream {route.provider} returned an unreadable body")
        client_body = get_codec(route.dialect).render_response(ir_response, route.model)
        return replies.json_response(200, client_body)

    def _upstream_error(self, route: Route, status: int, body: bytes, retry_after: str | None) -> http.Response:
        message = errors.extract_message(body)
        headers = {"retry-after": retry_after} if retry_after else None
        if not 400 <= status <= 599:
            status = 502
        return replies.error_response(
            route.dialect, status, f"upstream {route.provider} answered {status}: {message}", headers=headers
        )

    # -- streams ---------------------------------------------------------------------------

    async def _retarget(
        self, flow: http.HTTPFlow, route: Route, up: UpstreamRequest, cfg: Provider
    ) -> http.Response | None:
        url = urllib.parse.urlsplit(up.url)
        scheme = url.scheme
        host = url.hostname or ""
        port = url.port or (443 if scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), cfg.connect_timeout)
            writer.close()
        except (TimeoutError, OSError) as e:
            reason = "connect timed out" if isinstance(e, asyncio.TimeoutError) else str(e)
            logger.warning("aiclient-mitm: %s unreachable at %s:%d: %s", route.provider, host, port, reason)
            return replies.error_response(route.dialect, 502, f"upstream {route.provider} unreachable: {reason}")
        req = flow.request
        # scheme before host/port: mitmproxy derives the default port from it.
        req.scheme = scheme
        req.host = host
        req.port = port
        req.path = url.path + (f"?{url.query}" if url.query else "")
        req.method = "POST"
        netloc = host if url.port is None else f"{host}:{url.port}"
        req.headers = http.Headers(
            [(b"host", netloc.encode())] + [(k.encode(), v.encode()) for k, v in up.headers.items()]
        )
        req.content = up.body
        flow.metadata[EXCHANGE].relayed = True
        return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        route: Route | None = flow.metadata.get(ROUTE)
        if exchange is None or route is None or not exchange.relayed or flow.response is None:
            return
        resp = flow.response
        if not 200 <= resp.status_code < 300:
            return  # buffered; the response hook answers it in the caller's dialect
        try:
            exchange.transcoder = self._transcoder(route, exchange)
        except Exception:
            logger.exception("aiclient-mitm: could not set up stream translation")
            resp.stream = False
            return
        resp.stream = exchange.transcoder
        client_codec = get_codec(route.dialect)
        if not exchange.passthrough:
            resp.headers.pop("content-length", None)
            resp.headers["transfer-encoding"] = "chunked"
            json_mode = route.dialect == "gemini" and route.gemini_mode == "json"
            resp.headers["content-type"] = "application/json" if json_mode else client_codec.stream_content_type
        resp.headers["cache-control"] = "no-cache"
        for k, v in replies.CORS_HEADERS.items():
            resp.headers[k] = v

    def _transcoder(self, route: Route, exchange: Exchange) -> StreamTranscoder | StreamRelay:
        decoder = get_codec(exchange.upstream_dialect).decoder()
        label = f"{route.dialect}<-{exchange.provider}/{exchange.account}"
        if exchange.passthrough:
            return StreamRelay(decoder, ResponseAccumulator(), label)
        opts = EncoderOptions(
            model=route.model,
            include_usage=route.request.include_usage if route.request else False,
            gemini_mode=route.gemini_mode,
        )
        encoder = get_codec(route.dialect).encoder(opts)
        return StreamTranscoder(decoder, encoder, ResponseAccumulator(), label)

    def response(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        route: Route | None = flow.metadata.get(ROUTE)
        if exchange is None or route is None or not exchange.relayed or flow.response is None:
            return
        resp = flow.response
        if resp.status_code >= 300 and exchange.transcoder is None:
            flow.response = self._upstream_error(
                route, resp.status_code, resp.content or b"", resp.headers.get("retry-after")
            )
