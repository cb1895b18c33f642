"""Fake public Gemini API upstream: POST /v1beta/models/{model}:generateContent and :streamGenerateContent.

Validates like generativelanguage.googleapis.com: proto-style unknown-field errors (camelCase or snake_case
accepted, as the real JSON parser does), the function call/response turn rules, the schema subset Gemini
accepts, and Gemini 3 thought signatures; answers in the real candidates/usageMetadata shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from tests.fakes import brain
from tests.fakes.server import Exchange, FakeServer, HttpError, sse_event

PATH = re.compile(r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)")
FUNCTION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
REQUEST_FIELDS = {
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
}
CONTENT_FIELDS = {"role", "parts"}
PART_DATA = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
PART_FIELDS = {*PART_DATA, "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
BLOB_FIELDS = {"mimeType", "data", "displayName"}
FILE_FIELDS = {"mimeType", "fileUri", "displayName"}
CALL_FIELDS = {"id", "name", "args"}
RESPONSE_FIELDS = {"id", "name", "response", "parts", "willContinue", "scheduling"}
GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "speechConfig",
    "thinkingConfig",
    "mediaResolution",
    "imageConfig",
}
THINKING_FIELDS = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
TOOL_FIELDS = {"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"}
DECLARATION_FIELDS = {
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
}
# The OpenAPI subset of Schema; anything else (additionalProperties, $ref, default, title, ...) is an unknown name.
SCHEMA_FIELDS = {
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "items",
    "minimum",
    "maximum",
}
SCHEMA_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call "
    "`default_api:{name}` , position {position}. "
    "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)


def _camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)


def _get(obj: dict[str, Any], name: str) -> Any:
    """Proto JSON accepts both the camelCase and the snake_case spelling of a field."""
    return obj[name] if name in obj else obj.get(_snake(name))


def _invalid(message: str) -> HttpError:
    return HttpError(400, message)


def _check_fields(obj: Any, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        where = f" at '{path}'" if path else ""
        raise _invalid(f"Invalid JSON payload received. Expected an object{where}, got {json.dumps(obj)[:40]}.")
    for key in obj:
        if _camel(key) not in allowed:
            where = f" at '{path}'" if path else ""
            raise _invalid(f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.')
    return obj


def _decode_bytes(value: Any, path: str) -> bytes:
    """TYPE_BYTES fields take standard or URL-safe base64, padded or not."""
    if isinstance(value, str):
        text = value.replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            pass
    raise _invalid(f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{str(value)[:40]}\"")


def _check_schema(schema: Any, path: str) -> None:
    _check_fields(schema, SCHEMA_FIELDS, path)
    kind = schema.get("type")
    if isinstance(kind, list):
        raise _invalid(
            f"Invalid JSON payload received. Unknown name \"type\" at '{path}': "
            "Proto field is not repeating, cannot start list."
        )
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in SCHEMA_TYPES):
        raise _invalid(
            f"Invalid value at '{path}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), \"{kind}\""
        )
    properties = schema.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise _invalid(f"Invalid JSON payload received. Expected an object at '{path}.properties'.")
    # Gemini refuses an explicit empty map on an OBJECT ("properties": {}); an object schema without
    # the key (a free-form map, e.g. Claude Code's AskUserQuestion.answers) is accepted.
    if isinstance(kind, str) and kind.upper() == "OBJECT" and properties is not None and not properties:
        raise _invalid(f"* GenerateContentRequest.{path}.properties: should be non-empty for OBJECT type\n")
    for n, sub in enumerate((properties or {}).values()):
        _check_schema(sub, f"{path}.properties[{n}].value")
    if schema.get("items") is not None:
        _check_schema(schema["items"], f"{path}.items")
    for n, sub in enumerate(_get(schema, "anyOf") or []):
        _check_schema(sub, f"{path}.any_of[{n}]")


def _calls(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_get(p, "functionCall") for p in parts if _get(p, "functionCall") is not None]


def _responses(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_get(p, "functionResponse") for p in parts if _get(p, "functionResponse") is not None]


def _tool_result(response: dict[str, Any]) -> brain.ToolResult:
    """A lone string value ({"result": "..."}) is the result text; an "error" key marks an error result."""
    if "error" in response:
        error = response["error"]
        return brain.ToolResult(error if isinstance(error, str) else json.dumps(error), is_error=True)
    values = list(response.values())
    if len(values) == 1 and isinstance(values[0], str):
        return brain.ToolResult(values[0])
    return brain.ToolResult(json.dumps(response))


class FakeGemini(FakeServer):
    """Public Gemini API (generativelanguage). Key via `x-goog-api-key` header or `?key=`."""

    invalid_json_message = "Invalid JSON payload received. Unexpected token."
    json_indent = 2  # the real unary responses are pretty-printed

    def __init__(
        self,
        api_key: str = "gemini-test-key",
        *,
        split_writes: bool = False,
        write_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(split_writes=split_writes, write_delay=write_delay, seed=seed)
        self.api_key = api_key

    def stream_error_event(self) -> bytes:
        error = {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
        return sse_event({"error": error}, eol="\r\n")

    def error_payload(self, err: HttpError) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": err.status,
            "message": err.message,
            "status": STATUSES.get(err.status, "UNKNOWN"),
        }
        if "details" in err.details:
            error["details"] = err.details["details"]
        return {"error": error}

    def handle(self, ex: Exchange) -> None:
        request = ex.request
        self._check_auth(request.headers.get("x-goog-api-key") or request.query.get("key"))
        match = PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            raise HttpError(404, "Requested entity was not found.")
        model, method = match.groups()
        body = _check_fields(request.json, REQUEST_FIELDS, "")
        prompt = self._parse(body, model)
        answer = brain.answer(prompt)
        signed = model.startswith("gemini-3") or prompt.thinking
        signature = answer.signature or brain.make_signature(f"{model}:{prompt.words}")
        response_id = self.new_id("", 22)
        if method == "generateContent":
            parts = self._thought_parts([answer.thinking] if answer.thinking else [], signature)
            parts += [{"text": answer.text}] if answer.text else []
            parts += self._call_parts(answer, signed, signature)
            ex.send_json(self._chunk(parts, answer, model, response_id, final=True))
            return
        chunks = self._chunks(answer, model, response_id, signed, signature)
        if request.query.get("alt") == "sse":
            ex.send_sse(sse_event(chunk, eol="\r\n") for chunk in chunks)
        else:
            ex.send_json(chunks)

    def _check_auth(self, key: str | None) -> None:
        if not key:
            raise HttpError(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != self.api_key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            raise HttpError(400, "API key not valid. Please pass a valid API key.", details=details)

    # -- request ----------------------------------------------------------------------------------
    def _parse(self, body: dict[str, Any], model: str) -> brain.Prompt:
        texts: list[str] = []
        system = _get(body, "systemInstruction")
        if system is not None:
            _check_fields(system, CONTENT_FIELDS, "system_instruction")
            for j, part in enumerate(system.get("parts") or []):
                self._part(part, f"system_instruction.parts[{j}]", texts)
        tools = self._tools(_get(body, "tools"))
        config = _check_fields(_get(body, "generationConfig") or {}, GENERATION_FIELDS, "generation_config")
        max_tokens = _get(config, "maxOutputTokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            raise _invalid(
                f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {json.dumps(max_tokens)}"
            )
        thinking = _check_fields(
            _get(config, "thinkingConfig") or {}, THINKING_FIELDS, "generation_config.thinking_config"
        )
        if _get(thinking, "thinkingBudget") is not None and _get(thinking, "thinkingLevel") is not None:
            raise _invalid("You can only set only one of thinking budget and thinking level.")
        prompt = self._contents(_get(body, "contents"), texts, model)
        prompt.tools = tools
        prompt.thinking = bool(_get(thinking, "includeThoughts"))
        prompt.max_tokens = max_tokens
        return prompt

    def _tools(self, tools: Any) -> list[str]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise _invalid(
                'Invalid JSON payload received. Unknown name "tools": Proto field is repeating, expected a list.'
            )
        names = []
        for i, tool in enumerate(tools):
            _check_fields(tool, TOOL_FIELDS, f"tools[{i}]")
            for k, declaration in enumerate(_get(tool, "functionDeclarations") or []):
                path = f"tools[{i}].function_declarations[{k}]"
                _check_fields(declaration, DECLARATION_FIELDS, path)
                name = declaration.get("name")
                if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
                    raise _invalid(
                        f"* GenerateContentRequest.{path}.name: Invalid function name. Must start with a letter or an "
                        "underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a "
                        "maximum length of 64.\n"
                    )
                parameters = _get(declaration, "parameters")
                json_schema = _get(declaration, "parametersJsonSchema")
                if parameters is not None and json_schema is not None:
                    raise _invalid(
                        f"* GenerateContentRequest.{path}: "
                        "parameters and parameters_json_schema are mutually exclusive.\n"
                    )
                if parameters is not None:
                    _check_schema(parameters, f"{path}.parameters")
                if json_schema is not None and not isinstance(json_schema, dict):
                    raise _invalid(f"Invalid value at '{path}.parameters_json_schema', expected an object.")
                names.append(name)
        return names

    def _contents(self, contents: Any, texts: list[str], model: str) -> brain.Prompt:
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified\n")
        turns: list[tuple[str, list[dict[str, Any]]]] = []
        for i, content in enumerate(contents):
            _check_fields(content, CONTENT_FIELDS, f"contents[{i}]")
            role = content.get("role") or "user"
            if role not in ("user", "model"):
                raise _invalid("Please use a valid role: user, model.")
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts:
                raise _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
            for j, part in enumerate(parts):
                self._part(part, f"contents[{i}].parts[{j}]", texts)
            turns.append((role, parts))
        self._check_function_turns(turns)
        if model.startswith("gemini-3"):
            self._check_signatures(turns)
        role, parts = turns[-1]
        if role == "user" and _responses(parts):
            return brain.Prompt(
                tool_results=[_tool_result(r["response"]) for r in _responses(parts)], words=brain.count_words(texts)
            )
        parts = next((p for r, p in reversed(turns) if r == "user"), [])
        text = "\n".join(p["text"] for p in parts if "text" in p and not p.get("thought"))
        images = [self._image(p) for p in parts if _get(p, "inlineData") is not None or _get(p, "fileData") is not None]
        return brain.Prompt(text=text, images=images, words=brain.count_words(texts))

    def _part(self, part: Any, path: str, texts: list[str]) -> None:
        _check_fields(part, PART_FIELDS, path)
        data = [_camel(key) for key in part if _camel(key) in PART_DATA]
        if not data:
            raise _invalid(
                f"* GenerateContentRequest.{path}.data: required oneof field 'data' must have one initialized field\n"
            )
        if len(data) > 1:
            raise _invalid(
                "Invalid JSON payload received. Oneof field 'data' is already set. "
                f"Cannot set '{_snake(data[1])}' at '{path}'."
            )
        if _get(part, "thoughtSignature") is not None:
            _decode_bytes(_get(part, "thoughtSignature"), f"{path}.thought_signature")
        kind = data[0]
        if kind == "text":
            if not isinstance(part["text"], str):
                raise _invalid(f"Invalid value at '{path}.text' (TYPE_STRING), {json.dumps(part['text'])}")
            texts.append(part["text"])
        elif kind == "inlineData":
            blob = _check_fields(_get(part, "inlineData"), BLOB_FIELDS, f"{path}.inline_data")
            if not isinstance(_get(blob, "mimeType"), str):
                raise _invalid(f"* GenerateContentRequest.{path}.inline_data.mime_type: mime_type is required\n")
            _decode_bytes(blob.get("data"), f"{path}.inline_data.data")
        elif kind == "fileData":
            file = _check_fields(_get(part, "fileData"), FILE_FIELDS, f"{path}.file_data")
            if not isinstance(_get(file, "fileUri"), str):
                raise _invalid(f"* GenerateContentRequest.{path}.file_data.file_uri: file_uri is required\n")
        elif kind == "functionCall":
            call = _check_fields(_get(part, "functionCall"), CALL_FIELDS, f"{path}.function_call")
            if not isinstance(call.get("name"), str):
                raise _invalid(f"* GenerateContentRequest.{path}.function_call.name: name is required\n")
            if call.get("args") is not None and not isinstance(call["args"], dict):
                raise _invalid(
                    f"Invalid value at '{path}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
                )
            texts.append(json.dumps(call.get("args") or {}))
        elif kind == "functionResponse":
            self._function_response(_get(part, "functionResponse"), f"{path}.function_response", texts)

    @staticmethod
    def _function_response(response: Any, path: str, texts: list[str]) -> None:
        _check_fields(response, RESPONSE_FIELDS, path)
        if not isinstance(response.get("name"), str):
            raise _invalid(f"* GenerateContentRequest.{path}.name: name is required\n")
        value = response.get("response")
        if isinstance(value, list):
            raise _invalid(
                f"Invalid JSON payload received. Unknown name \"response\" at '{path}': "
                "Proto field is not repeating, cannot start list."
            )
        if not isinstance(value, dict):
            raise _invalid(
                f"Invalid value at '{path}.response' (type.googleapis.com/google.protobuf.Struct), {json.dumps(value)}"
            )
        texts.append(json.dumps(value))

    @staticmethod
    def _image(part: dict[str, Any]) -> brain.Image:
        blob = _get(part, "inlineData")
        if blob is not None:
            return brain.Image(mime=_get(blob, "mimeType"), size=len(_decode_bytes(blob["data"], "")))
        file = _get(part, "fileData")
        return brain.Image(mime=_get(file, "mimeType") or "url", url=_get(file, "fileUri"))

    @staticmethod
    def _check_function_turns(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        for i, (_, parts) in enumerate(turns):
            previous = turns[i - 1] if i else None
            if _responses(parts) and (previous is None or previous[0] != "model" or not _calls(previous[1])):
                raise _invalid(
                    "Please ensure that function response turn comes immediately after a function call turn."
                )
            calls = _calls(parts)
            if not calls:
                continue
            if previous is not None and previous[0] == "model":
                raise _invalid(
                    "Please ensure that function call turn comes immediately after a user turn "
                    "or after a function response turn."
                )
            if i + 1 == len(turns):
                continue
            answers = _responses(turns[i + 1][1])
            if len(answers) != len(calls):
                raise _invalid(
                    "Please ensure that the number of function response parts is equal to the number of function call "
                    "parts of the function call turn."
                )
            if sorted(a["name"] for a in answers) != sorted(c["name"] for c in calls):
                raise _invalid(
                    "Please ensure that the function response names match "
                    "the function call names of the function call turn."
                )

    @staticmethod
    def _check_signatures(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Gemini 3: in the current turn (since the last real user message) each step's first call is signed."""
        start = max(
            (i for i, (role, parts) in enumerate(turns) if role == "user" and not _responses(parts)), default=-1
        )
        for i in range(start + 1, len(turns)):
            role, parts = turns[i]
            first = next((p for p in parts if _get(p, "functionCall") is not None), None)
            if role == "model" and first is not None and _get(first, "thoughtSignature") is None:
                name = _get(first, "functionCall")["name"]
                raise _invalid(MISSING_SIGNATURE.format(name=name, position=i + 1))

    # -- response ---------------------------------------------------------------------------------
    @staticmethod
    def _thought_parts(pieces: list[str], signature: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"text": piece, "thought": True} for piece in pieces]
        if parts:
            parts[-1]["thoughtSignature"] = signature
        return parts

    @staticmethod
    def _call_parts(answer: brain.Answer, signed: bool, signature: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for n, call in enumerate(answer.tool_calls):
            part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.args}}
            if n == 0 and signed:
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _chunks(
        self, answer: brain.Answer, model: str, response_id: str, signed: bool, signature: str
    ) -> list[dict[str, Any]]:
        """One chunk per thought/text word, the calls together in one; the last carries finishReason + usage."""
        parts_per_chunk = [[part] for part in self._thought_parts(answer.thinking_deltas(), signature)]
        parts_per_chunk += [[{"text": piece}] for piece in answer.text_deltas()]
        if answer.tool_calls:
            parts_per_chunk.append(self._call_parts(answer, signed, signature))
        last = len(parts_per_chunk) - 1
        return [
            self._chunk(parts, answer, model, response_id, final=n == last) for n, parts in enumerate(parts_per_chunk)
        ]

    @staticmethod
    def _chunk(
        parts: list[dict[str, Any]], answer: brain.Answer, model: str, response_id: str, final: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        usage: dict[str, Any] = {"promptTokenCount": answer.input_tokens, "totalTokenCount": answer.input_tokens}
        if final:
            candidate["finishReason"] = "MAX_TOKENS" if answer.finish == "length" else "STOP"
            usage = {
                "promptTokenCount": answer.input_tokens,
                "candidatesTokenCount": answer.output_tokens,
                "totalTokenCount": answer.input_tokens + answer.output_tokens + answer.reasoning_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": answer.input_tokens}],
            }
            if answer.cached_tokens:
                usage["cachedContentTokenCount"] = answer.cached_tokens
            if answer.reasoning_tokens:
                usage["thoughtsTokenCount"] = answer.reasoning_tokens
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}
