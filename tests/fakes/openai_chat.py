"""Fake OpenAI Chat Completions upstream: POST /v1/chat/completions and GET /v1/models.

Validates requests the way api.openai.com does (same messages, same error shape) and answers in the
real unary and streaming grammars, plus the stream noise seen from OpenAI-compatible servers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

from tests.fakes import brain
from tests.fakes.server import Exchange, FakeServer, HttpError, RecordedRequest, sse_event

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ROLES = ("system", "developer", "user", "assistant", "tool")
IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
FINGERPRINT = "fp_fake0001"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4.1", "o4-mini")


def json_type(value: Any) -> str:
    """The article + type name OpenAI uses in "expected X, but got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "an unknown value")


def openai_error(err: HttpError) -> dict[str, Any]:
    """OpenAI's error envelope; shared with the Responses fake."""
    default_type = {401: "invalid_request_error", 429: "requests"}.get(
        err.status, "server_error" if err.status >= 500 else "invalid_request_error"
    )
    default_code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(err.status)
    error = {
        "message": err.message,
        "type": err.details.get("type", default_type),
        "param": err.details.get("param"),
        "code": err.details.get("code", default_code),
    }
    return {"error": error}


JSON_SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def check_json_schema_format(fmt: Any, param: str) -> None:
    """Structured-output formats as OpenAI checks them (Chat `response_format`, Responses `text.format`):
    a json_schema format needs a name and a schema whose types are JSON Schema's own lowercase names,
    so Gemini's proto enum types ("OBJECT", "STRING") are refused as OpenAI refuses them."""
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise HttpError(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
            param=f"{param}.type",
            code="invalid_value",
        )
    if kind != "json_schema":
        return
    spec = fmt.get("json_schema", fmt) if param == "response_format" else fmt
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise HttpError(400, f"Missing required parameter: '{param}.json_schema.name'.", param=f"{param}.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise HttpError(400, f"Invalid type for '{param}.schema': expected an object.", param=f"{param}.schema")
    for found in _schema_types(schema):
        if found not in JSON_SCHEMA_TYPES:
            raise HttpError(
                400,
                f"Invalid schema for response_format '{name}': In context=(), '{found}' is not valid under any of "
                "the given schemas.",
                param=param,
                code="invalid_json_schema",
            )


def _schema_types(node: Any) -> list[Any]:
    """Every `type` value in a JSON schema (property names are keys under `properties`, not schema keywords)."""
    if isinstance(node, list):
        return [t for child in node for t in _schema_types(child)]
    if not isinstance(node, dict):
        return []
    kind = node.get("type")
    found = list(kind) if isinstance(kind, list) else [] if kind is None else [kind]
    for key, child in node.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(child, dict):
            found += [t for sub in child.values() for t in _schema_types(sub)]
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "prefixItems"):
            found += _schema_types(child)
    return found


def check_bearer(request: RecordedRequest, api_key: str) -> None:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        raise HttpError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    key = auth.removeprefix("Bearer ")
    if key != api_key:
        raise HttpError(
            401,
            f"Incorrect API key provided: {key[:3]}***{key[-4:]}. "
            "You can find your API key at https://platform.openai.com/account/api-keys.",
        )


def object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HttpError(400, f"Invalid type for 'body': expected an object, but got {json_type(body)} instead.")
    return body


def decode_image_url(url: Any, param: str, allow_urls: bool) -> brain.Image:
    """Data URLs are decoded so the brain can report mime + size; remote URLs only when allowed."""
    if not isinstance(url, str):
        raise HttpError(
            400, f"Invalid type for '{param}': expected a string, but got {json_type(url)} instead.", param=param
        )
    match = DATA_URL.fullmatch(url)
    if match is None:
        if allow_urls and url.startswith(("http://", "https://")):
            return brain.Image(mime="url", url=url)
        raise HttpError(400, f"unsupported image URL: {url[:40]}", param=param, code="invalid_image_url")
    mime, data = match.groups()
    if mime not in IMAGE_MIMES:
        raise HttpError(
            400, "Invalid MIME type. Only image types are supported.", param=param, code="invalid_image_format"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise HttpError(400, "Invalid base64 image_url.", param=param, code="invalid_base64") from None
    return brain.Image(mime=mime, size=len(raw))


def check_max_tokens(value: Any, param: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise HttpError(
            400, f"Invalid type for '{param}': expected an integer, but got {json_type(value)} instead.", param=param
        )
    if value < minimum:
        raise HttpError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    return value


def _unanswered(ids: set[str], param: str) -> HttpError:
    return HttpError(
        400,
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(sorted(ids))}",
        param=param,
    )


class FakeOpenAIChat(FakeServer):
    """OpenAI Chat Completions. `stream_noise` adds a `: keep-alive` comment and an empty `data:` frame."""

    invalid_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
    )

    def __init__(
        self,
        api_key: str = "sk-test-openai",
        *,
        allow_image_urls: bool = False,
        models: tuple[str, ...] = DEFAULT_MODELS,
        stream_noise: bool = True,
        split_writes: bool = False,
        write_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(split_writes=split_writes, write_delay=write_delay, seed=seed)
        self.api_key = api_key
        self.allow_image_urls = allow_image_urls
        self.models = models
        self.stream_noise = stream_noise

    def stream_error_event(self) -> bytes:
        # What api.openai.com sends when a completion fails mid-stream.
        error = {"message": "The server had an error while processing your request.", "type": "server_error"}
        return sse_event({"error": {**error, "param": None, "code": None}})

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        return openai_error(err)

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        check_bearer(request, self.api_key)
        if request.method == "GET" and request.path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in self.models]
            ex.send_json({"object": "list", "data": data})
        elif request.method == "POST" and request.path == "/v1/chat/completions":
            self._completions(ex)
        else:
            raise HttpError(404, f"Invalid URL ({request.method} {request.path})")

    # -- request ----------------------------------------------------------------------------------
    def _completions(self, ex: Exchange) -> None:
        body = object_body(ex.request.json)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise HttpError(400, "you must provide a model parameter", param="model")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise HttpError(400, f"Invalid type for 'stream': expected a boolean, but got {json_type(stream)} instead.")
        if body.get("stream_options") is not None and not stream:
            raise HttpError(
                400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise HttpError(
                400,
                f"Invalid value: '{effort}'. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
                param="reasoning_effort",
                code="invalid_value",
            )
        check_json_schema_format(body.get("response_format"), "response_format")
        prompt = self._conversation(body.get("messages"))
        prompt.tools = self._tools(body.get("tools"))
        prompt.thinking = effort not in (None, "none")
        limit_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        prompt.max_tokens = check_max_tokens(body.get(limit_field), limit_field)
        answer = brain.answer(prompt)
        completion_id = self.new_id("chatcmpl-", 29)
        calls = [(self.new_id("call_"), call) for call in answer.tool_calls]
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            ex.send_sse(self._stream(completion_id, model, answer, calls, include_usage))
        else:
            ex.send_json(self._unary(completion_id, model, answer, calls))

    def _conversation(self, messages: Any) -> brain.Prompt:
        if messages is None:
            raise HttpError(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if not isinstance(messages, list) or not messages:
            raise HttpError(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        texts: list[str] = []
        window: set[str] | None = None  # tool_call ids of the assistant message tool messages may answer
        unanswered: set[str] = set()
        last_text, last_images = "", []
        results: list[brain.ToolResult] = []
        for i, msg in enumerate(messages):
            path = f"messages[{i}]"
            if not isinstance(msg, dict):
                raise HttpError(
                    400, f"Invalid type for '{path}': expected an object, but got {json_type(msg)} instead."
                )
            role = msg.get("role")
            if role not in ROLES:
                raise HttpError(
                    400,
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                    "'tool', and 'developer'.",
                    param=f"{path}.role",
                    code="invalid_value",
                )
            if role == "tool":
                call_id = msg.get("tool_call_id")
                if window is None:
                    raise HttpError(
                        400,
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.",
                        param=f"{path}.role",
                    )
                if call_id not in window:
                    raise HttpError(
                        400,
                        f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                        "'tool_calls' of previous message.",
                        param=f"{path}.tool_call_id",
                    )
                unanswered.discard(call_id)
                text, _ = self._content(msg.get("content"), path, ("text",))
                texts.append(text)
                results.append(brain.ToolResult(text))
                continue
            if unanswered:
                raise _unanswered(unanswered, f"{path}.role")
            window, results = None, []
            if role == "assistant":
                ids = self._assistant_calls(msg, path, texts)
                if ids:
                    window, unanswered = set(ids), set(ids)
                if msg.get("content") is not None or not ids:
                    texts.append(self._content(msg.get("content"), path, ("text", "refusal"))[0])
            elif role == "user":
                last_text, last_images = self._content(msg.get("content"), path, ("text", "image_url"))
                texts.append(last_text)
            else:
                texts.append(self._content(msg.get("content"), path, ("text",))[0])
        if unanswered:
            raise _unanswered(unanswered, "messages")
        if results:
            return brain.Prompt(tool_results=results, words=brain.count_words(texts))
        return brain.Prompt(text=last_text, images=last_images, words=brain.count_words(texts))

    def _content(self, content: Any, path: str, allowed: tuple[str, ...]) -> tuple[str, list[brain.Image]]:
        if isinstance(content, str):
            return content, []
        if not isinstance(content, list):
            raise HttpError(
                400,
                f"Invalid type for '{path}.content': expected one of a string or array of objects, "
                f"but got {json_type(content)} instead.",
                param=f"{path}.content",
            )
        if not content:
            raise HttpError(
                400,
                f"Invalid '{path}.content': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param=f"{path}.content",
                code="empty_array",
            )
        texts: list[str] = []
        images: list[brain.Image] = []
        for j, part in enumerate(content):
            part_path = f"{path}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                supported = ", ".join(f"'{a}'" for a in allowed)
                raise HttpError(
                    400, f"Invalid value: '{kind}'. Supported values are: {supported}.", param=f"{part_path}.type"
                )
            if kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else None
                images.append(decode_image_url(url, f"{part_path}.image_url.url", self.allow_image_urls))
                continue
            text = part.get(kind)
            if not isinstance(text, str):
                raise HttpError(400, f"Missing required parameter: '{part_path}.{kind}'.", param=f"{part_path}.{kind}")
            texts.append(text)
        return "\n".join(texts), images

    def _assistant_calls(self, msg: dict[str, Any], path: str, texts: list[str]) -> list[str]:
        calls = msg.get("tool_calls")
        if calls is None:
            if msg.get("content") is None:
                raise HttpError(
                    400, "Invalid value for 'content': expected a string, got null.", param=f"{path}.content"
                )
            return []
        if not isinstance(calls, list) or not calls:
            raise HttpError(400, f"Invalid '{path}.tool_calls': empty array.", param=f"{path}.tool_calls")
        ids = []
        for k, call in enumerate(calls):
            call_path = f"{path}.tool_calls[{k}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or call.get("type") != "function" or not isinstance(call.get("id"), str):
                raise HttpError(
                    400, f"Invalid '{call_path}': expected a function tool call with an id.", param=call_path
                )
            if not isinstance(fn.get("name"), str):
                raise HttpError(400, f"Missing required parameter: '{call_path}.function.name'.")
            arguments = fn.get("arguments")
            if not isinstance(arguments, str):
                raise HttpError(
                    400,
                    f"Invalid type for '{call_path}.function.arguments': expected a string, "
                    f"but got {json_type(arguments)} instead.",
                    param=f"{call_path}.function.arguments",
                    code="invalid_type",
                )
            try:
                json.loads(arguments)
            except ValueError:
                raise HttpError(
                    400,
                    f"Invalid '{call_path}.function.arguments': not valid JSON.",
                    param=f"{call_path}.function.arguments",
                ) from None
            texts.append(arguments)
            ids.append(call["id"])
        return ids

    def _tools(self, tools: Any) -> list[str]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise HttpError(400, f"Invalid type for 'tools': expected an array, but got {json_type(tools)} instead.")
        names = []
        for i, tool in enumerate(tools):
            path = f"tools[{i}]"
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise HttpError(
                    400,
                    f"Invalid value: '{kind}'. Supported values are: 'function' and 'custom'.",
                    param=f"{path}.type",
                )
            fn = tool.get("function")
            if not isinstance(fn, dict):
                raise HttpError(400, f"Missing required parameter: '{path}.function'.", param=f"{path}.function")
            name = fn.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise HttpError(
                    400,
                    f"Invalid '{path}.function.name': string does not match pattern. Expected a string that matches "
                    "the pattern '^[a-zA-Z0-9_-]+$'.",
                    param=f"{path}.function.name",
                    code="invalid_value",
                )
            if "parameters" in fn and not isinstance(fn["parameters"], dict):
                raise HttpError(
                    400,
                    f"Invalid type for '{path}.function.parameters': expected an object, "
                    f"but got {json_type(fn['parameters'])} instead.",
                    param=f"{path}.function.parameters",
                    code="invalid_type",
                )
            names.append(name)
        return names

    # -- response ---------------------------------------------------------------------------------
    @staticmethod
    def _usage(answer: brain.Answer) -> dict[str, Any]:
        completion = answer.output_tokens + answer.reasoning_tokens
        return {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": completion,
            "total_tokens": answer.input_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": answer.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _unary(
        self, completion_id: str, model: str, answer: brain.Answer, calls: list[tuple[str, brain.ToolCall]]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text or None,
            "refusal": None,
            "annotations": [],
        }
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.args)}}
                for call_id, call in calls
            ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}],
            "usage": self._usage(answer),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }

    def _stream(
        self,
        completion_id: str,
        model: str,
        answer: brain.Answer,
        calls: list[tuple[str, brain.ToolCall]],
        include_usage: bool,
    ) -> list[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                body["usage"] = None
            return sse_event(body)

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"reasoning_content": piece}) for piece in answer.thinking_deltas()]
        events += [chunk({"content": piece}) for piece in answer.text_deltas()]
        for index, (call_id, call) in enumerate(calls):
            head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            events.append(chunk({"tool_calls": [head]}))
            for fragment in brain.json_fragments(json.dumps(call.args)):
                events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        if self.stream_noise:
            events[2:2] = [b": keep-alive\n\n", b"data:\n\n"]
        events.append(chunk({}, answer.finish))
        if include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [],
                "usage": self._usage(answer),
            }
            events.append(sse_event(usage_chunk))
        events.append(sse_event("[DONE]"))
        return events
