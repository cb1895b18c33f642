"""mitmproxy addons of the gateway, one responsibility each, in chain order."""

from __future__ import annotations

from addons.admin_api import AdminApi
from addons.client_auth import ClientAuth
from addons.client_limits import ClientLimits
from addons.config_loader import ConfigLoader
from addons.context import Gateway
from addons.dashboard import Dashboard
from addons.demo import Demo
from addons.dropped_tools import DroppedTools
from addons.flow_inspect import Inspect
from addons.google_api import RemoteCountTokens
from addons.hook_dispatch import FastHookDispatch
from addons.key_policy import KeyPolicy
from addons.kiro_view import KiroView
from addons.lean import Lean
from addons.local_api import LocalApi
from addons.metrics import Metrics
from addons.pools import Pools
from addons.router import Router
from addons.shared_state import SharedState
from addons.system_prompt import SystemPrompt
from addons.trailers import drop_trailers
from addons.unanswered import Unanswered
from addons.upstream import Upstream
from addons.usage import Usage


def chain() -> list[object]:
    """The addon chain of one gateway process; they share one Gateway."""
    # Imported here so `python -m addons.prompt_log export` does not import its own module twice.
    from addons.prompt_log import PromptLog

    drop_trailers()
    gateway = Gateway()
    usage = Usage(gateway)
    metrics = Metrics(gateway)
    inspect = Inspect(gateway)
    return [
        FastHookDispatch(),
        Lean(),
        ConfigLoader(gateway),
        ClientLimits(gateway),
        ClientAuth(gateway),
        Router(gateway),
        # After the Router: the policy needs the model asked for and the provider chosen.
        KeyPolicy(gateway),
        # Before LocalApi so count_tokens counts the system prompt the upstream will really get.
        SystemPrompt(gateway),
        # Before LocalApi: a provider with a real countTokens endpoint counts instead of the estimate.
        RemoteCountTokens(gateway),
        LocalApi(gateway),
        SharedState(gateway),
        Pools(gateway),
        # After Pools: the demo is on when none of their accounts is usable.
        Demo(gateway),
        # Keeps the client's request before Upstream re-targets a stream (mitmweb shows both sides).
        inspect.capture,
        Upstream(gateway),
        PromptLog(gateway),
        usage,
        metrics,
        Dashboard(gateway, metrics, usage),
        AdminApi(gateway),
        DroppedTools(),
        inspect,
        Unanswered(),
        KiroView(),
    ]
