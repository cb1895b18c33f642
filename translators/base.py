"""The contract every dialect codec fulfils, and the errors codecs raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from translators.ir import Event, Request, Response, StreamError


class TranslationError(ValueError):
    """The client sent something the IR cannot represent; answered 400 naming `field`."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


@dataclass(slots=True)
class EncoderOptions:
    """What a client stream encoder needs to know up front."""

    model: str
    # OpenAI chat: stream_options.include_usage as the client asked.
    include_usage: bool = False
    # Claude message_start needs an input count before the upstream reports one.
    input_tokens_estimate: int = 0
    # Gemini client: "sse" for ?alt=sse, "json" for the JSON-array stream.
    gemini_mode: str = "sse"
    # Tool names the gateway renamed for the upstream (e.g. Kiro's 64-char cap): upstream -> client.
    tool_name_map: dict[str, str] | None = None
    # Responses clients: names of their freeform (custom) tools, whose calls go back as
    # custom_tool_call items rather than function calls.
    custom_tools: frozenset[str] = frozenset()
    # Responses clients: flat tool name -> (namespace, name) of their namespaced tools, whose calls
    # go back with separate `namespace` and `name` fields (Codex routes calls by both).
    tool_namespaces: dict[str, tuple[str, str]] | None = None
    # Fixed id / creation time (golden vectors); empty/0 = take the upstream's id / now.
    response_id: str = ""
    created: int = 0


class StreamDecoder(Protocol):
    """Upstream bytes -> IR events, incrementally: holds partial frames between calls."""

    def feed(self, data: bytes) -> list[Event]: ...

    def close(self) -> list[Event]:
        """End of the upstream body. Emits a StreamError if the stream never finished."""
        ...


class StreamEncoder(Protocol):
    """IR events -> client bytes, incrementally. Never raises; never needs the whole body."""

    def feed(self, events: list[Event]) -> bytes: ...

    def close(self) -> bytes:
        """Terminate the stream grammatically if it is not terminated yet. Idempotent."""
        ...


class Codec(Protocol):
    name: str
    # Content type of this dialect's streamed responses.
    stream_content_type: str
    # Whether an upstream of this dialect fetches http(s) image URLs itself; if not, the gateway
    # downloads them and inlines the bytes before render_request.
    accepts_image_urls: bool

    def parse_request(self, body: Any, *, model: str | None = None, stream: bool | None = None) -> Request:
        """Client request -> IR. Raises TranslationError naming the offending field."""
        ...

    def render_request(self, req: Request, model: str) -> dict[str, Any]:
        """IR -> this dialect's request body, for an upstream that speaks it."""
        ...

    def parse_response(self, body: Any) -> Response:
        """Upstream unary response -> IR."""
        ...

    def render_response(self, resp: Response, model: str) -> Any:
        """IR -> this dialect's unary response, for a client that speaks it."""
        ...

    def decoder(self) -> StreamDecoder: ...

    def encoder(self, opts: EncoderOptions) -> StreamEncoder: ...

    def error_body(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        """This dialect's error JSON for an HTTP status (dialects.md section 10)."""
        ...

    def error_message(self, body: bytes) -> str:
        """The human message inside an upstream error body of this dialect (best effort)."""
        ...


class SafeEncoder:
    """The feed/close plumbing of an SSE client encoder: events are handled one at a time until the
    stream is terminated, a bug in a handler becomes the dialect's in-band error instead of an
    exception into the proxy, and close() terminates a stream that is still open."""

    _done: bool

    def feed(self, events: list[Event]) -> bytes:
        out: list[str] = []
        try:
            for ev in events:
                if self._done:
                    break
                self._event(ev, out)
        except Exception as exc:  # the contract: an encoder never raises into the proxy
            self._abort(StreamError(f"stream translation failed: {exc!r}", 500), out)
        return "".join(out).encode("utf-8", "replace")

    def close(self) -> bytes:
        out: list[str] = []
        if not self._done:
            self._end(out)
        return "".join(out).encode("utf-8", "replace")

    def _event(self, ev: Event, out: list[str]) -> None:
        raise NotImplementedError

    def _abort(self, error: StreamError, out: list[str]) -> None:
        """Emit the in-band error and terminate."""
        raise NotImplementedError

    def _end(self, out: list[str]) -> None:
        """Terminate an open stream grammatically (close() without a Finish)."""
        raise NotImplementedError
