"""Upstream: takes an account, renders the request for the provider and gets the answer.

Two paths, chosen by what mitmproxy can and cannot do:
- unary requests are sent with the gateway's own pooled httpx client from the `request` hook;
  that keeps keep-alive connections across clients and lets every failure (connect errors
  included) be answered in the caller's dialect;
- streamed requests are re-targeted so mitmproxy relays the upstream body chunk by chunk
  through a stream callable installed at `responseheaders`. mitmproxy answers a failed connect
  with its own HTML page, so the upstream is first reached with a TCP probe. An error status
  before the body (e.g. a 401) is answered from the `response` hook: after a token refresh the
  request is sent again with httpx and the whole answer is translated as one buffered stream.
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
from auth.credentials import AuthContext, CredentialError
from auth.pool import AccountPool, NoUsableAccount, PoolAccount
from core.config import Provider
from providers import ADAPTERS, ProviderAdapter, UpstreamRequest
from translators import errors, get_codec, ir
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, StreamDecoder, TranslationError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Exchange:
    """One request's trip upstream, kept in flow.metadata for later hooks and addons."""

    provider: str
    adapter: ProviderAdapter
    config: Provider
    member: PoolAccount
    body: dict[str, Any]  # rendered for the upstream (or the client's own, when passthrough)
    passthrough: bool
    request: UpstreamRequest | None = None
    # "label status" per attempt, e.g. ["acct-a 401", "acct-a 200"].
    attempts: list[str] = field(default_factory=list)
    refreshed: bool = False
    # True once the flow was re-targeted for mitmproxy to relay (streams).
    relayed: bool = False
    transcoder: StreamTranscoder | StreamRelay | None = None
    # The answer as IR, for unary and buffered answers (streams keep it in the transcoder).
    response: ir.Response | None = None

    @property
    def account(self) -> str:
        return self.member.label


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
        try:
            member = self.pools[route.provider].next()
        except NoUsableAccount as e:
            return replies.error_response(route.dialect, 503, str(e))
        passthrough = adapter.dialect == route.dialect and not route.ir_modified
        try:
            if not passthrough and not adapter.accepts_image_urls:
                await inline_remote_images(route.request, self.gateway.config.images, self.client(), route.provider)
            body = self._upstream_body(route, adapter, passthrough)
        except TranslationError as e:
            return replies.error_response(route.dialect, e.status, str(e))
        provider_cfg = self.gateway.config.providers[route.provider]
        exchange = Exchange(route.provider, adapter, provider_cfg, member, body, passthrough)
        flow.metadata[EXCHANGE] = exchange
        try:
            auth = await member.credential.auth()
        except CredentialError as e:
            return self._account_error(route, exchange, e)
        exchange.request = self._build(flow.request.headers, route, exchange, auth)
        if route.stream:
            return await self._relay(flow, route, exchange)
        answer = await self._send(route, exchange)
        if answer.status_code == 401 and self._may_refresh(exchange):
            answer = await self._refresh_and_resend(flow.request.headers, route, exchange) or answer
        return answer

    def _upstream_body(self, route: Route, adapter: ProviderAdapter, passthrough: bool) -> dict[str, Any]:
        if passthrough:
            # Same dialect: the client's JSON with only the model changed.
            body = dict(route.body or {})
            if "model" in body or adapter.dialect != "gemini":
                body["model"] = route.upstream_model
            return body
        return get_codec(adapter.dialect).render_request(route.request, route.upstream_model)

    def _build(self, client_headers, route: Route, exchange: Exchange, auth: AuthContext) -> UpstreamRequest:
        return exchange.adapter.build(
            exchange.config,
            auth,
            exchange.body,
            request=route.request,
            model=route.upstream_model,
            stream=route.stream,
            client_headers=client_headers,
        )

    @staticmethod
    def _may_refresh(exchange: Exchange) -> bool:
        return not exchange.refreshed and bool(getattr(exchange.member.credential, "refreshable", False))

    async def _refresh_and_resend(self, client_headers, route: Route, exchange: Exchange) -> http.Response | None:
        """After a 401: refresh the account's token once and send again (None: refresh failed)."""
        exchange.refreshed = True
        try:
            auth = await exchange.member.credential.force_refresh()
        except CredentialError as e:
            return self._account_error(route, exchange, e)
        exchange.request = self._build(client_headers, route, exchange, auth)
        return await self._send(route, exchange)

    def _account_error(self, route: Route, exchange: Exchange, e: CredentialError) -> http.Response:
        logger.warning("aiclient-mitm: %s account %s cannot be used: %s", route.provider, exchange.account, e)
        exchange.attempts.append(f"{exchange.account} credential error")
        return replies.error_response(route.dialect, 503, f"account {exchange.account} of {route.provider}: {e}")

    # -- whole answers (unary, and streams answered after a retry) ----------------------------

    async def _send(self, route: Route, exchange: Exchange) -> http.Response:
        up = exchange.request
        assert up is not None
        cfg = exchange.config
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        try:
            r = await self.client().post(up.url, headers=up.headers, content=up.body, timeout=timeout)
        except httpx.TransportError as e:
            exchange.attempts.append(f"{exchange.account} {type(e).__name__}")
            logger.warning("aiclient-mitm: %s unreachable (%s): %s", route.provider, exchange.account, e)
            return replies.error_response(
                route.dialect, 502, f"upstream {route.provider} unreachable: {type(e).__name__}: {e}"
            )
        exchange.attempts.append(f"{exchange.account} {r.status_code}")
        if r.status_code >= 400:
            return self._upstream_error(route, r.status_code, r.content, r.headers.get("retry-after"))
        try:
            return self._whole_answer(route, exchange, r.content, r.headers.get("content-type", ""))
        except (ValueError, TypeError, KeyError, TranslationError) as e:
            logger.warning("aiclient-mitm: %s returned an unreadable body: %s", route.provider, e)
            return replies.error_response(route.dialect, 502, f"upstream {route.provider} returned an unreadable body")

    def _whole_answer(self, route: Route, exchange: Exchange, content: bytes, content_type: str) -> http.Response:
        up = exchange.request
        assert up is not None
        upstream_streamed = route.stream or up.stream_only
        if exchange.passthrough and not upstream_streamed:
            return http.Response.make(
                200, content, {"content-type": content_type or "application/json", **replies.CORS_HEADERS}
            )
        if upstream_streamed:
            decoder = self._decoder(exchange)
            events = decoder.feed(content) + decoder.close()
            collector = ResponseAccumulator()
            collector.feed(events)
            exchange.response = collector.response()
            if route.stream:
                encoder = get_codec(route.dialect).encoder(self._encoder_options(route, exchange))
                body = encoder.feed(events) + encoder.close()
                return http.Response.make(200, body, self._stream_headers(route))
        else:
            exchange.response = get_codec(exchange.adapter.dialect).parse_response(json.loads(content))
        client_body = get_codec(route.dialect).render_response(exchange.response, route.model)
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

    async def _relay(self, flow: http.HTTPFlow, route: Route, exchange: Exchange) -> http.Response | None:
        up = exchange.request
        assert up is not None
        url = urllib.parse.urlsplit(up.url)
        scheme = url.scheme
        host = url.hostname or ""
        port = url.port or (443 if scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), exchange.config.connect_timeout)
            writer.close()
        except (TimeoutError, OSError) as e:
            reason = "connect timed out" if isinstance(e, TimeoutError) else str(e)
            exchange.attempts.append(f"{exchange.account} unreachable")
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
        exchange.relayed = True
        return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        route: Route | None = flow.metadata.get(ROUTE)
        if exchange is None or route is None or not exchange.relayed or flow.response is None:
            return
        resp = flow.response
        exchange.attempts.append(f"{exchange.account} {resp.status_code}")
        if not 200 <= resp.status_code < 300:
            return  # buffered; the response hook answers it in the caller's dialect
        try:
            exchange.transcoder = self._transcoder(route, exchange)
        except Exception:
            logger.exception("aiclient-mitm: could not set up stream translation")
            resp.stream = False
            return
        resp.stream = exchange.transcoder
        if exchange.passthrough:
            resp.headers["cache-control"] = "no-cache"
            resp.headers.update(replies.CORS_HEADERS)
        else:
            resp.headers = http.Headers(**{k.replace("-", "_"): v for k, v in self._stream_headers(route).items()})

    def _stream_headers(self, route: Route) -> dict[str, str]:
        json_mode = route.dialect == "gemini" and route.gemini_mode == "json"
        content_type = "application/json" if json_mode else get_codec(route.dialect).stream_content_type
        return {"content-type": content_type, "cache-control": "no-cache", **replies.CORS_HEADERS}

    def _decoder(self, exchange: Exchange) -> StreamDecoder:
        up = exchange.request
        if up is not None and up.decoder is not None:
            return up.decoder()
        return get_codec(exchange.adapter.dialect).decoder()

    def _encoder_options(self, route: Route, exchange: Exchange) -> EncoderOptions:
        up = exchange.request
        return EncoderOptions(
            model=route.model,
            include_usage=route.request.include_usage if route.request else False,
            gemini_mode=route.gemini_mode,
            tool_name_map=up.tool_name_map if up is not None else None,
        )

    def _transcoder(self, route: Route, exchange: Exchange) -> StreamTranscoder | StreamRelay:
        decoder = self._decoder(exchange)
        label = f"{route.dialect}<-{exchange.provider}/{exchange.account}"
        if exchange.passthrough:
            return StreamRelay(decoder, ResponseAccumulator(), label)
        encoder = get_codec(route.dialect).encoder(self._encoder_options(route, exchange))
        return StreamTranscoder(decoder, encoder, ResponseAccumulator(), label)

    async def response(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        route: Route | None = flow.metadata.get(ROUTE)
        if exchange is None or route is None or not exchange.relayed or flow.response is None:
            return
        resp = flow.response
        if resp.status_code < 300 or exchange.transcoder is not None:
            return
        try:
            answer = None
            if resp.status_code == 401 and self._may_refresh(exchange):
                answer = await self._refresh_and_resend(flow.request.headers, route, exchange)
            flow.response = answer or self._upstream_error(
                route, resp.status_code, resp.content or b"", resp.headers.get("retry-after")
            )
        except Exception:
            logger.exception("aiclient-mitm: answering an upstream error failed")
            flow.response = replies.error_response(route.dialect, 502, f"upstream {route.provider} failed")
