"""What the addons share: the loaded config and the per-flow metadata they pass along.

State passes between addons only through `flow.metadata`, under the names defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth.client_keys import ClientKey, KeyLimits, Keyring
from auth.pool import AccountPool
from auth.state import LocalState, StateBackend
from core.config import Config
from translators import ir

# flow.metadata keys
ROUTE = "aiclient.route"
CLIENT_KEY_ID = "aiclient.client_key_id"  # short hash of the key (prompt log records)
CLIENT_KEY = "aiclient.client_key"  # the caller's ClientKey (policy), set by ClientAuth
CLIENT_KEY_NAME = "aiclient.client_key_name"  # its name: the caller's identity everywhere
KEY_ADMITTED = "aiclient.key_admitted"  # the key's policy admitted the request (its tokens count)
EXCHANGE = "aiclient.exchange"
# Names of client tools the chosen upstream could not take (addons/dropped_tools.py); plain data.
DROPPED_TOOLS = "aiclient.dropped_tools"


@dataclass(slots=True)
class Gateway:
    """The loaded configuration, shared by every addon of one gateway process."""

    config: Config = field(default_factory=Config)
    config_path: Path | None = None
    # The client keys in force (config api_keys, AICLIENT_API_KEYS, keys_file), built by ClientAuth.
    keyring: Keyring = field(default_factory=Keyring)
    # Per-key request/token counters (KeyPolicy builds them; Usage adds each answer's tokens).
    key_limits: KeyLimits | None = None
    # provider id -> its account pool (built by the Pools addon)
    pools: dict[str, AccountPool] = field(default_factory=dict)
    # provider id -> models its upstream listed at start (adapters with `models_request`)
    discovered_models: dict[str, list[str]] = field(default_factory=dict)
    # The built-in demo provider (addons/demo.py): "implicit" when no provider has a usable account
    # (every request is served canned), "explicit" with default_provider: demo, else None.
    demo: str | None = None
    # Cooldowns, counters, usage, affinity and refresh locks shared with other processes (config `state`).
    state: StateBackend = field(default_factory=LocalState)


@dataclass(slots=True)
class Route:
    """What the Router decided about a request; later addons only read it."""

    dialect: str  # client dialect: openai_chat | openai_responses | claude | gemini
    operation: str  # generate | count_tokens | models | model | health | preflight | telemetry
    provider: str | None = None
    model: str = ""  # as the client asked
    upstream_model: str = ""
    stream: bool = False
    body: dict[str, Any] | None = None  # the client's JSON, parsed once
    request: ir.Request | None = None  # the same, as IR
    gemini_mode: str = "sse"  # Gemini client streams: "sse" (?alt=sse) or "json" (array)
    path_model: str | None = None  # model named in a Gemini path or /v1/models/{id}
    claude_shape: bool = False  # /v1/models asked by a Claude client
    # The client's query parameters, for the few an upstream of the same dialect must see again
    # (Claude Code's `?beta=true`); see ProviderAdapter.forwarded_query.
    query: dict[str, str] = field(default_factory=dict)
    # Set by addons that change the IR (system prompt): the client's body can no longer be sent
    # as it is, even to an upstream of the same dialect.
    ir_modified: bool = False
    # The caller's key (set by KeyPolicy): model lists and fallbacks must stay inside its policy.
    client_key: ClientKey | None = None
