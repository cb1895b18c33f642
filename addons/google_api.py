"""Real token counts from the upstream's own endpoint (Google's `:countTokens`), for adapters that
offer `count_tokens_request`; every other provider keeps LocalApi's estimate.
"""

from __future__ import annotations

import logging

import httpx2
from mitmproxy import http

from addons import replies
from addons.context import ROUTE, Gateway, Route
from auth.credentials import CredentialError
from auth.pool import AllCoolingDown, NoUsableAccount
from providers import ADAPTERS
from translators.base import TranslationError
from translators.errors import extract_message

logger = logging.getLogger(__name__)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "[REDACTED]") if len(secret) >= 8 else text


class RemoteCountTokens:
    """count_tokens routed to a provider with a real counting endpoint is answered by it (a real
    count, not the local estimate), with an account of the provider's pool."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._client: httpx2.AsyncClient | None = None

    async def done(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.operation != "count_tokens" or route.provider is None or route.request is None:
            return
        try:
            flow.response = await self._count(route)
        except Exception:
            logger.exception("aiclient-mitm: counting tokens upstream failed unexpectedly")
            flow.response = replies.error_response(route.dialect, 502, f"upstream {route.provider} count failed")

    async def _count(self, route: Route) -> http.Response | None:
        """The upstream's count in the caller's shape, its error, or None to leave it to LocalApi."""
        assert route.provider is not None and route.request is not None
        adapter = ADAPTERS.get(route.provider)
        counter = getattr(adapter, "count_tokens_request", None)
        pool = self.gateway.pools.get(route.provider)
        if adapter is None or counter is None or pool is None:
            return None
        config = self.gateway.config.providers[route.provider]
        model = route.upstream_model
        try:
            member = pool.acquire(model)
        except (AllCoolingDown, NoUsableAccount):
            return None  # no account to ask: the local estimate is better than an error
        try:
            auth = await member.credential.auth()
            up = counter(config, auth, route.request, model)
            if up is None:
                return None
            if self._client is None:
                self._client = httpx2.AsyncClient(trust_env=False, follow_redirects=False)
            timeout = httpx2.Timeout(config.read_timeout, connect=config.connect_timeout)
            r = await self._client.post(up.url, headers=up.headers, content=up.body, timeout=timeout)
        except TranslationError as e:
            return replies.error_response(route.dialect, e.status, str(e))
        except (CredentialError, httpx2.HTTPError) as e:
            logger.warning("aiclient-mitm: %s countTokens failed, estimating locally: %s", route.provider, e)
            return None
        finally:
            pool.release(member)
        if r.status_code >= 400:
            message = _scrub(extract_message(r.content), auth.token)
            status = r.status_code if 400 <= r.status_code <= 599 else 502
            return replies.error_response(
                route.dialect, status, f"upstream {route.provider} answered {r.status_code}: {message}"
            )
        try:
            total = int(r.json()["totalTokens"])
        except (ValueError, KeyError, TypeError):
            return replies.error_response(route.dialect, 502, f"upstream {route.provider} returned an unreadable count")
        if route.dialect == "gemini":
            return replies.json_response(200, {"totalTokens": total})
        return replies.json_response(200, {"input_tokens": total})
