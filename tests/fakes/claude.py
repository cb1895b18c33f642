"""Fake Anthropic Messages upstream: POST /v1/messages and POST /v1/messages/count_tokens.

Validates like api.anthropic.com (alternation, tool_use/tool_result pairing, thinking rules, error shape)
and streams the real event grammar with per-block indexes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from typing import Any

from tests.fakes import brain
from tests.fakes.server import Exchange, FakeServer, HttpError, sse_event

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
IMAGE_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp")
BLOCK_ROLES = {
    "text": ("user", "assistant"),
    "image": ("user",),
    "tool_use": ("assistant",),
    "tool_result": ("user",),
    "thinking": ("assistant",),
    "redacted_thinking": ("assistant",),
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
THINKING_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)


def _invalid(message: str) -> HttpError:
    return HttpError(400, message)


class FakeClaude(FakeServer):
    """Anthropic Messages API.

    `strict_thinking` adds two real rules beyond the basics: thinking signatures must be ones this fake issued,
    and with thinking on, the assistant turn answered by the final tool results must start with a thinking block.
    `text_after_tool_use` appends a text block after tool_use blocks (a new block index in streams).
    """

    invalid_json_message = "There was an error parsing the body of your request. Please make sure it is valid JSON."

    def __init__(
        self,
        api_key: str = "sk-ant-test",
        *,
        bearer: bool = False,
        strict_thinking: bool = True,
        text_after_tool_use: str | None = None,
        split_writes: bool = False,
        write_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(split_writes=split_writes, write_delay=write_delay, seed=seed)
        self.api_key = api_key
        self.bearer = bearer
        self.strict_thinking = strict_thinking
        self.text_after_tool_use = text_after_tool_use
        self.issued_signatures: set[str] = set()

    def stream_error_event(self) -> bytes:
        return sse_event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        kind = ERROR_TYPES.get(err.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": self.new_id("req_")}

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        self._check_auth(request.headers)
        if "anthropic-version" not in request.headers:
            raise _invalid("anthropic-version: header is required")
        if request.method == "POST" and request.path == "/v1/messages":
            self._messages(ex)
        elif request.method == "POST" and request.path == "/v1/messages/count_tokens":
            prompt = self._parse(self._body(request.json), counting=True)[1]
            ex.send_json({"input_tokens": max(1, prompt.words)})
        else:
            raise HttpError(404, "Not found")

    def _check_auth(self, headers: dict[str, str]) -> None:
        if self.bearer:
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer "):
                raise HttpError(401, "Authorization header is required")
            key = auth.removeprefix("Bearer ")
        else:
            if "x-api-key" not in headers:
                raise HttpError(401, "x-api-key header is required")
            key = headers["x-api-key"]
        if key != self.api_key:
            raise HttpError(401, "invalid x-api-key")

    @staticmethod
    def _body(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _invalid("Input should be a valid dictionary")
        return body

    # -- request ----------------------------------------------------------------------------------
    def _parse(self, body: dict[str, Any], counting: bool) -> tuple[str, brain.Prompt]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Field required")
        max_tokens = body.get("max_tokens")
        if not counting:
            if max_tokens is None:
                raise _invalid("max_tokens: Field required")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise _invalid("max_tokens: Input should be a valid integer")
            if max_tokens < 1:
                raise _invalid("max_tokens: Input should be greater than or equal to 1")
        thinking = self._thinking(body, None if counting else max_tokens)
        texts = self._system(body.get("system"))
        tools = self._tools(body.get("tools"))
        prompt = self._conversation(body.get("messages"), texts, thinking)
        prompt.tools, prompt.thinking = tools, thinking
        prompt.max_tokens = None if counting else max_tokens
        return model, prompt

    def _thinking(self, body: dict[str, Any], max_tokens: int | None) -> bool:
        config = body.get("thinking")
        if config is None:
            return False
        kind = config.get("type") if isinstance(config, dict) else None
        if kind == "disabled":
            return False
        if kind == "enabled":
            budget = config.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool):
                raise _invalid("thinking.enabled.budget_tokens: Field required")
            if budget < 1024:
                raise _invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if max_tokens is not None and budget >= max_tokens:
                raise _invalid(f"`max_tokens` must be greater than `thinking.budget_tokens`. {THINKING_DOCS}")
        elif kind != "adaptive":
            raise _invalid(
                f"thinking: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                "'adaptive', 'disabled', 'enabled'"
            )
        if body.get("temperature") not in (None, 1):
            raise _invalid(f"`temperature` may only be set to 1 when thinking is enabled. {THINKING_DOCS}")
        if body.get("top_k") is not None:
            raise _invalid(f"`top_k` must be unset when thinking is enabled. {THINKING_DOCS}")
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")
        return True

    @staticmethod
    def _system(system: Any) -> list[str]:
        if system is None:
            return []
        if isinstance(system, str):
            return [system]
        if not isinstance(system, list):
            raise _invalid("system: Input should be a valid list")
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _invalid(f"system.{i}: Input should be a text block")
            texts.append(block["text"])
        return texts

    @staticmethod
    def _tools(tools: Any) -> list[str]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        names = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{i}: Input should be a valid dictionary")
            kind = tool.get("type")
            if kind not in (None, "custom"):
                if not isinstance(tool.get("name"), str):
                    raise _invalid(f"tools.{i}.{kind}.name: Field required")
                continue  # a server tool (web_search_..., bash_...): never called back by the client
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise _invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if "input_schema" not in tool:
                raise _invalid(f"tools.{i}.custom.input_schema: Field required")
            if not isinstance(tool["input_schema"], dict):
                raise _invalid(f"tools.{i}.custom.input_schema: Input should be a valid dictionary")
            names.append(name)
        return names

    def _conversation(self, messages: Any, texts: list[str], thinking: bool) -> brain.Prompt:
        if messages is None:
            raise _invalid("messages: Field required")
        if not isinstance(messages, list):
            raise _invalid("messages: Input should be a valid list")
        if not messages:
            raise _invalid("messages: at least one message is required")
        turns: list[tuple[str, list[dict[str, Any]]]] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise _invalid(f"messages.{i}: Input should be a valid dictionary")
            role = msg.get("role")
            if role == "system" and i > 0:
                # Anthropic accepts system messages inside the conversation (current Claude Code sends them);
                # they take no part in the user/assistant alternation.
                self._blocks(msg.get("content"), i, "user", False, texts)
                continue
            if role not in ("user", "assistant"):
                raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise _invalid('messages: first message must use the "user" role')
            if turns and turns[-1][0] == role:
                raise _invalid(
                    'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{role}" roles in a row'
                )
            final_assistant = role == "assistant" and i == len(messages) - 1
            turns.append((role, self._blocks(msg.get("content"), i, role, final_assistant, texts)))
        self._check_pairing(turns)
        last_user = next(blocks for role, blocks in reversed(turns) if role == "user")
        if self.strict_thinking and thinking and turns[-1][0] == "user" and len(turns) > 1:
            self._check_thinking_first(turns)
        results = [self._tool_result(b) for b in last_user if b["type"] == "tool_result"]
        if results:
            return brain.Prompt(tool_results=results, words=brain.count_words(texts))
        text = "\n".join(b["text"] for b in last_user if b["type"] == "text")
        images = [self._image(b, "") for b in last_user if b["type"] == "image"]
        return brain.Prompt(text=text, images=images, words=brain.count_words(texts))

    def _blocks(self, content: Any, i: int, role: str, final_assistant: bool, texts: list[str]) -> list[dict[str, Any]]:
        if isinstance(content, str):
            content = [{"type": "text", "text": content}] if content else []
        elif not isinstance(content, list):
            raise _invalid(f"messages.{i}.content: Input should be a valid list")
        if not content and not final_assistant:
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        for j, block in enumerate(content):
            self._block(block, f"messages.{i}.content.{j}", role, texts)
        return content

    def _block(self, block: Any, path: str, role: str, texts: list[str]) -> None:
        if not isinstance(block, dict):
            raise _invalid(f"{path}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in BLOCK_ROLES:
            expected = ", ".join(f"'{k}'" for k in BLOCK_ROLES)
            raise _invalid(
                f"{path}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {expected}"
            )
        if role not in BLOCK_ROLES[kind]:
            raise _invalid(f"{path}: `{kind}` blocks can only be in `{BLOCK_ROLES[kind][0]}` messages")
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise _invalid("messages: text content blocks must be non-empty")
            texts.append(block["text"])
        elif kind == "image":
            self._image(block, path)
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not TOOL_USE_ID.fullmatch(block["id"]):
                raise _invalid(f"{path}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
            if not isinstance(block.get("name"), str):
                raise _invalid(f"{path}.tool_use.name: Field required")
            if not isinstance(block.get("input"), dict):
                raise _invalid(f"{path}.tool_use.input: Input should be a valid dictionary")
            texts.append(json.dumps(block["input"]))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _invalid(f"{path}.tool_result.tool_use_id: Field required")
            if block.get("is_error") not in (None, True, False):
                raise _invalid(f"{path}.tool_result.is_error: Input should be a valid boolean")
            texts.append(self._tool_result(block, path).text)
        elif kind == "thinking":
            if not isinstance(block.get("thinking"), str) or not isinstance(block.get("signature"), str):
                raise _invalid(f"{path}.thinking: `thinking` and `signature` are required")
            if self.strict_thinking and block["signature"] not in self.issued_signatures:
                raise _invalid(f"{path}: Invalid `signature` in `thinking` block")
            texts.append(block["thinking"])
        elif not isinstance(block.get("data"), str):
            raise _invalid(f"{path}.redacted_thinking.data: Field required")

    def _tool_result(self, block: dict[str, Any], path: str = "") -> brain.ToolResult:
        content = block.get("content")
        if content is None or isinstance(content, str):
            return brain.ToolResult(content or "", bool(block.get("is_error")))
        if not isinstance(content, list):
            raise _invalid(f"{path}.tool_result.content: Input should be a valid list")
        texts = []
        for k, inner in enumerate(content):
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text" and isinstance(inner.get("text"), str):
                texts.append(inner["text"])
            elif kind == "image":
                self._image(inner, f"{path}.tool_result.content.{k}")
            else:
                raise _invalid(f"{path}.tool_result.content.{k}: Input tag '{kind}' is not a valid tool result block")
        return brain.ToolResult("\n".join(texts), bool(block.get("is_error")))

    @staticmethod
    def _image(block: dict[str, Any], path: str) -> brain.Image:
        source = block.get("source")
        kind = source.get("type") if isinstance(source, dict) else None
        if kind == "url" and isinstance(source.get("url"), str):
            return brain.Image(mime="url", url=source["url"])
        if kind != "base64":
            raise _invalid(
                f"{path}.image.source: Input tag '{kind}' does not match any of the expected tags: 'base64', 'url'"
            )
        if source.get("media_type") not in IMAGE_MIMES:
            raise _invalid(
                f"{path}.image.source.base64.media_type: "
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
            )
        try:
            raw = base64.b64decode(source.get("data") or "", validate=True)
        except (binascii.Error, TypeError):
            raise _invalid(f"{path}.image.source.base64.data: Invalid base64 data") from None
        if not raw:
            raise _invalid(f"{path}.image.source.base64.data: Field required")
        return brain.Image(mime=source["media_type"], size=len(raw))

    @staticmethod
    def _check_pairing(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        for i, (_, blocks) in enumerate(turns):
            previous = turns[i - 1][1] if i else []
            offered = {b["id"] for b in previous if b["type"] == "tool_use"}
            for j, block in enumerate(blocks):
                if block["type"] == "tool_result" and block["tool_use_id"] not in offered:
                    raise _invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` block "
                        "in the previous message."
                    )
        for i, (_, blocks) in enumerate(turns):
            uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
            following = turns[i + 1][1] if i + 1 < len(turns) else []
            answered = {b["tool_use_id"] for b in following if b["type"] == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise _invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )

    @staticmethod
    def _check_thinking_first(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """With thinking on, the assistant turn answered by the final tool results must open with thinking."""
        if not any(b["type"] == "tool_result" for b in turns[-1][1]):
            return
        assistant = turns[-2][1]
        first = assistant[0]["type"] if assistant else None
        if first not in ("thinking", "redacted_thinking"):
            raise _invalid(
                f"messages.{len(turns) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include "
                f"thinking blocks from previous turns. To avoid this requirement, disable `thinking`. {THINKING_DOCS}"
            )

    # -- response ---------------------------------------------------------------------------------
    def _messages(self, ex: Exchange) -> None:
        body = self._body(ex.request.json)
        model, prompt = self._parse(body, counting=False)
        answer = brain.answer(prompt)
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool" and not prompt.tool_results:
            # A forced tool is always called (with the brain's weather arguments), as Claude does.
            answer.tool_calls, answer.text, answer.finish = (
                [brain.ToolCall(choice["name"], {"city": "Paris"})],
                "",
                "tool_calls",
            )
        stream = body.get("stream") or False
        if not stream and ex.fault is not None and ex.fault.kind == "overloaded_mid_stream":
            raise HttpError(529, "Overloaded")
        blocks = self._content(answer)
        message = {
            "id": self.new_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": STOP_REASONS[answer.finish],
            "stop_sequence": None,
            "usage": {
                "input_tokens": answer.input_tokens - answer.cached_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": answer.cached_tokens,
                "output_tokens": self._output_tokens(answer),
                "service_tier": "standard",
            },
        }
        if stream:
            ex.send_sse(self._stream(message, ex))
        else:
            ex.send_json(message)

    def _content(self, answer: brain.Answer) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if answer.thinking and answer.signature:
            self.issued_signatures.add(answer.signature)
            blocks.append({"type": "thinking", "thinking": answer.thinking, "signature": answer.signature})
        if answer.text:
            blocks.append({"type": "text", "text": answer.text})
        for call in answer.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": self.new_id("toolu_01", 22), "name": call.name, "input": call.args}
            )
        if answer.tool_calls and self.text_after_tool_use:
            blocks.append({"type": "text", "text": self.text_after_tool_use})
        return blocks

    def _output_tokens(self, answer: brain.Answer) -> int:
        extra = self.text_after_tool_use if answer.tool_calls and self.text_after_tool_use else ""
        return answer.output_tokens + answer.reasoning_tokens + brain.count_words([extra])

    @staticmethod
    def _stream(message: dict[str, Any], ex: Exchange) -> Iterator[bytes]:
        overload = ex.fault is not None and ex.fault.kind == "overloaded_mid_stream"

        def event(kind: str, **data: Any) -> bytes:
            return sse_event({"type": kind, **data}, event=kind)

        start_usage = {**message["usage"], "output_tokens": 1}
        del start_usage["service_tier"]
        yield event("message_start", message={**message, "content": [], "stop_reason": None, "usage": start_usage})
        yield event("ping")
        for index, block in enumerate(message["content"]):
            kind = block["type"]
            if kind == "thinking":
                start = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": piece} for piece in brain.word_deltas(block["thinking"])
                ]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif kind == "text":
                start = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in brain.word_deltas(block["text"])]
            else:
                start = {**block, "input": {}}
                fragments = ["", *brain.json_fragments(json.dumps(block["input"]))]
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in fragments]
            yield event("content_block_start", index=index, content_block=start)
            for delta in deltas:
                yield event("content_block_delta", index=index, delta=delta)
                if overload and kind != "thinking":
                    yield event("error", error={"type": "overloaded_error", "message": "Overloaded"})
                    return
            yield event("content_block_stop", index=index)
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        yield event("message_delta", delta=delta, usage={"output_tokens": message["usage"]["output_tokens"]})
        yield event("message_stop")
