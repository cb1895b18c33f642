"""Fake OpenAI Responses upstream: POST /v1/responses (stateless: previous_response_id is rejected).

Validates the item-list input (function_call / function_call_output pairing, flat tools, strict schemas)
and answers with the real output items and the real typed, sequence-numbered event stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from tests.fakes import brain
from tests.fakes.openai_chat import (
    check_bearer,
    check_json_schema_format,
    check_max_tokens,
    decode_image_url,
    json_type,
    object_body,
    openai_error,
)
from tests.fakes.server import Exchange, FakeServer, HttpError, sse_event

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MESSAGE_ROLES = ("user", "system", "developer", "assistant")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


class FakeOpenAIResponses(FakeServer):
    """OpenAI Responses API, stateless: reasoning items replay only via ids (store) or encrypted_content it issued."""

    invalid_json_message = (
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
    )

    def __init__(
        self,
        api_key: str = "sk-test-openai",
        *,
        split_writes: bool = False,
        write_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(split_writes=split_writes, write_delay=write_delay, seed=seed)
        self.api_key = api_key
        self.issued_encrypted_reasoning: set[str] = set()
        self.issued_reasoning_ids: set[str] = set()

    def stream_error_event(self) -> bytes:
        event = {"type": "error", "code": "server_error", "message": "The model failed mid-stream.", "param": None}
        return sse_event({**event, "sequence_number": 99}, "error")

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        return openai_error(err)

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        check_bearer(request, self.api_key)
        if request.method == "POST" and request.path == "/v1/responses":
            self._create(ex)
        else:
            raise HttpError(404, f"Invalid URL ({request.method} {request.path})")

    # -- request ----------------------------------------------------------------------------------
    def _create(self, ex: Exchange) -> None:
        body = object_body(ex.request.json)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise HttpError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        previous = body.get("previous_response_id")
        if previous is not None:
            raise HttpError(
                400,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise HttpError(400, f"Invalid type for 'stream': expected a boolean, but got {json_type(stream)} instead.")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise HttpError(400, "Invalid type for 'instructions': expected a string.", param="instructions")
        reasoning = body.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, dict):
            raise HttpError(
                400, f"Invalid type for 'reasoning': expected an object, but got {json_type(reasoning)} instead."
            )
        text_config = body.get("text")
        check_json_schema_format(text_config.get("format") if isinstance(text_config, dict) else None, "text.format")
        include = body.get("include") or []
        store = body.get("store", True) is not False
        prompt = self._input(body.get("input"), [instructions] if instructions else [], store)
        prompt.tools = self._tools(body.get("tools"))
        prompt.thinking = bool(reasoning) and reasoning.get("effort") not in (None, "none")
        prompt.max_tokens = check_max_tokens(body.get("max_output_tokens"), "max_output_tokens", minimum=16)
        answer = brain.answer(prompt)
        encrypted = "reasoning.encrypted_content" in include
        response = self._response(body, model, answer, encrypted)
        if stream:
            ex.send_sse(self._stream(response))
        else:
            ex.send_json(response)

    def _input(self, items: Any, texts: list[str], store: bool) -> brain.Prompt:
        if isinstance(items, str):
            return brain.Prompt(text=items, words=brain.count_words([*texts, items]))
        if items is None:
            raise HttpError(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        if not isinstance(items, list) or not items:
            raise HttpError(400, "Invalid 'input': expected a string or a non-empty array of items.", param="input")
        calls: list[str] = []
        answered: set[str] = set()
        last_text, last_images = "", []
        results: list[brain.ToolResult] = []  # function_call_output items since the last message
        for i, item in enumerate(items):
            path = f"input[{i}]"
            if not isinstance(item, dict):
                raise HttpError(
                    400, f"Invalid type for '{path}': expected an object, but got {json_type(item)} instead."
                )
            kind = item.get("type", "message" if "role" in item else None)
            if kind not in ITEM_TYPES:
                raise HttpError(
                    400,
                    f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
                    "'function_call_output' and 'reasoning'.",
                    param=f"{path}.type",
                    code="invalid_value",
                )
            if kind == "message":
                results = []
                role = item.get("role")
                if role not in MESSAGE_ROLES:
                    raise HttpError(
                        400,
                        f"Invalid value: '{role}'. "
                        "Supported values are: 'assistant', 'system', 'developer', and 'user'.",
                        param=f"{path}.role",
                        code="invalid_value",
                    )
                text, images = self._content(item.get("content"), path, role)
                texts.append(text)
                if role == "user":
                    last_text, last_images = text, images
            elif kind == "function_call":
                calls.append(self._function_call(item, path, texts))
            elif kind == "function_call_output":
                call_id = item.get("call_id")
                if call_id not in calls:
                    raise HttpError(
                        400, f"No tool call found for function call output with call_id {call_id}.", param="input"
                    )
                answered.add(call_id)
                text = self._output_text(item.get("output"), path)
                texts.append(text)
                results.append(brain.ToolResult(text))
            else:
                self._reasoning(item, path, texts, store)
        missing = [call_id for call_id in calls if call_id not in answered]
        if missing:
            raise HttpError(400, f"No tool output found for function call {missing[0]}.", param="input")
        if results:
            return brain.Prompt(tool_results=results, words=brain.count_words(texts))
        return brain.Prompt(text=last_text, images=last_images, words=brain.count_words(texts))

    @staticmethod
    def _content(content: Any, path: str, role: str) -> tuple[str, list[brain.Image]]:
        if isinstance(content, str):
            return content, []
        if not isinstance(content, list):
            raise HttpError(
                400,
                f"Invalid type for '{path}.content': expected one of a string or array of input items, "
                f"but got {json_type(content)} instead.",
                param=f"{path}.content",
            )
        allowed = ("output_text", "refusal") if role == "assistant" else ("input_text", "input_image")
        texts: list[str] = []
        images: list[brain.Image] = []
        for j, part in enumerate(content):
            part_path = f"{path}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                supported = " and ".join(f"'{a}'" for a in allowed)
                raise HttpError(
                    400,
                    f"Invalid value: '{kind}'. Supported values are: {supported}.",
                    param=f"{part_path}.type",
                    code="invalid_value",
                )
            if kind == "input_image":
                if isinstance(part.get("file_id"), str):
                    images.append(brain.Image(mime="file", url=f"file:{part['file_id']}"))
                else:
                    images.append(decode_image_url(part.get("image_url"), f"{part_path}.image_url", allow_urls=True))
                continue
            field = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(field), str):
                raise HttpError(
                    400, f"Missing required parameter: '{part_path}.{field}'.", param=f"{part_path}.{field}"
                )
            texts.append(part[field])
        return "\n".join(texts), images

    @staticmethod
    def _function_call(item: dict[str, Any], path: str, texts: list[str]) -> str:
        for field in ("call_id", "name", "arguments"):
            if not isinstance(item.get(field), str):
                raise HttpError(400, f"Missing required parameter: '{path}.{field}'.", param=f"{path}.{field}")
        try:
            json.loads(item["arguments"])
        except ValueError:
            raise HttpError(400, f"Invalid '{path}.arguments': not valid JSON.", param=f"{path}.arguments") from None
        texts.append(item["arguments"])
        return item["call_id"]

    @staticmethod
    def _output_text(output: Any, path: str) -> str:
        if isinstance(output, str):
            return output
        if isinstance(output, list):
            parts = [p.get("text") for p in output if isinstance(p, dict) and p.get("type") == "input_text"]
            if len(parts) == len(output) and all(isinstance(p, str) for p in parts):
                return "\n".join(parts)
        raise HttpError(
            400,
            f"Invalid type for '{path}.output': expected a string or an array of input_text items.",
            param=f"{path}.output",
        )

    def _reasoning(self, item: dict[str, Any], path: str, texts: list[str], store: bool) -> None:
        """Stateless replay needs encrypted_content this fake issued; a bare id only resolves when stored."""
        summary = item.get("summary")
        if not isinstance(summary, list):
            raise HttpError(400, f"Missing required parameter: '{path}.summary'.", param=f"{path}.summary")
        encrypted = item.get("encrypted_content")
        if encrypted is not None:
            if encrypted not in self.issued_encrypted_reasoning:
                raise HttpError(
                    400,
                    f"The encrypted content for item {item.get('id')} could not be verified.",
                    param=f"{path}.encrypted_content",
                )
        elif not store or item.get("id") not in self.issued_reasoning_ids:
            hint = " Items are not persisted when `store` is set to false." if not store else ""
            raise HttpError(404, f"Item with id '{item.get('id')}' not found.{hint}", param="input")
        texts.extend(part["text"] for part in summary if isinstance(part, dict) and isinstance(part.get("text"), str))

    def _tools(self, tools: Any) -> list[str]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise HttpError(400, f"Invalid type for 'tools': expected an array, but got {json_type(tools)} instead.")
        names = []
        for i, tool in enumerate(tools):
            path = f"tools[{i}]"
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                raise HttpError(400, f"Missing required parameter: '{path}.type'.", param=f"{path}.type")
            if kind != "function":
                continue  # built-in tools (web_search, file_search, ...) run server-side
            name = tool.get("name")
            if name is None:
                raise HttpError(
                    400,
                    f"Missing required parameter: '{path}.name'.",
                    param=f"{path}.name",
                    code="missing_required_parameter",
                )
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise HttpError(
                    400,
                    f"Invalid '{path}.name': string does not match pattern. Expected a string that matches the "
                    "pattern '^[a-zA-Z0-9_-]+$'.",
                    param=f"{path}.name",
                    code="invalid_value",
                )
            parameters = tool.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise HttpError(
                    400, f"Invalid type for '{path}.parameters': expected an object.", param=f"{path}.parameters"
                )
            if tool.get("strict") is True:
                _check_strict_schema(name, parameters or {}, ())
            names.append(name)
        return names

    # -- response ---------------------------------------------------------------------------------
    def _response(self, body: dict[str, Any], model: str, answer: brain.Answer, encrypted: bool) -> dict[str, Any]:
        incomplete = answer.finish == "length"
        output: list[dict[str, Any]] = []
        if answer.thinking:
            item: dict[str, Any] = {
                "id": self.new_id("rs_", 40),
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": answer.thinking}],
            }
            if body.get("store", True) is not False:
                self.issued_reasoning_ids.add(item["id"])
            if encrypted and answer.signature:
                self.issued_encrypted_reasoning.add(answer.signature)
                item["encrypted_content"] = answer.signature
            output.append(item)
        if answer.text:
            output.append(
                {
                    "id": self.new_id("msg_", 40),
                    "type": "message",
                    "status": "incomplete" if incomplete else "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}],
                }
            )
        for call in answer.tool_calls:
            output.append(
                {
                    "id": self.new_id("fc_", 40),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": json.dumps(call.args),
                    "call_id": self.new_id("call_"),
                    "name": call.name,
                }
            )
        output_tokens = answer.output_tokens + answer.reasoning_tokens
        return {
            "id": self.new_id("resp_", 40),
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": answer.input_tokens,
                "input_tokens_details": {"cached_tokens": answer.cached_tokens},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
                "total_tokens": answer.input_tokens + output_tokens,
            },
            "user": None,
            "metadata": {},
        }

    @staticmethod
    def _stream(response: dict[str, Any]) -> Iterator[bytes]:
        sequence = iter(range(1_000_000))

        def event(kind: str, **data: Any) -> bytes:
            return sse_event({"type": kind, "sequence_number": next(sequence), **data}, event=kind)

        pending = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        for index, item in enumerate(response["output"]):
            ids = {"item_id": item["id"], "output_index": index}
            if item["type"] == "reasoning":
                yield event("response.output_item.added", output_index=index, item={**item, "summary": []})
                text = item["summary"][0]["text"]
                part = {"type": "summary_text", "text": ""}
                yield event("response.reasoning_summary_part.added", **ids, summary_index=0, part=part)
                for piece in brain.word_deltas(text):
                    yield event("response.reasoning_summary_text.delta", **ids, summary_index=0, delta=piece)
                yield event("response.reasoning_summary_text.done", **ids, summary_index=0, text=text)
                yield event("response.reasoning_summary_part.done", **ids, summary_index=0, part={**part, "text": text})
            elif item["type"] == "message":
                added = {**item, "status": "in_progress", "content": []}
                yield event("response.output_item.added", output_index=index, item=added)
                part = item["content"][0]
                empty = {**part, "text": ""}
                yield event("response.content_part.added", **ids, content_index=0, part=empty)
                for piece in brain.word_deltas(part["text"]):
                    yield event("response.output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
                yield event("response.output_text.done", **ids, content_index=0, text=part["text"], logprobs=[])
                yield event("response.content_part.done", **ids, content_index=0, part=part)
            else:
                added = {**item, "status": "in_progress", "arguments": ""}
                yield event("response.output_item.added", output_index=index, item=added)
                for piece in brain.json_fragments(item["arguments"]):
                    yield event("response.function_call_arguments.delta", **ids, delta=piece)
                yield event("response.function_call_arguments.done", **ids, arguments=item["arguments"])
            yield event("response.output_item.done", output_index=index, item=item)
        final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        yield event(final, response=response)


def _check_strict_schema(name: str, schema: dict[str, Any], context: tuple[str, ...]) -> None:
    """strict: true demands additionalProperties false and every property required, on every object."""
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            raise HttpError(
                400,
                f"Invalid schema for function '{name}': In context={context}, 'additionalProperties' is required "
                "to be supplied and to be false.",
                param="tools",
                code="invalid_function_parameters",
            )
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        missing = [key for key in properties if key not in required]
        if missing:
            raise HttpError(
                400,
                f"Invalid schema for function '{name}': In context={context}, 'required' is required to be supplied "
                f"and to be an array including every key in properties. Missing '{missing[0]}'.",
                param="tools",
                code="invalid_function_parameters",
            )
        for key, sub in properties.items():
            if isinstance(sub, dict):
                _check_strict_schema(name, sub, (*context, "properties", key))
    if isinstance(schema.get("items"), dict):
        _check_strict_schema(name, schema["items"], (*context, "items"))
    for n, sub in enumerate(schema.get("anyOf") or []):
        if isinstance(sub, dict):
            _check_strict_schema(name, sub, (*context, "anyOf", str(n)))
