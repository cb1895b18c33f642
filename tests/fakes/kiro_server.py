"""Fake Kiro (CodeWhisperer) upstream: POST /generateAssistantResponse, plus the two token refresh
endpoints (social `/refreshToken`, SSO-OIDC `/token`) on the same port.

Like the real service (upstreams.md 2.3-2.14) it validates the body with the request rules
(answering the exact "Improperly formed request." 400), checks the bearer token and that a
profileArn comes only with social tokens (403 invalid bearer otherwise), and answers with binary
AWS event-stream frames (valid CRCs) written in random-sized pieces that cut frames mid-prelude,
mid-header and inside multi-byte UTF-8 characters.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.fakes import brain
from tests.fakes.kiro_frames import (
    IMPROPERLY_FORMED,
    event_frame,
    exception_frame,
    split_writes,
    tricky_cuts,
    validate_kiro_request,
)
from tests.fakes.server import Exchange, FakeServer, HttpError

PROFILE_ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
INVALID_BEARER = {"message": "The bearer token included in the request is invalid.", "reason": None}
QUOTA_EXHAUSTED = {"message": "You have reached the limit.", "reason": "MONTHLY_REQUEST_COUNT"}
SUSPENDED = {
    "message": "Your User ID (d-9067642ac7.44f8d4a8) temporarily is suspended. Please contact support.",
    "reason": "TEMPORARILY_SUSPENDED",
}
THROTTLED = {"message": "Too many requests, please wait before trying again.", "reason": None}
INPUT_TOO_LONG = {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"}
INVALID_MODEL = {"message": "Invalid model. Please select a different model to continue.", "reason": "INVALID_MODEL_ID"}
INVALID_REFRESH = {"message": "Invalid refresh token provided"}
KIRO_MODELS = frozenset(
    {
        "auto",
        "claude-sonnet-4",
        "claude-sonnet-4.5",
        "claude-sonnet-4.6",
        "claude-haiku-4.5",
        "claude-opus-4.5",
        "claude-opus-4.6",
        "claude-opus-4.7",
        "claude-opus-4.8",
    }
)
_THINKING_TAGS = re.compile(
    r"\s*<thinking_mode>(?:enabled|interleaved|adaptive)</thinking_mode>"
    r"(?:<max_thinking_length>\d+</max_thinking_length>|<thinking_effort>\w+</thinking_effort>)?\s*"
)


@dataclass
class InBandError:
    """An exception frame sent under HTTP 200 after `after_frames` answer frames."""

    exception_type: str = "ThrottlingException"
    message: str = "Too many requests, please wait before trying again."
    after_frames: int = 2


@dataclass
class _Login:
    kind: str  # "social" | "idc"
    client_id: str | None = None
    client_secret: str | None = None


class FakeKiro(FakeServer):
    """`thinking_style`: "tags" writes <thinking>...</thinking> into the text events (what Kiro does
    for the thinking_mode system tags), "reasoning" sends reasoningContentEvent frames instead.
    `max_input_chars`: longer conversations get Kiro's "Input is too long." 400."""

    def __init__(
        self,
        *,
        thinking_style: str = "tags",
        send_token_usage: bool = True,
        rotate_refresh_tokens: bool = True,
        expires_in: int = 3600,
        max_input_chars: int | None = None,
        max_write: int = 48,
        write_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(write_delay=write_delay, seed=seed)
        self.thinking_style = thinking_style
        self.send_token_usage = send_token_usage
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.expires_in = expires_in
        self.max_input_chars = max_input_chars
        self.max_write = max_write
        self.inband: deque[InBandError] = deque()
        # Why bodies were refused as improperly formed (the real service never says).
        self.rejections: list[str] = []
        self._access: dict[str, _Login] = {}
        self._refresh: dict[str, _Login] = {}
        self._serial = itertools.count(1)

    # -- accounts --------------------------------------------------------------------------------

    def add_social(self, access_token: str | None, refresh_token: str) -> None:
        login = _Login("social")
        if access_token:
            self._access[access_token] = login
        self._refresh[refresh_token] = login

    def add_idc(self, access_token: str | None, refresh_token: str, client_id: str, client_secret: str) -> None:
        login = _Login("idc", client_id, client_secret)
        if access_token:
            self._access[access_token] = login
        self._refresh[refresh_token] = login

    def revoke(self, access_token: str) -> None:
        self._access.pop(access_token, None)

    def refresh_requests(self, path: str | None = None) -> list:
        paths = (path,) if path else ("/refreshToken", "/token")
        return [r for r in self.requests if r.path in paths]

    def generate_requests(self) -> list:
        return [r for r in self.requests if r.path == "/generateAssistantResponse"]

    # -- routing ---------------------------------------------------------------------------------

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        return {"message": err.message, "reason": err.details.get("reason")}

    def handle(self, ex: Exchange) -> None:
        path = ex.request.path
        if ex.request.method != "POST":
            raise HttpError(404, f"No route for {ex.request.method} {path}")
        if path == "/generateAssistantResponse":
            self._generate(ex)
        elif path == "/refreshToken":
            self._refresh_social(ex)
        elif path == "/token":
            self._refresh_idc(ex)
        else:
            raise HttpError(404, f"No route for POST {path}")

    # -- refresh ---------------------------------------------------------------------------------

    def _new_tokens(self, login: _Login, old_refresh: str) -> tuple[str, str]:
        n = next(self._serial)
        access = f"kiro-{login.kind}-access-{n}-{self.new_id('', 12)}"
        self._access[access] = login
        refresh = old_refresh
        if self.rotate_refresh_tokens:
            refresh = f"kiro-{login.kind}-refresh-{n}-{self.new_id('', 12)}"
            del self._refresh[old_refresh]
            self._refresh[refresh] = login
        return access, refresh

    def _refresh_social(self, ex: Exchange) -> None:
        body = ex.request.json
        token = body.get("refreshToken") if isinstance(body, dict) else None
        login = self._refresh.get(token) if isinstance(token, str) else None
        if login is None or login.kind != "social":
            ex.send_json(INVALID_REFRESH, status=400)
            return
        access, refresh = self._new_tokens(login, token)
        ex.send_json(
            {"accessToken": access, "refreshToken": refresh, "profileArn": PROFILE_ARN, "expiresIn": self.expires_in}
        )

    def _refresh_idc(self, ex: Exchange) -> None:
        body = ex.request.json if isinstance(ex.request.json, dict) else {}
        if body.get("grantType") != "refresh_token":
            ex.send_json({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}, 400)
            return
        token = body.get("refreshToken")
        login = self._refresh.get(token) if isinstance(token, str) else None
        if login is None or login.kind != "idc":
            ex.send_json({"error": "invalid_grant", "error_description": "Invalid refresh token provided"}, 400)
            return
        if body.get("clientId") != login.client_id or body.get("clientSecret") != login.client_secret:
            ex.send_json({"error": "invalid_client", "error_description": "Invalid client provided"}, 401)
            return
        access, refresh = self._new_tokens(login, token)
        ex.send_json(
            {"accessToken": access, "refreshToken": refresh, "expiresIn": self.expires_in, "tokenType": "Bearer"}
        )

    # -- generateAssistantResponse -----------------------------------------------------------------

    def _generate(self, ex: Exchange) -> None:
        headers = ex.request.headers
        auth = headers.get("authorization", "")
        login = self._access.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if login is None:
            ex.send_json(INVALID_BEARER, status=403)
            return
        body = ex.request.json
        why = validate_kiro_request(body)
        if why is not None:
            self.rejections.append(why)
            ex.send_json(IMPROPERLY_FORMED, status=400)
            return
        arn = body.get("profileArn")
        if (login.kind == "social") != (arn is not None) or (arn is not None and arn != PROFILE_ARN):
            # Kiro refuses a Builder ID/IdC token that comes with a profileArn (kiro.rs #161).
            ex.send_json(INVALID_BEARER, status=403)
            return
        prompt, model_ids, chars = self._prompt(body)
        if not model_ids <= KIRO_MODELS:
            ex.send_json(INVALID_MODEL, status=400)
            return
        if self.max_input_chars is not None and chars > self.max_input_chars:
            ex.send_json(INPUT_TOO_LONG, status=400)
            return
        answer = brain.answer(prompt)
        frames = self.answer_frames(answer, prompt)
        inband = self.inband.popleft() if self.inband else None
        if inband is not None:
            frames = [*frames[: inband.after_frames], exception_frame(inband.exception_type, inband.message)]
        self._send_frames(ex, frames)

    def _prompt(self, body: dict[str, Any]) -> tuple[brain.Prompt, set[str], int]:
        state = body["conversationState"]
        history = state.get("history") or []
        current = state["currentMessage"]["userInputMessage"]
        users = [e["userInputMessage"] for e in history if "userInputMessage" in e] + [current]
        texts = [e.get("userInputMessage", e.get("assistantResponseMessage", {})).get("content", "") for e in history]
        texts.append(current["content"])
        thinking = _THINKING_TAGS.match(users[0]["content"]) is not None
        text = current["content"]
        if current is users[0]:
            text = _THINKING_TAGS.sub("", text, count=1) if thinking else text
        ctx = current.get("userInputMessageContext") or {}
        results = [
            brain.ToolResult(" ".join(c.get("text", "") for c in r["content"]), r["status"] == "error")
            for r in ctx.get("toolResults") or []
        ]
        tools = [t["toolSpecification"]["name"] for t in ctx.get("tools") or []]
        images = []
        for img in current.get("images") or []:
            try:
                raw = base64.b64decode(img["source"]["bytes"], validate=True)
            except (binascii.Error, ValueError):
                raise HttpError(400, IMPROPERLY_FORMED["message"]) from None
            images.append(brain.Image(f"image/{img['format']}", len(raw)))
        max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
        words = brain.count_words(texts)
        prompt = brain.Prompt(
            text=text if not results else "",
            images=images if not results else [],
            tool_results=results,
            tools=tools,
            thinking=thinking,
            max_tokens=max_tokens,
            words=words,
        )
        return prompt, {u["modelId"] for u in users}, sum(len(t) for t in texts)

    # -- the answer as event-stream frames ---------------------------------------------------------

    def answer_frames(self, answer: brain.Answer, prompt: brain.Prompt) -> list[bytes]:
        rng = random.Random(f"{self.seed}:{len(self.requests)}:frames")
        frames: list[bytes] = []
        text = answer.text
        if answer.thinking and self.thinking_style == "reasoning":
            frames += [event_frame("reasoningContentEvent", {"text": d}) for d in answer.thinking_deltas()]
        elif answer.thinking:
            text = f"<thinking>\n{answer.thinking}</thinking>\n\n{text}"
        frames += [event_frame("assistantResponseEvent", {"content": c}) for c in _random_chunks(text, rng)]
        for call in answer.tool_calls:
            use_id = self.new_id("tooluse_", 22)
            args = json.dumps(call.args, ensure_ascii=False)
            for fragment in brain.json_fragments(args, 3):
                frames.append(event_frame("toolUseEvent", {"toolUseId": use_id, "name": call.name, "input": fragment}))
            frames.append(event_frame("toolUseEvent", {"toolUseId": use_id, "name": call.name, "stop": True}))
            # Kiro sometimes repeats a call after its stop (upstreams.md 2.9): clients must see it once.
            frames.append(
                event_frame("toolUseEvent", {"toolUseId": use_id, "name": call.name, "input": call.args, "stop": True})
            )
        pct = round(100 * answer.input_tokens / 200_000, 4)
        frames.append(event_frame("contextUsageEvent", {"contextUsagePercentage": pct}))
        frames.append(event_frame("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": 0.0123}))
        if self.send_token_usage:
            usage = {
                "uncachedInputTokens": answer.input_tokens - answer.cached_tokens,
                "cacheReadInputTokens": answer.cached_tokens,
                "cacheWriteInputTokens": 0,
                "outputTokens": answer.output_tokens,
                "totalTokens": answer.input_tokens + answer.output_tokens,
            }
            frames.append(event_frame("metadataEvent", {"tokenUsage": usage}))
        stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[answer.finish]
        frames.append(event_frame("messageStopEvent", {"stopReason": stop}))
        return frames

    def _send_frames(self, ex: Exchange, frames: list[bytes]) -> None:
        fault = ex.fault if ex.fault is not None and ex.fault.kind == "reset_mid_stream" else None
        if fault is not None:
            frames = frames[: fault.after_events]
        data = b"".join(frames)
        rng = random.Random(f"{self.seed}:{len(self.requests)}:writes")
        pieces = split_writes(data, rng, max_size=self.max_write, cut_at=tricky_cuts(data))
        ex._start(
            200,
            {
                "content-type": "application/vnd.amazon.eventstream",
                "transfer-encoding": "chunked",
                "x-amzn-requestid": self.new_id("", 32),
            },
            None,
        )
        for piece in pieces:
            ex._write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if self.write_delay:
                time.sleep(self.write_delay)
        if fault is not None:
            ex._handler.close_connection = True  # no terminating chunk: the body is cut off
            return
        ex._write(b"0\r\n\r\n")


def _random_chunks(text: str, rng: random.Random) -> list[str]:
    """Text events of 1..8 characters: tags and words end up split across events."""
    out, pos = [], 0
    while pos < len(text):
        step = rng.randint(1, 8)
        out.append(text[pos : pos + step])
        pos += step
    return out


def token_file(
    kind: str,
    access_token: str,
    refresh_token: str,
    *,
    expires_at: str,
    client_id_hash: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
) -> dict[str, Any]:
    """A token file as the Kiro IDE writes it (plus one field the gateway must keep untouched)."""
    if kind == "social":
        data: dict[str, Any] = {
            "accessToken": access_token,
            "refreshToken": refresh_token,
            "expiresAt": expires_at,
            "authMethod": "social",
            "provider": "Github",
            "profileArn": PROFILE_ARN,
        }
    else:
        data = {
            "accessToken": access_token,
            "refreshToken": refresh_token,
            "expiresAt": expires_at,
            "authMethod": "IdC",
            "provider": "BuilderId",
            "region": "us-east-1",
        }
        if client_id_hash:
            data["clientIdHash"] = client_id_hash
        if client_id:
            data["clientId"] = client_id
            data["clientSecret"] = client_secret
    data["x-ide-private"] = {"keep": "me"}
    return data


# ---------------------------------------------------------------------------------------------
# A Claude Code-shaped client request (for unit and end-to-end tests)

LONG_TOOL_NAME = "mcp__claude_in_chrome_browser_automation__navigate_to_the_weather_page_of_a_city"
_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}


def claude_code_body(ending: str, model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    """What Claude Code sends: cache_control everywhere, a system list, ~25 tools (one over Kiro's
    description limit, one named over 64 characters, the web_search server tool), tool history with
    an is_error result. `ending`: "error_result" ends on a failed tool result, "ask_tool" on a
    user request that makes the brain call the first tool (the long-named one)."""
    bash_doc = "Executes a given bash command in a persistent shell session — with timeouts. " * 160
    tools: list[dict[str, Any]] = [
        {"name": LONG_TOOL_NAME, "description": "Opens the weather page of a city.", "input_schema": _SCHEMA},
        {"name": "Bash", "description": bash_doc, "input_schema": _SCHEMA, "cache_control": {"type": "ephemeral"}},
        {"name": "Read", "description": "Reads a file from the local filesystem.", "input_schema": _SCHEMA},
    ]
    tools += [
        {"name": f"Tool{i}", "description": f"Helper number {i}. " * 40, "input_schema": _SCHEMA} for i in range(22)
    ]
    tools.append({"type": "web_search_20250305", "name": "web_search", "max_uses": 8})
    system = [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "<env>Working directory: /repo</env>", "cache_control": {"type": "ephemeral"}},
    ]
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>Be brief.</system-reminder>"},
                {"type": "text", "text": "read the file", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll read it and check the weather."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"city": "/repo/x"}},
                {"type": "tool_use", "id": "toolu_01B", "name": LONG_TOOL_NAME, "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "No such file", "is_error": True},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "Sunny"}]},
            ],
        },
    ]
    if ending == "error_result":
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_02C", "name": "Bash", "input": {"city": "ls"}}],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_02C",
                        "content": [{"type": "text", "text": "command not found"}],
                        "is_error": True,
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            }
        )
    else:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "The file is missing."}]})
        messages.append({"role": "user", "content": "use the tool please"})
    return {
        "model": model,
        "max_tokens": 32000,
        "system": system,
        "tools": tools,
        "messages": messages,
        "metadata": {"user_id": "user_3f9a_account__session_1c2d"},
    }
