"""Client drivers: the official openai, anthropic and google-genai SDKs doing the same three things
(text, a tool round trip with two parallel calls, an image), so tests can run them against any route.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types

from tests.conftest import CLIENT_KEY

MODEL = "matrix-model"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
RESULTS = {"Paris": "Sunny, 21C", "Tokyo": "Rainy, 14C"}


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG = tiny_png()
PNG_B64 = base64.b64encode(PNG).decode()


class ChatDriver:
    def __init__(self, url: str, provider: str, model: str = MODEL) -> None:
        self.model = model
        self.client = openai.OpenAI(base_url=f"{url}/{provider}/v1", api_key=CLIENT_KEY, max_retries=0)

    def ask(self, messages: list[dict], stream: bool, tools: list | None = None) -> tuple[str, list[dict]]:
        kw: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            kw["tools"] = tools
        if not stream:
            msg = self.client.chat.completions.create(**kw).choices[0].message
            calls = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls or []
            ]
            return msg.content or "", calls
        text, calls = "", {}
        for chunk in self.client.chat.completions.create(**kw, stream=True):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for tc in delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] = (tc.function.name if tc.function and tc.function.name else "") or call["name"]
                call["arguments"] += tc.function.arguments or "" if tc.function else ""
        return text, [calls[i] for i in sorted(calls)]

    def text(self, prompt: str, stream: bool) -> str:
        return self.ask([{"role": "user", "content": prompt}], stream)[0]

    def tool_round_trip(self, stream: bool) -> tuple[list[tuple[str, dict]], str]:
        tools = [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
            }
        ]
        messages: list[dict] = [{"role": "user", "content": "parallel weather please"}]
        _, calls = self.ask(messages, stream, tools)
        parsed = [(c["name"], json.loads(c["arguments"])) for c in calls]
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ],
            }
        )
        for c, (_, args) in zip(calls, parsed, strict=True):
            messages.append({"role": "tool", "tool_call_id": c["id"], "content": RESULTS[args["city"]]})
        return parsed, self.ask(messages, stream, tools)[0]

    def image(self, stream: bool) -> str:
        content = [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        ]
        return self.ask([{"role": "user", "content": content}], stream)[0]


class ResponsesDriver:
    def __init__(self, url: str, provider: str, model: str = MODEL) -> None:
        self.model = model
        self.client = openai.OpenAI(base_url=f"{url}/{provider}/v1", api_key=CLIENT_KEY, max_retries=0)

    def ask(self, items: list, stream: bool, tools: list | None = None):
        kw: dict[str, Any] = {"model": self.model, "input": items}
        if tools:
            kw["tools"] = tools
        if not stream:
            return self.client.responses.create(**kw)
        events = list(self.client.responses.create(**kw, stream=True))
        seqs = [e.sequence_number for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert events[-1].type == "response.completed"
        return events[-1].response

    def text(self, prompt: str, stream: bool) -> str:
        return self.ask([{"role": "user", "content": prompt}], stream).output_text

    def tool_round_trip(self, stream: bool) -> tuple[list[tuple[str, dict]], str]:
        tools = [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA}]
        items: list = [{"role": "user", "content": "parallel weather please"}]
        resp = self.ask(items, stream, tools)
        calls = [o for o in resp.output if o.type == "function_call"]
        parsed = [(c.name, json.loads(c.arguments)) for c in calls]
        for c in calls:
            items.append({"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments})
        for c, (_, args) in zip(calls, parsed, strict=True):
            items.append({"type": "function_call_output", "call_id": c.call_id, "output": RESULTS[args["city"]]})
        return parsed, self.ask(items, stream, tools).output_text

    def image(self, stream: bool) -> str:
        content = [
            {"type": "input_text", "text": "what is this"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"},
        ]
        return self.ask([{"role": "user", "content": content}], stream).output_text


class ClaudeDriver:
    def __init__(self, url: str, provider: str, model: str = MODEL) -> None:
        self.model = model
        self.client = anthropic.Anthropic(base_url=f"{url}/{provider}", api_key=CLIENT_KEY, max_retries=0)

    def ask(self, messages: list, stream: bool, tools: list | None = None):
        kw: dict[str, Any] = {"model": self.model, "max_tokens": 512, "messages": messages}
        if tools:
            kw["tools"] = tools
        if not stream:
            return self.client.messages.create(**kw)
        with self.client.messages.stream(**kw) as s:
            return s.get_final_message()

    @staticmethod
    def text_of(msg) -> str:
        return "".join(b.text for b in msg.content if b.type == "text")

    def text(self, prompt: str, stream: bool) -> str:
        return self.text_of(self.ask([{"role": "user", "content": prompt}], stream))

    def tool_round_trip(self, stream: bool) -> tuple[list[tuple[str, dict]], str]:
        tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
        messages: list = [{"role": "user", "content": "parallel weather please"}]
        msg = self.ask(messages, stream, tools)
        assert msg.stop_reason == "tool_use"
        uses = [b for b in msg.content if b.type == "tool_use"]
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": u.id, "content": RESULTS[u.input["city"]]} for u in uses
                ],
            }
        )
        return [(u.name, u.input) for u in uses], self.text_of(self.ask(messages, stream, tools))

    def image(self, stream: bool) -> str:
        content = [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        ]
        return self.text_of(self.ask([{"role": "user", "content": content}], stream))


class GeminiDriver:
    def __init__(self, url: str, provider: str, model: str = MODEL) -> None:
        self.model = model
        self.client = genai.Client(
            api_key=CLIENT_KEY,
            http_options=types.HttpOptions(base_url=f"{url}/{provider}/", retry_options=None),
        )

    def ask(self, contents: list, stream: bool, config: types.GenerateContentConfig | None = None):
        """(text, function calls, the model's content to replay)."""
        if not stream:
            r = self.client.models.generate_content(model=self.model, contents=contents, config=config)
            return r.text or "", list(r.function_calls or []), r.candidates[0].content
        text, calls, parts = "", [], []
        for chunk in self.client.models.generate_content_stream(model=self.model, contents=contents, config=config):
            if chunk.candidates and chunk.candidates[0].content and chunk.candidates[0].content.parts:
                for part in chunk.candidates[0].content.parts:
                    parts.append(part)
                    if part.text and not part.thought:
                        text += part.text
                    if part.function_call:
                        calls.append(part.function_call)
        return text, calls, types.Content(role="model", parts=parts)

    def text(self, prompt: str, stream: bool) -> str:
        return self.ask([types.Content(role="user", parts=[types.Part(text=prompt)])], stream)[0]

    def tool_round_trip(self, stream: bool) -> tuple[list[tuple[str, dict]], str]:
        decl = types.FunctionDeclaration(
            name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA
        )
        config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[decl])])
        contents = [types.Content(role="user", parts=[types.Part(text="parallel weather please")])]
        _, calls, model_content = self.ask(contents, stream, config)
        contents.append(model_content)
        contents.append(
            types.Content(
                role="user",
                parts=[
                    types.Part.from_function_response(name=c.name, response={"result": RESULTS[c.args["city"]]})
                    for c in calls
                ],
            )
        )
        return [(c.name, dict(c.args)) for c in calls], self.ask(contents, stream, config)[0]

    def image(self, stream: bool) -> str:
        parts = [types.Part(text="what is this"), types.Part.from_bytes(data=PNG, mime_type="image/png")]
        return self.ask([types.Content(role="user", parts=parts)], stream)[0]


DRIVERS = {
    "openai_chat": ChatDriver,
    "openai_responses": ResponsesDriver,
    "claude": ClaudeDriver,
    "gemini": GeminiDriver,
}
