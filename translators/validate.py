"""The request boundary: a client's body bytes -> a JSON object every codec can read safely.

Everything a hostile body can do to the parser or to the codecs behind it is refused here with a
message naming the problem: nesting deeper than a limit (checked by a byte scan before the parser
runs, so a 20 MB `[[[[...` costs nothing), lone UTF-16 surrogates (`"\\ud800"`: valid JSON, but no
UTF-8 encoder can write it back out), NaN/Infinity and numbers no upstream can hold, and wrong JSON
types in the fields the codecs read (pydantic models of each dialect's request, lenient about
everything else). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

# An int outside the signed 64-bit range fits no upstream's integer field.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SCAN_CHUNK = 64 * 1024


class InvalidBody(ValueError):
    """The body cannot be accepted; the message names the field and the problem."""


def nesting_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when brackets outside strings nest deeper than max_depth. Strings are cut out and
    everything but brackets dropped in C; the running depth costs one C-level step per bracket and
    stops at the first chunk that goes too deep (worst case, 20 MB of `[],[],...`: ~3 s)."""
    skeleton = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(skeleton), _SCAN_CHUNK):
        steps = skeleton[start : start + _SCAN_CHUNK].translate(_DEPTH_STEP)
        # \x01 = +1, \xff = -1 as signed bytes: the running sum is the depth.
        running = list(accumulate(memoryview(steps).cast("b"), initial=depth))
        if max(running) > max_depth:
            return True
        depth = running[-1]
    return False


def _parse_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidBody(f"number {text[:24]}{'...' if len(text) > 24 else ''} is out of range (64-bit integers only)")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidBody(f"number {text[:24]} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise InvalidBody(f"{name} is not a JSON number")


def _lone_surrogate_path(value: Any, path: str, depth: int = 0) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if _lone_surrogate_path(key, sub, depth + 1) is not None:
                return sub.encode("utf-8", "backslashreplace").decode()
            found = _lone_surrogate_path(item, sub, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate_path(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


def load_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """Parses a request body into a JSON object, or raises InvalidBody saying why not."""
    if nesting_depth_exceeds(body, max_depth):
        raise InvalidBody(f"request body nests deeper than {max_depth} levels (limits.max_depth)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidBody(f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except InvalidBody:
        raise
    except (ValueError, RecursionError) as e:
        raise InvalidBody(f"request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidBody("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(body):
        path = _lone_surrogate_path(value, "")
        if path is not None:
            raise InvalidBody(f"{path}: string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
    return value


# -- the fields the codecs read, with the JSON types they need --------------------------------
# Lenient (extra fields allowed, absent fields fine); only a present field of the wrong type fails.


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _GeminiPart(_Loose):
    text: StrictStr | None = None


class _GeminiContent(_Loose):
    role: StrictStr | None = None
    parts: list[_GeminiPart | Any] | None = None


class GeminiRequest(_Loose):
    contents: list[_GeminiContent] | _GeminiContent | None = None
    systemInstruction: _GeminiContent | StrictStr | None = None
    system_instruction: _GeminiContent | StrictStr | None = None


class _ResponsesItem(_Loose):
    type: StrictStr | None = None
    role: StrictStr | None = None


class _ResponsesTool(_Loose):
    type: StrictStr | None = None


class ResponsesRequest(_Loose):
    model: StrictStr | None = None
    input: StrictStr | list[_ResponsesItem | StrictStr] | None = None
    instructions: StrictStr | None = None
    tools: list[_ResponsesTool] | None = None


class _ChatMessage(_Loose):
    role: StrictStr | None = None


class ChatRequest(_Loose):
    model: StrictStr | None = None
    messages: list[_ChatMessage] | None = None


class _ClaudeMessage(_Loose):
    role: StrictStr | None = None


class ClaudeRequest(_Loose):
    model: StrictStr | None = None
    messages: list[_ClaudeMessage] | None = None
    max_tokens: Annotated[int, Field(strict=True)] | None = None


MODELS: dict[str, type[BaseModel]] = {
    "gemini": GeminiRequest,
    "openai_responses": ResponsesRequest,
    "openai_chat": ChatRequest,
    "claude": ClaudeRequest,
}


def check_types(dialect: str, body: dict[str, Any]) -> None:
    """Raises InvalidBody naming the first field whose JSON type the dialect's codec cannot read."""
    model = MODELS.get(dialect)
    if model is None:
        return
    try:
        model.model_validate(body)
    except ValidationError as e:
        # A union reports one error per member; the deepest is the one that names the real field.
        worst = max(e.errors(), key=lambda err: len(_field_path(err["loc"])))
        raise InvalidBody(f"{_field_path(worst['loc']) or '(body)'}: {worst['msg']}") from None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _field_path(loc: tuple[Any, ...]) -> str:
    """`contents[0].role` from pydantic's loc, without the union member tags it adds."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or part.startswith(("_", "function-")) or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out
