"""Demo: a first answer without credentials.

When no configured provider has a usable account (a fresh `make run`, no keys in the environment),
or when `default_provider: demo` is set, the gateway serves from the built-in `demo` provider: a
small OpenAI Chat Completions server on a loopback port of its own, started by this addon, with the
`demo` provider adapter pointed at it. Every client dialect reaches it through the normal
translation path, streamed or not, with tool calls; every answer says it is canned, and so does the
start banner. Configuring any real provider turns the demo off (unless `default_provider: demo`).

The server runs on mitmproxy's event loop, started by the first request routed to the demo (so the
gateway listens on nothing else until the demo is used, and nothing runs while it is off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from typing import Any

import h11
from mitmproxy import http

from addons.context import ROUTE, Gateway, Route
from auth.credentials import StaticKey
from auth.pool import AccountPool, PoolAccount
from core.config import Provider
from providers import ADAPTERS

logger = logging.getLogger(__name__)

DEMO = "demo"
LABEL = "[demo]"
NOTICE = (
    "This is a canned answer from aiclient-mitm's built-in demo provider: no provider has a usable "
    "account yet. Set OPENAI_API_KEY or ANTHROPIC_API_KEY (or edit config.yaml) and restart for real answers."
)
_MAX_ECHO = 200
_MAX_BODY = 32 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The canned brain: deterministic answers from the request alone.


# Context blocks clients and the gateway put into a user turn; the demo echoes the user's own words.
_CONTEXT_BLOCK = re.compile(r"<(system_message|system-reminder)>.*?</\1>", re.DOTALL)


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return _CONTEXT_BLOCK.sub("", content).strip() if isinstance(content, str) else ""


def _sample(schema: Any) -> Any:
    """A value of the schema's type, for the arguments of a canned tool call."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else list(props)
        return {name: _sample(props.get(name)) for name in required if name in props}
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(kind or "", "demo")


def canned_answer(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(text, tool calls). A tool is called when the last user message names it; tool results are
    acknowledged; anything else is echoed. Always labelled as canned."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        results = []
        for msg in reversed(messages):
            if not isinstance(msg, dict) or msg.get("role") != "tool":
                break
            results.insert(0, _text_of(msg.get("content"))[:_MAX_ECHO])
        return f"{LABEL} The tool returned: {'; '.join(results)}. {NOTICE}", []
    said = _text_of(last.get("content")).strip()
    tools = [t.get("function") for t in body.get("tools") or () if isinstance(t, dict)]
    tools = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if tools and body.get("tool_choice") != "none":
        lowered = said.lower()
        named = next((t for t in tools if t["name"].lower() in lowered), None)
        if named is None and body.get("tool_choice") not in (None, "auto"):
            named = tools[0]
        if named is not None:
            call = {"name": named["name"], "arguments": json.dumps(_sample(named.get("parameters") or {}))}
            return f"{LABEL} Canned call of {named['name']}.", [call]
    echo = said if len(said) <= _MAX_ECHO else said[:_MAX_ECHO] + "…"
    return f"{LABEL} You said: {echo}\n\n{NOTICE}", []


def _words(text: str) -> int:
    return max(1, len(text.split()))


def completion(body: dict[str, Any]) -> dict[str, Any]:
    text, calls = canned_answer(body)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_demo_{i}", "type": "function", "function": call} for i, call in enumerate(calls)
        ]
    prompt = _words(json.dumps(body.get("messages", "")))
    return {
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model") or DEMO),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": _words(text), "total_tokens": prompt + _words(text)},
    }


def completion_chunks(body: dict[str, Any]) -> list[bytes]:
    """The same answer as OpenAI stream chunks, a few words each, then usage and [DONE]."""
    whole = completion(body)
    message = whole["choices"][0]["message"]
    base = {"id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"], "model": whole["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        payload = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    words = message["content"].split(" ")
    for i in range(0, len(words), 4):
        piece = " ".join(words[i : i + 4])
        out.append(chunk({"content": piece if i == 0 else " " + piece}))
    for i, call in enumerate(message.get("tool_calls") or ()):
        fn = call["function"]
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}))
    out.append(chunk({}, whole["choices"][0]["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        payload = {**base, "choices": [], "usage": whole["usage"]}
        out.append(b"data: " + json.dumps(payload).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


# ---------------------------------------------------------------------------------------------
# The loopback server (HTTP/1.1 with keep-alive, via h11).


class DemoServer:
    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.server: asyncio.Server | None = None
        self._starting = asyncio.Lock()  # concurrent first requests start one server

    @property
    def url(self) -> str:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    async def start(self) -> None:
        async with self._starting:
            if self.server is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
            self.server = await asyncio.start_server(self._serve, sock=sock)
            self.sock = sock

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            while True:
                request, body = await self._read(conn, reader)
                if request is None:
                    return
                await self._answer(conn, writer, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _read(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 300)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.ProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, raw: bytes
    ) -> None:
        path = request.target.decode("latin-1").partition("?")[0]
        if request.method != b"POST" or not path.endswith("/chat/completions"):
            await self._json(
                conn,
                writer,
                404,
                {
                    "error": {
                        "message": f"the demo only answers POST /v1/chat/completions, not {path}",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            await self._json(
                conn, writer, 400, {"error": {"message": f"invalid JSON: {e}", "type": "invalid_request_error"}}
            )
            return
        if not body.get("stream"):
            await self._json(conn, writer, 200, completion(body))
            return
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"transfer-encoding", b"chunked"),
        ]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        for piece in completion_chunks(body):
            writer.write(conn.send(h11.Data(data=piece)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    @staticmethod
    async def _json(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


# ---------------------------------------------------------------------------------------------
# The addon


def demo_mode(gateway: Gateway) -> str | None:
    """ "explicit" (default_provider: demo), "implicit" (no provider has a usable account) or None."""
    config = gateway.config
    if config.default_provider == DEMO:
        return "explicit"
    real = [pool for pid, pool in gateway.pools.items() if pid != DEMO]
    if any(acct.unusable is None for pool in real for acct in pool.accounts):
        return None
    return "implicit"


class Demo:
    """Decides whether the demo is on (after Pools built the real pools), and runs its upstream."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server = DemoServer()

    def configure(self, updated: set[str]) -> None:
        if "config" not in updated or self.gateway.config_path is None:
            return
        mode = demo_mode(self.gateway)
        self.gateway.demo = mode
        if mode is None:
            self.gateway.pools.pop(DEMO, None)
            return
        config = self.gateway.config
        if DEMO not in config.providers:
            # Upstream reads the provider's settings from the config, like any other provider's.
            self.gateway.config = config.model_copy(update={"providers": {**config.providers, DEMO: Provider()}})
        self.gateway.pools[DEMO] = AccountPool(DEMO, [PoolAccount("canned", StaticKey("demo"))])

    async def request(self, flow: http.HTTPFlow) -> None:
        """The first request routed to the demo starts its server (a few ms, once)."""
        if flow.response is not None or self.gateway.demo is None or self.server.server is not None:
            return
        route: Route | None = flow.metadata.get(ROUTE)
        if route is None or route.provider != DEMO:
            return
        await self.server.start()
        ADAPTERS[DEMO].default_base_url = self.server.url

    def running(self) -> None:
        if self.gateway.demo is None:
            return
        why = (
            "default_provider is demo"
            if self.gateway.demo == "explicit"
            else "no configured provider has a usable account (set OPENAI_API_KEY or ANTHROPIC_API_KEY, or edit the config)"  # noqa: E501
        )
        logger.warning(
            "aiclient-mitm DEMO MODE: %s; %s requests get CANNED answers from the built-in demo provider",
            why,
            "all" if self.gateway.demo == "implicit" else "default-provider",
        )

    async def done(self) -> None:
        await self.server.stop()
