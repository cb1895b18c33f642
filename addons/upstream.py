"""Upstream: takes an account, renders the request for the provider and gets the answer --
from another account or a fallback provider/model when one fails before any byte reached
the client.

Every upstream request is sent with the gateway's own pooled HTTP/1.1 client (core/http1.py) from
the `request` hook, so every failure before the answer's first byte (connect errors, resets before
headers, error statuses, read timeouts) is retried elsewhere or answered in the caller's dialect.
Unary answers are read whole. A stream is opened the same way; once its upstream answered 2xx, the
flow is re-targeted to the in-process loopback relay (addons/stream.py), which pumps the upstream
body through the stream translation and ends it with the dialect's in-band error if it breaks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx2
from mitmproxy import ctx, http
from tenacity import wait_exponential_jitter

from addons import replies
from addons.affinity import session_key
from addons.context import EXCHANGE, ROUTE, Gateway, Route
from addons.flow_inspect import mask_header
from addons.images import inline_remote_images
from addons.stream import RELAY_HEADER, LoopbackRelay, RelayJob, StreamRelay, StreamTranscoder, client_writer
from auth.credentials import AuthContext, CredentialError
from auth.pool import AccountPool, AllCoolingDown, NoUsableAccount, PoolAccount
from auth.rate_limit import request_limits
from core.config import Provider
from core.http1 import Http1Client, HttpError, StreamResponse
from providers import ADAPTERS, ProviderAdapter, UpstreamRequest, upstream_dialect
from providers.base import UpstreamFailure, forward_query
from translators import errors, get_codec, ir
from translators.accumulate import ResponseAccumulator
from translators.base import EncoderOptions, StreamDecoder, TranslationError
from translators.openai_responses import tool_namespaces
from translators.thinking import limit_body_effort

logger = logging.getLogger(__name__)

# Failures that are the request's fault: another account would fail the same way.
NO_FAILOVER = frozenset({"bad_request", "context_too_long", "not_found"})
# flow.metadata: the request's session affinity (Affinity), set by Upstream for its own later hooks.
AFFINITY = "aiclient.affinity"


@dataclass(slots=True)
class Affinity:
    """The conversation a request belongs to (for its provider) and the account it is bound to."""

    session: str  # "<provider>|<session key>"
    provider: str
    bound: str | None


@dataclass(slots=True)
class Exchange:
    """One upstream attempt of a request, kept in flow.metadata for later hooks and addons."""

    provider: str
    model: str  # upstream model of this attempt
    adapter: ProviderAdapter
    config: Provider
    pool: AccountPool
    member: PoolAccount
    body: dict[str, Any]  # rendered for the upstream (or the client's own, when passthrough)
    passthrough: bool
    # "provider/label status" of every attempt of the request so far, e.g. ["oa/a 429", "oa/b 200"].
    attempts: list[str] = field(default_factory=list)
    request: UpstreamRequest | None = None
    refreshed: bool = False
    released: bool = False
    # True once the flow was re-targeted to the loopback relay (streams).
    relayed: bool = False
    # The relay job's one-time token while mitmproxy has not fetched it yet.
    relay_token: str | None = None
    transcoder: StreamTranscoder | StreamRelay | None = None
    # The answer as IR, for unary and buffered answers (streams keep it in the transcoder).
    response: ir.Response | None = None
    # A passthrough unary answer, parsed once when it was checked to be a JSON object; turned into
    # IR only when a reporting addon asks (addons/outcome.py).
    passthrough_json: dict[str, Any] | None = None
    # An error the upstream sent inside a stream that was read whole.
    stream_error: ir.StreamError | None = None
    # The upstream's wire dialect for this model (Vertex serves Gemini and Claude models).
    dialect: str = ""
    # The upstream's last unary answer as received (status, headers, body): for the inspector.
    upstream_response: Any = None
    # The request's conversation (session affinity), bound to this account when the attempt succeeds.
    affinity: Affinity | None = None

    @property
    def account(self) -> str:
        return self.member.label

    def scrub(self, text: str) -> str:
        """Upstreams sometimes echo the credential in an error; it must reach neither client nor log."""
        if self.request is None:
            return text
        for name in ("authorization", "x-api-key", "x-goog-api-key"):
            value = self.request.headers.get(name, "")
            secret = value.removeprefix("Bearer ").strip()
            if len(secret) >= 8:
                text = text.replace(secret, "[REDACTED]")
        return text

    def note(self, outcome: str) -> None:
        self.attempts.append(f"{self.provider}/{self.account} {outcome}")

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.member)


@dataclass(slots=True)
class _Round:
    """What tenacity's wait strategies read from a retry state."""

    attempt_number: int


class _SkipAccount(Exception):
    """The picked account cannot be used (its credential failed); try the next one."""

    def __init__(self, answer: http.Response) -> None:
        super().__init__("account skipped")
        self.answer = answer


class _Unavailable:
    """No candidate can serve now: why, and when the first one frees up."""

    __slots__ = ("reasons", "retry_after")

    def __init__(self) -> None:
        self.retry_after: float | None = None
        self.reasons: list[str] = []


class Upstream:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._client: httpx2.AsyncClient | None = None  # remote images to inline (addons/images.py)
        self._http1 = Http1Client()  # every upstream request: the hot path
        self._relay = LoopbackRelay()  # serves opened streams to mitmproxy
        self._binds: set[asyncio.Task[None]] = set()  # affinity bindings of streams that ended well
        self._proxied: dict[str, httpx2.AsyncClient] = {}  # image fetches through outbound proxies
        self._proxies: dict[tuple[str, str], str | None] = {}  # (provider, account) -> its proxy
        self._proxy_config: object | None = None

    def client(self, proxy: str | None = None) -> httpx2.AsyncClient:
        """The httpx client for remote image fetches, one per outbound proxy."""
        if proxy:
            client = self._proxied.get(proxy)
            if client is None:
                client = self._proxied[proxy] = httpx2.AsyncClient(proxy=proxy, follow_redirects=False, trust_env=False)
            return client
        if self._client is None:
            self._client = httpx2.AsyncClient(
                limits=httpx2.Limits(max_connections=512, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    def _proxy(self, exchange: Exchange) -> str | None:
        """The account's outbound proxy: its own, else its provider's, else the global one."""
        config = self.gateway.config
        if self._proxy_config is not config:  # reloaded: resolve again
            self._proxy_config = config
            self._proxies = {}
        key = (exchange.provider, exchange.account)
        if key not in self._proxies:
            chosen = next(
                (
                    a.proxy
                    for i, a in enumerate(exchange.config.accounts)
                    if a.proxy is not None and a.display_label(i) == exchange.account
                ),
                None,
            )
            chosen = chosen or exchange.config.proxy or config.proxy
            self._proxies[key] = chosen.get_secret_value() if chosen is not None else None
        return self._proxies[key]

    async def running(self) -> None:
        port = await self._relay.start()
        # The one listener besides the configured one: loopback only, answering nothing but the
        # one-time token of a stream this process opened (tests/e2e/test_startup.py checks both).
        logger.info("aiclient-mitm: internal stream relay on 127.0.0.1:%d (loopback, one-time tokens)", port)

    async def done(self) -> None:
        await self._relay.stop()
        await self._http1.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for client in self._proxied.values():
            await client.aclose()
        self._proxied.clear()

    # -- request ---------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "generate":
            return
        try:
            flow.response = await self._serve(flow, route)
        except Exception:
            flow.response = replies.internal_error(route.dialect, "calling the upstream")
        finally:
            # An attempt that raised (or was cancelled with its client) still holds its account;
            # a relayed one is released when the relay ends the stream.
            _release_unrelayed(flow)

    def _candidates(self, route: Route) -> list[tuple[str, str]]:
        """(provider, upstream model): the routed one, then fallback providers, then fallback models."""
        assert route.provider is not None
        fallback = self.gateway.config.fallback
        out = [(route.provider, route.upstream_model)]
        out += [(p, route.upstream_model) for p in fallback.providers.get(route.provider, [])]
        for target in fallback.models.get(route.model, []) or fallback.models.get(route.upstream_model, []):
            provider, _, model = target.partition(":")
            out.append((provider, model))
        key = route.client_key
        if key is not None:
            # Fallbacks stay inside the caller's key policy (the routed target was checked already).
            # A fallback provider must be allowed, and a fallback model must match the key's globs.
            out = out[:1] + [
                (p, m)
                for p, m in out[1:]
                if key.allows_provider(p) and (m == route.upstream_model or key.allows_model(m))
            ]
        configured = set(self.gateway.config.configured_providers())
        seen: set[tuple[str, str]] = set()
        return [c for c in out if c[0] in configured and c[0] in ADAPTERS and not (c in seen or seen.add(c))]

    def _pick(
        self, route: Route, tried: set[tuple[str, str]], affinity: Affinity | None = None
    ) -> tuple[str, str, PoolAccount] | _Unavailable:
        unavailable = _Unavailable()
        for provider, model in self._candidates(route):
            pool = self.gateway.pools.get(provider)
            if pool is None:
                continue
            exclude = {label for p, label in tried if p == provider}
            prefer = affinity.bound if affinity is not None and affinity.provider == provider else None
            try:
                return provider, model, pool.acquire(model, exclude, prefer)
            except AllCoolingDown as e:
                current = unavailable.retry_after
                unavailable.retry_after = e.retry_after if current is None else min(current, e.retry_after)
                unavailable.reasons.append(str(e))
            except NoUsableAccount as e:
                unavailable.reasons.append(str(e))
        return unavailable

    async def _serve(
        self,
        flow: http.HTTPFlow,
        route: Route,
        *,
        tried: set[tuple[str, str]] | None = None,
        last: http.Response | None = None,
        attempts: list[str] | None = None,
    ) -> http.Response | None:
        """Tries accounts and fallbacks until one answers. Returns the answer, or None when the flow
        was re-targeted to the loopback relay (a stream that started)."""
        retry = self.gateway.config.retry
        tried = tried if tried is not None else set()
        attempts = attempts if attempts is not None else []
        affinity = await self._affinity(flow, route)
        waited = 0.0
        for round_no in range(retry.max_attempts):
            pick = self._pick(route, tried, affinity)
            if isinstance(pick, _Unavailable) and tried:
                # Accounts that failed in this request are tried again only after their cooldown,
                # when it ends within retry.max_wait (a short Retry-After on a single account).
                pick = self._pick(route, set())
            if isinstance(pick, _Unavailable):
                wait = pick.retry_after
                if wait is None or waited + wait > retry.max_wait or round_no == retry.max_attempts - 1:
                    if last is None:
                        return self._unavailable(route, pick)
                    if wait is not None and last.status_code == 429 and "retry-after" not in last.headers:
                        # Every account answered 429 with its delay in the body (RetryInfo): the
                        # client still learns when to come back, on this first answer too.
                        last.headers["retry-after"] = str(max(1, math.ceil(wait)))
                    return last
                # Every account is cooling but one frees up within max_wait: back off (exponential with
                # jitter, never less than the upstream's Retry-After), then try again.
                backoff = wait_exponential_jitter(initial=retry.backoff_base, max=retry.max_wait)
                pause = min(max(wait, backoff(_Round(round_no + 1))), retry.max_wait - waited)
                waited += pause
                await asyncio.sleep(pause)
                continue
            provider, model, member = pick
            try:
                exchange, problem = await self._prepare(flow, route, provider, model, member, attempts)
            except _SkipAccount as skip:
                tried.add((provider, member.label))
                last = skip.answer
                continue
            if problem is not None:
                return problem
            exchange.affinity = affinity
            answer, failure = await self._attempt(flow, route, exchange)
            if exchange.relayed:
                return None  # the relay job releases the account when the stream ends
            exchange.release()
            if failure is None:
                exchange.pool.report_success(member, model)
                await self._bind(exchange)
                return answer
            self._report(exchange, failure)
            if failure.kind in NO_FAILOVER:
                return answer
            tried.add((provider, member.label))
            last = answer
        return last

    async def _affinity(self, flow: http.HTTPFlow, route: Route) -> Affinity | None:
        """The request's session and the account its conversation is bound to (config `affinity`)."""
        found: Affinity | None = flow.metadata.get(AFFINITY)
        if found is not None or not self.gateway.config.affinity.enabled or route.provider is None:
            return found
        key = session_key(route.dialect, route.body, flow.request.headers)
        if key is None:
            return None
        session = f"{route.provider}|{key}"
        found = Affinity(session, route.provider, await self.gateway.state.bound(session))
        flow.metadata[AFFINITY] = found
        return found

    async def _bind(self, exchange: Exchange) -> None:
        """A turn succeeded: its conversation stays on this account (re-bound after a fail-over)."""
        affinity = exchange.affinity
        if affinity is None or affinity.provider != exchange.provider:
            return
        try:
            await self.gateway.state.bind(affinity.session, exchange.account, self.gateway.config.affinity.ttl)
            affinity.bound = exchange.account
        except Exception:
            logger.exception("aiclient-mitm: could not record the session's account")

    async def _prepare(
        self, flow: http.HTTPFlow, route: Route, provider: str, model: str, member: PoolAccount, attempts: list[str]
    ) -> tuple[Exchange, http.Response | None]:
        """The attempt's Exchange with its rendered request, or a local answer that ends the request."""
        adapter = ADAPTERS[provider]
        pool = self.gateway.pools[provider]
        dialect = upstream_dialect(adapter, model)
        passthrough = (
            dialect == route.dialect
            and not route.ir_modified
            and not adapter.wraps_responses
            # A Gemini client's JSON-array stream is written by the encoder from the upstream's SSE.
            and not (route.dialect == "gemini" and route.stream and route.gemini_mode == "json")
        )
        exchange = Exchange(
            provider, model, adapter, self.gateway.config.providers[provider], pool, member, {}, passthrough
        )
        exchange.dialect = dialect
        exchange.attempts = attempts
        flow.metadata[EXCHANGE] = exchange
        limited = request_limits.refusal(provider, exchange.config, member.label)
        if limited is not None:  # requests_per_minute/day of the account: try another, else a clean 429
            exchange.release()
            exchange.note("local request limit")
            raise _SkipAccount(replies.error_response(route.dialect, 429, limited.message, headers=limited.headers))
        try:
            if not passthrough and not adapter.accepts_image_urls:
                images = self.client(self._proxy(exchange))
                await inline_remote_images(route.request, self.gateway.config.images, images, provider)
            exchange.body = self._upstream_body(route, adapter, passthrough, model, dialect)
        except TranslationError as e:
            exchange.release()
            return exchange, replies.error_response(route.dialect, e.status, str(e))
        try:
            auth = await member.credential.auth()
        except CredentialError as e:
            exchange.release()
            pool.disable(member, str(e))
            exchange.note("credential error")
            logger.warning("aiclient-mitm: %s account %s cannot be used: %s", provider, member.label, e)
            raise _SkipAccount(
                replies.error_response(route.dialect, 503, f"account {member.label} of {provider}: {e}")
            ) from None
        exchange.request = self._build(flow.request.headers, route, exchange, auth)
        return exchange, None

    def _upstream_body(
        self, route: Route, adapter: ProviderAdapter, passthrough: bool, model: str, dialect: str
    ) -> dict[str, Any]:
        if passthrough:
            # Same dialect: the client's JSON with only the model changed.
            body = dict(route.body or {})
            if "model" in body or dialect != "gemini":
                body["model"] = model
            if not getattr(adapter, "clamps_reasoning_effort", False):
                return body
            ceiling = self.gateway.config.providers[adapter.id].max_reasoning_effort
            return limit_body_effort(dialect, body, ceiling)
        return adapter.render(self.gateway.config.providers[adapter.id], route.request, model)

    def _build(self, client_headers, route: Route, exchange: Exchange, auth: AuthContext) -> UpstreamRequest:
        adapter = exchange.adapter
        up = adapter.build(
            exchange.config,
            auth,
            exchange.body,
            request=route.request,
            model=exchange.model,
            stream=route.stream,
            client_headers=client_headers,
        )
        forwarded = getattr(adapter, "forwarded_query", None)
        if route.query and forwarded and adapter.dialect == route.dialect:
            up.url = forward_query(up.url, route.query, forwarded)
        return up

    @staticmethod
    def _classify(exchange: Exchange, status: int, body: bytes, headers) -> UpstreamFailure:
        failure = exchange.adapter.classify_error(status, body, headers)
        failure.message = exchange.scrub(failure.message)
        return failure

    def _report(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        logger.info(
            "aiclient-mitm: %s/%s failed (%s): %s", exchange.provider, exchange.account, failure.kind, failure.message
        )
        exchange.pool.report_failure(
            exchange.member,
            exchange.model,
            failure.kind,
            failure.message,
            retry_after=failure.retry_after,
            until=failure.until,
            all_models=failure.all_models,
        )

    def _unavailable(self, route: Route, why: _Unavailable) -> http.Response:
        detail = "; ".join(why.reasons) or f"no usable account for provider {route.provider}"
        if why.retry_after is not None:
            seconds = max(1, int(why.retry_after + 0.999))
            return replies.error_response(
                route.dialect, 429, detail, code="model_cooldown", headers={"retry-after": str(seconds)}
            )
        return replies.error_response(route.dialect, 503, detail)

    # -- whole answers (unary, and streams answered after a retry) ----------------------------

    async def _attempt(
        self, flow: http.HTTPFlow, route: Route, exchange: Exchange
    ) -> tuple[http.Response | None, UpstreamFailure | None]:
        answer, failure = await self._send(flow, route, exchange)
        if failure is not None and failure.kind == "auth" and self._may_refresh(exchange):
            exchange.refreshed = True
            try:
                auth = await exchange.member.credential.force_refresh()
            except CredentialError as e:
                return answer, UpstreamFailure("auth", f"token refresh failed: {e}")
            exchange.request = self._build(flow.request.headers, route, exchange, auth)
            answer, failure = await self._send(flow, route, exchange)
        return answer, failure

    @staticmethod
    def _may_refresh(exchange: Exchange) -> bool:
        return not exchange.refreshed and bool(getattr(exchange.member.credential, "refreshable", False))

    async def _send(
        self, flow: http.HTTPFlow, route: Route, exchange: Exchange
    ) -> tuple[http.Response | None, UpstreamFailure | None]:
        """One request to the upstream: its answer (None: a stream handed to the relay) and, if it
        failed, what the failure means for the account."""
        up = exchange.request
        assert up is not None
        cfg = exchange.config
        send = self._http1.stream if route.stream else self._http1.post
        try:
            r = await send(
                up.url,
                up.headers,
                up.body,
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                proxy=self._proxy(exchange),
            )
        except HttpError as e:
            exchange.note(type(e).__name__)
            message = f"upstream {exchange.provider} unreachable: {type(e).__name__}: {e}"
            return replies.error_response(route.dialect, 502, message), UpstreamFailure("transient", message)
        exchange.note(str(r.status_code))
        _note_usage(exchange, r.headers)
        exchange.upstream_response = r
        if isinstance(r, StreamResponse):
            try:
                await self._hand_to_relay(flow, route, exchange, r)
            except Exception:
                # The gateway's fault, not the account's: no failover, nothing held against it.
                logger.exception("aiclient-mitm: could not hand the stream to the relay")
                r.close()
                message = "the gateway could not relay the upstream stream"
                return replies.error_response(route.dialect, 500, message), UpstreamFailure("bad_request", message)
            return None, None
        if r.status_code >= 400:
            failure = self._classify(exchange, r.status_code, r.content, r.headers)
            return self._upstream_error(route, exchange, r.status_code, r.content, r.headers, failure), failure
        try:
            answer = self._whole_answer(route, exchange, r.content, r.headers.get("content-type", ""))
        except (ValueError, TypeError, KeyError, TranslationError) as e:
            logger.warning("aiclient-mitm: %s returned an unreadable body: %s", exchange.provider, e)
            message = f"upstream {exchange.provider} returned an unreadable body"
            return replies.error_response(route.dialect, 502, message), UpstreamFailure("transient", message)
        return answer, self._in_band_failure(route, exchange)

    def _in_band_failure(self, route: Route, exchange: Exchange) -> UpstreamFailure | None:
        """An error the upstream sent inside a 200 stream that was read whole (Kiro's exception
        frames): before any byte reached the client it is a failure like any other."""
        error = exchange.stream_error
        if error is None:
            return None
        adapted = _stream_failure(exchange, error)
        if adapted is not None:
            return adapted
        kind = {429: "rate_limited", 400: "bad_request", 413: "context_too_long"}.get(error.status, "transient")
        return UpstreamFailure(kind, error.message)

    def _whole_answer(self, route: Route, exchange: Exchange, content: bytes, content_type: str) -> http.Response:
        up = exchange.request
        assert up is not None
        upstream_streamed = route.stream or up.stream_only
        if exchange.passthrough and not upstream_streamed:
            # Relayed as it came, but only if it is what it claims to be: a JSON object (anything
            # else -- an HTML page, a cut body -- is the upstream's failure, not a 200).
            answer = json.loads(content)
            if not isinstance(answer, dict):
                raise ValueError("the answer is not a JSON object")
            exchange.passthrough_json = answer
            return http.Response.make(
                200, content, {"content-type": content_type or "application/json", **replies.CORS_HEADERS}
            )
        if upstream_streamed:
            decoder = self._decoder(exchange)
            events = decoder.feed(content) + decoder.close()
            collector = ResponseAccumulator()
            collector.feed(events)
            exchange.response = collector.response()
            exchange.stream_error = collector.error
            if collector.error is not None and not route.stream:
                err = collector.error
                status = err.status if 400 <= err.status <= 599 else 502
                return replies.error_response(route.dialect, status, err.message)
            if route.stream:
                encoder = get_codec(route.dialect).encoder(self._encoder_options(route, exchange))
                body = encoder.feed(events) + encoder.close()
                return http.Response.make(200, body, self._stream_headers(route))
        else:
            exchange.response = get_codec(exchange.dialect).parse_response(json.loads(content))
            if up.response_filter is not None:
                exchange.response = up.response_filter(exchange.response)
        codec = get_codec(route.dialect)
        if route.dialect == "openai_responses":
            # Only the request knows which tools were freeform (custom) ones: their calls go back
            # as custom_tool_call items, which Codex needs to run apply_patch.
            client_body = codec.render_response(
                exchange.response, route.model, custom_tools=_custom_tools(route), tool_namespaces=_namespaces(route)
            )
        else:
            client_body = codec.render_response(exchange.response, route.model)
        return replies.json_response(200, client_body)

    def _upstream_error(
        self,
        route: Route,
        exchange: Exchange,
        status: int,
        body: bytes,
        headers,
        failure: UpstreamFailure | None = None,
    ) -> http.Response:
        if failure is not None and failure.kind == "context_too_long":
            # Worded so agents (Claude Code's /compact) recognise it and shorten the conversation.
            return replies.error_response(route.dialect, 400, failure.message, code="context_length_exceeded")
        message = exchange.scrub(errors.extract_message(body))
        retry_after = headers.get("retry-after") or _failure_retry_after(failure)
        if failure is not None and failure.kind in ("auth", "suspended"):
            # The gateway's account was refused, not the caller's key: a 401 would send the client
            # looking at its own credentials.
            return replies.error_response(
                route.dialect,
                503,
                f"upstream {exchange.provider} refused account {exchange.account} ({status}): {failure.message}",
            )
        if not 400 <= status <= 599:
            status = 502
        return replies.error_response(
            route.dialect,
            status,
            f"upstream {exchange.provider} answered {status}: {message}",
            headers={"retry-after": retry_after} if retry_after else None,
        )

    # -- streams ---------------------------------------------------------------------------

    async def _hand_to_relay(
        self, flow: http.HTTPFlow, route: Route, exchange: Exchange, upstream: StreamResponse
    ) -> None:
        """The upstream stream started: give it to the loopback relay and re-target the flow there.
        The flow keeps the upstream's host, path and headers (credentials masked) for mitmweb. Not
        its body: the relay needs none, and a prompt of hundreds of KB would be copied over the
        loopback and held by every open stream's flow (the Inspect addon keeps the upstream
        request, body included, for the inspector's Upstream view)."""
        up = exchange.request
        assert up is not None
        port = await self._relay.start()
        gemini_json = route.dialect == "gemini" and route.gemini_mode == "json"
        exchange.transcoder = self._transcoder(route, exchange)
        job = RelayJob(
            upstream,
            exchange.transcoder,
            self._stream_headers(route),
            read_timeout=exchange.config.read_timeout,
            keepalive=self.gateway.config.stream_keepalive,
            keepalive_bytes=errors.stream_keepalive(route.dialect, gemini_json=gemini_json),
            on_end=partial(self._stream_ended, exchange),
        )
        token = self._relay.register(job)
        url = urllib.parse.urlsplit(up.url)
        req = flow.request
        req.scheme = "http"
        req.host = "127.0.0.1"
        req.port = port
        req.path = url.path + (f"?{url.query}" if url.query else "")
        req.method = "POST"
        fields = [(b"host", url.netloc.rpartition("@")[2].encode())]
        fields += [
            (k.encode(), mask_header(k, v).encode())
            for k, v in up.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        ]
        fields += [(RELAY_HEADER.encode(), token.encode()), (b"content-length", b"0")]
        req.headers = http.Headers(fields)
        req.content = b""
        exchange.relay_token = token
        exchange.relayed = True

    def _stream_ended(self, exchange: Exchange, reason: str | None, client_gone: bool) -> None:
        """The relay finished a stream: free the account and judge it. A cut or a read timeout cools
        the account like any transient failure; an in-band upstream error counts as its status says;
        a client that left says nothing about the account."""
        exchange.relay_token = None
        exchange.release()
        if client_gone:
            return
        if reason is not None:
            exchange.note("cut")
            self._report(exchange, UpstreamFailure("transient", reason))
            return
        transcoder = exchange.transcoder
        error = transcoder.upstream_error if transcoder is not None else None
        adapted = _stream_failure(exchange, error) if error is not None else None
        if error is None:
            exchange.pool.report_success(exchange.member, exchange.model)
            if exchange.affinity is not None:
                task = asyncio.get_running_loop().create_task(self._bind(exchange), name="aiclient-affinity")
                self._binds.add(task)
                task.add_done_callback(self._binds.discard)
        elif adapted is not None:
            self._report(exchange, adapted)
        elif error.status in (429, 529, 500, 502, 503, 504):
            kind = "rate_limited" if error.status == 429 else "transient"
            self._report(exchange, UpstreamFailure(kind, error.message))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        if exchange is not None and exchange.relayed and flow.response is not None:
            # The relay writes the client's stream already framed: mitmproxy passes it on as it comes
            # (counting it), and the relay writes the rest straight to the client where it may.
            token = exchange.relay_token
            if token is None:
                flow.response.stream = True
            else:
                flow.response.stream = self._relay.attach_client(token, client_writer(flow), ctx.options.tcp_timeout)

    def _stream_headers(self, route: Route) -> dict[str, str]:
        json_mode = route.dialect == "gemini" and route.gemini_mode == "json"
        content_type = "application/json" if json_mode else get_codec(route.dialect).stream_content_type
        return {"content-type": content_type, "cache-control": "no-cache", **replies.CORS_HEADERS}

    def _decoder(self, exchange: Exchange) -> StreamDecoder:
        up = exchange.request
        if up is not None and up.decoder is not None:
            return up.decoder()
        return get_codec(exchange.dialect).decoder()

    def _encoder_options(self, route: Route, exchange: Exchange) -> EncoderOptions:
        up = exchange.request
        return EncoderOptions(
            model=route.model,
            include_usage=route.request.include_usage if route.request else False,
            gemini_mode=route.gemini_mode,
            tool_name_map=up.tool_name_map if up is not None else None,
            custom_tools=_custom_tools(route),
            tool_namespaces=_namespaces(route),
        )

    def _transcoder(self, route: Route, exchange: Exchange) -> StreamTranscoder | StreamRelay:
        decoder = self._decoder(exchange)
        label = f"{route.dialect}<-{exchange.provider}/{exchange.account}"
        gemini_json = route.dialect == "gemini" and route.gemini_mode == "json"
        if exchange.passthrough:
            return StreamRelay(decoder, ResponseAccumulator(), label, route.dialect, gemini_json)
        encoder = get_codec(route.dialect).encoder(self._encoder_options(route, exchange))
        return StreamTranscoder(decoder, encoder, ResponseAccumulator(), label, route.dialect, gemini_json)

    def error(self, flow: http.HTTPFlow) -> None:
        """The flow broke before mitmproxy fetched its stream from the relay (the client left):
        close the upstream stream and free the account."""
        exchange: Exchange | None = flow.metadata.get(EXCHANGE)
        if exchange is not None and exchange.relay_token is not None:
            self._relay.drop(exchange.relay_token)


def _release_unrelayed(flow: http.HTTPFlow) -> None:
    """Frees the account of the flow's last attempt unless the relay is streaming it (release is
    idempotent, so an attempt already released on its normal path is left as it is)."""
    exchange: Exchange | None = flow.metadata.get(EXCHANGE)
    if exchange is not None and not exchange.relayed:
        exchange.release()


# -- optional adapter hooks (an adapter that lacks them gets the generic behaviour) -------------------


def _note_usage(exchange: Exchange, headers) -> None:
    """`adapter.usage_windows(headers)`: the account's usage limits as the upstream reported them."""
    read = getattr(exchange.adapter, "usage_windows", None)
    if read is not None:
        try:
            exchange.pool.note_usage(exchange.member, read(headers))
        except Exception:
            logger.exception("aiclient-mitm: could not read the usage headers of %s", exchange.provider)


def _stream_failure(exchange: Exchange, error: ir.StreamError) -> UpstreamFailure | None:
    """`adapter.classify_stream_error(error)`: an in-stream error read like the HTTP form."""
    classify = getattr(exchange.adapter, "classify_stream_error", None)
    if classify is None:
        return None
    failure = classify(error)
    failure.message = exchange.scrub(failure.message)
    return failure


def _failure_retry_after(failure: UpstreamFailure | None) -> str | None:
    """Retry-After for a rate-limit or quota answer the upstream sent without one (reset time in the body)."""
    if failure is None or failure.kind not in ("rate_limited", "quota_exhausted"):
        return None
    wait = failure.retry_after
    if wait is None and failure.until is not None:
        wait = failure.until - time.time()
    return str(max(1, int(wait + 0.999))) if wait is not None else None


def _namespaces(route: Route) -> dict[str, tuple[str, str]] | None:
    """Responses clients' namespaced tools (Codex): flat name -> (namespace, name)."""
    if route.dialect != "openai_responses" or route.request is None:
        return None
    return tool_namespaces(route.request.tools) or None


def _custom_tools(route: Route) -> frozenset[str]:
    return frozenset(t.name for t in route.request.tools if t.kind == "custom") if route.request else frozenset()
