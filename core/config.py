"""The gateway's configuration file: schema, loading and error messages.

Validated with pydantic once at start; a bad file stops the start with the key path and the
reason (`providers.openai-custom.base_url: not a URL`). `${VAR}` / `${VAR:-default}` in string
values are replaced from the environment first, so secrets can stay out of the file.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

ProviderId = Literal[
    "gemini-cli-oauth",
    "claude-kiro-oauth",
    "openai-qwen-oauth",
    "openai-codex-oauth",
    "openai-custom",
    "claude-custom",
    "openaiResponses-custom",
    "gemini-custom",
    "vertex-ai",
    # Built in: canned answers when no provider has a usable account (addons/demo.py).
    "demo",
]
PROVIDER_IDS: tuple[str, ...] = ProviderId.__args__  # type: ignore[attr-defined]


class ConfigError(Exception):
    """A configuration problem, worded for the user: `key.path: reason`."""


PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4", "socks4a")


def _proxy_url(value: Any) -> Any:
    """An outbound proxy URL; checked without ever putting the URL (it may hold a password) in the error."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(text, str):
        raise ValueError("must be a URL string")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        raise ValueError(f"must be an http://, https:// or socks5:// URL with a host (got scheme {parts.scheme!r})")
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return SecretStr(text)


# A proxy URL for upstream calls, token refreshes and image fetches (credentials allowed in it, never shown).
ProxyUrl = Annotated[SecretStr | None, BeforeValidator(_proxy_url)]


class _Strict(BaseModel):
    # Unknown keys are mistakes (a typo would otherwise be silently ignored).
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    # 0 lets the OS pick a free port (tests); the log says which.
    port: Annotated[int, Field(ge=0, le=65535)] = 3000


class Account(_Strict):
    """One upstream account. Which credential field applies depends on the provider."""

    label: str | None = None
    api_key: SecretStr | None = None
    credentials: Path | None = None
    credentials_base64: SecretStr | None = None
    project_id: str | None = None
    # vertex-ai: the region of the endpoint ("us-central1", "europe-west4", ... or "global").
    location: str | None = None
    enabled: bool = True
    # Outbound proxy for this account's upstream calls and token refreshes (wins over the provider's).
    proxy: ProxyUrl = None

    def display_label(self, index: int) -> str:
        """A name for logs and status pages -- never derived from the secret."""
        if self.label:
            return self.label
        if self.credentials is not None:
            return self.credentials.name
        return f"account-{index + 1}"


class HealthCheck(_Strict):
    # Seconds between checks of accounts that are cooling or failed lately; 0 = off.
    interval: Annotated[float, Field(ge=0)] = 0.0
    # Model asked in the cheap check request (provider default model when unset).
    model: str | None = None


class Provider(_Strict):
    enabled: bool = True
    # Which usable account serves the next request.
    strategy: Literal["round-robin", "least-recently-used", "fill-first"] = "round-robin"
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    base_url: AnyHttpUrl | None = None
    accounts: list[Account] = Field(default_factory=list)
    # Models listed by /v1/models for this provider; requests for other models still pass through.
    models: list[str] = Field(default_factory=list)
    # claude-custom only: some relays want `Authorization: Bearer` instead of `x-api-key`.
    auth_header: Literal["x-api-key", "bearer"] = "x-api-key"
    # Seconds to wait for the upstream's TCP/TLS connect; and the longest silence between two bytes
    # of an upstream answer, unary or streamed (a stream silent longer ends with the client
    # dialect's in-band error and the account cools like after any transient failure).
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    read_timeout: Annotated[float, Field(gt=0)] = 300.0
    # Outbound proxy for this provider's accounts (wins over the global one, loses to an account's).
    proxy: ProxyUrl = None
    # OAuth providers: where tokens are refreshed (None = the provider's documented default;
    # Kiro URLs may contain {region}), and how long before expiry a token is refreshed.
    token_url: AnyHttpUrl | None = None
    refresh_url: str | None = None
    refresh_idc_url: str | None = None
    refresh_ahead: Annotated[float, Field(ge=0)] = 900.0
    # Client model name -> upstream model id (Kiro), on top of the provider's defaults.
    model_map: dict[str, str] = Field(default_factory=dict)
    # Local request limits per account, enforced before sending (Qwen's free tier).
    requests_per_minute: Annotated[int, Field(gt=0)] | None = None
    requests_per_day: Annotated[int, Field(gt=0)] | None = None
    # Provider-specific opt-in switches; each provider validates its own (see README).
    options: dict[str, Any] = Field(default_factory=dict)
    # Highest reasoning effort the upstream accepts; higher client efforts (and budgets) are clamped
    # to it. Unset: the default of the provider's dialect (OpenAI: high; Claude, Gemini, Kiro: max).
    max_reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


class ModelRoute(_Strict):
    provider: ProviderId
    model: str


class Retry(_Strict):
    # Upstream attempts per request, across accounts and fallbacks, while no byte reached the client.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    # Longest the gateway waits inside one request for a cooling account before answering 429.
    max_wait: Annotated[float, Field(ge=0)] = 30.0
    # First backoff step in seconds (exponential with jitter) when retrying after every account failed.
    backoff_base: Annotated[float, Field(gt=0)] = 0.5


class Cooldown(_Strict):
    rate_limit_base: Annotated[float, Field(gt=0)] = 1.0  # 429 without a delay: base * 2^n s ...
    rate_limit_max: Annotated[float, Field(gt=0)] = 1800.0  # ... capped here
    transient: Annotated[float, Field(ge=0)] = 60.0  # 408/5xx/timeouts/connection errors
    quota_default: Annotated[float, Field(ge=0)] = 3600.0  # quota gone, no reset time given
    error_window: Annotated[float, Field(gt=0)] = 600.0  # window of the recent-error count


class Fallback(_Strict):
    # provider -> providers tried next with the same model.
    providers: dict[ProviderId, list[ProviderId]] = Field(default_factory=dict)
    # model -> "provider:model" targets tried next.
    models: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _targets(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for model, targets in value.items():
            for target in targets:
                provider, sep, name = target.partition(":")
                if not sep or not name or provider not in PROVIDER_IDS:
                    raise ValueError(f"{model}: {target!r} is not 'provider:model' with a known provider")
        return value


class Limits(_Strict):
    # Largest request body accepted, before and after undoing its Content-Encoding (gzip, deflate, br,
    # zstd are decoded with a running limit); larger ones get 413 in the caller's dialect.
    max_body: ByteSize = ByteSize(20 * 1024 * 1024)
    # Deepest JSON nesting accepted ([ and { levels); deeper bodies get 400 before they are parsed.
    max_depth: Annotated[int, Field(ge=8, le=1000)] = 64
    # Seconds a client has to send a whole request head, from connect (or from the end of the
    # previous answer on a keep-alive connection, see idle_timeout).
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    # Seconds without a byte while a request body is being received.
    body_timeout: Annotated[float, Field(gt=0)] = 60.0
    # Seconds a keep-alive connection may sit idle after an answer before the next request head is in.
    idle_timeout: Annotated[float, Field(gt=0)] = 120.0
    # Seconds an answer may make no progress toward a slow reader (mitmproxy's tcp_timeout).
    write_timeout: Annotated[float, Field(gt=0)] = 300.0
    # Open client connections; past it new connections are closed at once.
    max_connections: Annotated[int, Field(ge=1)] = 1000


class Images(_Strict):
    # Download http(s) image URLs for upstreams that only take inline images (Gemini, Kiro).
    fetch_remote: bool = True
    max_bytes: ByteSize = ByteSize(10 * 1024 * 1024)
    timeout: Annotated[float, Field(gt=0)] = 15.0
    # Loopback/private/link-local addresses are refused so a client cannot make the gateway probe
    # its own network; switch on only where every client is trusted (tests, local setups).
    allow_private_addresses: bool = False


class PromptLogSettings(_Strict):
    # none: off; console: one JSON line per exchange on stdout; file: JSONL files under `dir`.
    mode: Literal["none", "console", "file"] = "none"
    # Relative to the config file's folder. One file per UTC day, and a new one past max_file_size.
    dir: Path = Path("prompt-logs")
    max_file_size: ByteSize = ByteSize(256 * 1024 * 1024)
    # Regular expressions; every match in message text is replaced by [REDACTED] before writing.
    redact: list[str] = Field(default_factory=list)

    @field_validator("redact")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"[{i}] {pattern!r} is not a valid regular expression: {e}") from None
        return value


class Replacement(_Strict):
    old: Annotated[str, Field(min_length=1)]
    new: str = ""


class SystemPromptSettings(_Strict):
    # Text file that replaces (overwrite) or ends (append) every request's system prompt; relative to
    # the config file's folder; re-read when it changes.
    file: Path | None = None
    mode: Literal["overwrite", "append"] = "overwrite"
    # Literal old -> new replacements applied, in order, to the client's system text.
    replacements: list[Replacement] = Field(default_factory=list)


class InspectSettings(_Strict):
    # mitmweb: how much of each streamed answer is kept for the inspector to show (0 = nothing).
    stream_body_max: ByteSize = ByteSize(1024 * 1024)


_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class ClientKeyEntry(_Strict):
    """A client key with a policy. Plain strings in api_keys stay unrestricted admins; an object
    entry names the key (its identity everywhere -- the key itself is never shown) and limits it."""

    key: SecretStr
    name: str
    # fnmatch globs over the model the client asked for; None = every model.
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    providers: list[ProviderId] | None = None
    requests_per_minute: Annotated[int, Field(gt=0)] | None = None
    requests_per_day: Annotated[int, Field(gt=0)] | None = None
    # Input + output tokens, counted from each answer's usage (UTC day / UTC calendar month).
    tokens_per_day: Annotated[int, Field(gt=0)] | None = None
    tokens_per_month: Annotated[int, Field(gt=0)] | None = None
    expires_at: datetime | None = None
    admin: bool = False

    @field_validator("key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("empty (an unset environment variable?)")
        if secret != secret.strip() or any(c in secret for c in ", \t\r\n"):
            raise ValueError("must not contain spaces, commas or line breaks")
        return value

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _KEY_NAME.match(value):
            raise ValueError("1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
        if value.startswith("key-"):
            raise ValueError("names starting with 'key-' are reserved for plain keys")
        return value

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A time without a zone is read as UTC, like every window of the key's limits.
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _api_key_kind(value: Any) -> str:
    return "plain" if isinstance(value, str | SecretStr) else "entry"


# Tags are dropped from error paths by format_errors: `api_keys.1.name: required`.
ApiKey = Annotated[
    Annotated[SecretStr, Tag("plain")] | Annotated[ClientKeyEntry, Tag("entry")],
    Discriminator(_api_key_kind),
]
_UNION_TAGS = frozenset({"plain", "entry"})


def check_unique_keys(entries: list[ApiKey], where: str = "api_keys") -> None:
    """Names and keys are unique: a name is the key's identity, a key must map to one policy."""
    names: dict[str, int] = {}
    secrets: dict[str, int] = {}
    for i, entry in enumerate(entries):
        secret = (entry.key if isinstance(entry, ClientKeyEntry) else entry).get_secret_value()
        if secret in secrets:
            raise ValueError(f"{where}.{i}: the same key as {where}.{secrets[secret]}")
        secrets[secret] = i
        if isinstance(entry, ClientKeyEntry):
            if entry.name in names:
                raise ValueError(f"{where}.{i}.name: {entry.name!r} is already used by {where}.{names[entry.name]}")
            names[entry.name] = i


class MetricsSettings(_Strict):
    # GET /metrics without a key (for a Prometheus that cannot send one); off: admin key required.
    public: bool = False


class StateSettings(_Strict):
    """Where shared state lives: `local` (memory + files in state_dir) or `redis` (several processes)."""

    backend: Literal["local", "redis"] = "local"
    # redis://[:password@]host:port/db, rediss:// (TLS) or unix://; the password is never logged.
    redis_url: SecretStr | None = None
    # Seconds any one Redis call may take; past it the process serves from its own memory.
    timeout: Annotated[float, Field(gt=0, le=10)] = 0.5

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateSettings:
        if self.backend == "redis":
            url = self.redis_url.get_secret_value() if self.redis_url else ""
            if not url:
                raise ValueError("redis_url: required when backend is redis (redis://host:6379/0)")
            if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
                raise ValueError("redis_url: must start with redis://, rediss:// or unix://")
        return self


class AffinitySettings(_Strict):
    """Session affinity: one conversation stays on the account of its first turn (warm prompt caches)."""

    enabled: bool = True
    ttl: Annotated[float, Field(gt=0)] = 3600.0


class Config(_Strict):
    listen: Listen = Field(default_factory=Listen)
    # Client keys. Empty (and no AICLIENT_API_KEYS in the environment): a key is generated at first
    # start and kept in `<config file>.client-key` beside the config.
    # A plain string is an unrestricted admin key; an object is a ClientKeyEntry (name, allowlists,
    # limits, expiry, admin).
    api_keys: list[ApiKey] = Field(default_factory=list)
    # A YAML list of more entries like api_keys', re-read when it changes (relative to the config
    # file's folder); `python -m auth keys ...` edits it.
    keys_file: Path | None = None
    default_provider: ProviderId | None = None
    providers: dict[ProviderId, Provider] = Field(default_factory=dict)
    # alias -> provider + upstream model, or "provider:model".
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    images: Images = Field(default_factory=Images)
    prompt_log: PromptLogSettings = Field(default_factory=PromptLogSettings)
    system_prompt: SystemPromptSettings = Field(default_factory=SystemPromptSettings)
    inspect: InspectSettings = Field(default_factory=InspectSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    retry: Retry = Field(default_factory=Retry)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    fallback: Fallback = Field(default_factory=Fallback)
    # Seconds of upstream silence in a stream after which the client gets its dialect's keep-alive
    # (Claude `event: ping`, an SSE comment for OpenAI/Responses, a blank line for Gemini); 0 = never.
    stream_keepalive: Annotated[float, Field(ge=0)] = 15.0
    # Outbound proxy for every upstream call, token refresh and image fetch (http, https, socks5).
    proxy: ProxyUrl = None
    # HTTP/2 toward clients. Off by default: every SDK speaks HTTP/1.1 and it is cheaper.
    http2: bool = False
    # Pool state, discovered projects and usage counters; relative to the config file's folder.
    state_dir: Path = Path("state")
    state: StateSettings = Field(default_factory=StateSettings)
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for alias, target in value.items():
                if isinstance(target, str):
                    provider, sep, model = target.partition(":")
                    if not sep or not model:
                        raise ValueError(f"{alias}: expected 'provider:model' or {{provider, model}}, got {target!r}")
                    target = {"provider": provider, "model": model}
                out[alias] = target
            return out
        return value

    @model_validator(mode="after")
    def _unique_keys(self) -> Config:
        check_unique_keys(self.api_keys)
        return self

    @model_validator(mode="after")
    def _default_provider_configured(self) -> Config:
        if self.default_provider not in (None, "demo") and self.default_provider not in self.providers:
            raise ValueError(
                f"default_provider: {self.default_provider!r} is not under providers "
                f"(configured: {', '.join(self.providers) or 'none'})"
            )
        return self

    def configured_providers(self) -> list[str]:
        return [pid for pid, p in self.providers.items() if p.enabled]

    def keys_file_path(self, config_path: Path | None) -> Path | None:
        """keys_file, relative to the config file's folder."""
        if self.keys_file is None:
            return None
        path = self.keys_file.expanduser()
        return path if path.is_absolute() else (config_path.parent if config_path else Path.cwd()) / path

    def state_path(self, config_path: Path | None) -> Path:
        """state_dir, relative to the config file's folder."""
        if self.state_dir.is_absolute():
            return self.state_dir
        return (config_path.parent if config_path else Path.cwd()) / self.state_dir


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


_FRIENDLY = {
    "url_parsing": "not a URL",
    "url_scheme": "not an http(s) URL",
    "literal_error": None,
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-") and p not in _UNION_TAGS)
        msg = _FRIENDLY.get(e["type"]) or e["msg"]
        if e["type"] == "literal_error" and "providers" in e["loc"]:
            msg = f"unknown provider id (known: {', '.join(PROVIDER_IDS)})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping of keys at the top level")
    try:
        return Config.model_validate(expand_env(data))
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_config(data)
