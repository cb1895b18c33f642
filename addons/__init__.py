"""mitmproxy addons of the gateway, one responsibility each, in chain order."""

from __future__ import annotations

from addons.client_auth import ClientAuth
from addons.config_loader import ConfigLoader
from addons.context import Gateway
from addons.kiro_view import KiroView
from addons.local_api import LocalApi
from addons.pools import Pools
from addons.router import Router
from addons.unanswered import Unanswered
from addons.upstream import Upstream


def chain() -> list[object]:
    """The addon chain of one gateway process; they share one Gateway."""
    gateway = Gateway()
    return [
        ConfigLoader(gateway),
        ClientAuth(gateway),
        Router(gateway),
        LocalApi(gateway),
        Pools(gateway),
        Upstream(gateway),
        Unanswered(),
        KiroView(),
    ]
