"""Local token estimates for count_tokens (Claude /v1/messages/count_tokens, Gemini :countTokens)
when the upstream cannot count (Kiro) -- cheap, deterministic, no tokenizer download.

Rules:
- text: one token per CJK / kana / hangul / fullwidth character (those scripts run about one token
  per character), plus one token per started 4 other characters (the usual ~4 chars/token of
  English and code);
- each message costs MESSAGE_OVERHEAD tokens for its role framing;
- a tool call counts its name and its arguments as compact JSON; a tool result its content;
  thinking its text; a tool definition its name, description and parameter schema as JSON (a
  provider built-in tool its whole definition);
- an image costs what Claude charges, width * height / 750 after Claude's own downscaling (long
  edge at most 1568 px, at most IMAGE_TOKENS_MAX), with the size read from the PNG, JPEG, GIF or
  WebP header inside the base64 data; a URL image, another format or an unreadable header costs
  IMAGE_TOKENS_MAX (also used for PDFs, which this estimate does not open).
Nothing is added that the request does not contain (no hidden system prompt).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct

from translators import ir

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 3
IMAGE_TOKENS_MAX = 1600
_IMAGE_MAX_EDGE = 1568
# Base64 characters decoded to find an image header: 48 KiB of bytes covers every header except
# JPEGs with an unusually large EXIF block before the frame header (they get IMAGE_TOKENS_MAX).
_HEADER_B64_CHARS = 65536

_WIDE = re.compile(
    "[\u1100-\u11ff\u2e80-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]"
)
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    wide = len(text) - len(_WIDE.sub("", text))
    return wide + -(-(len(text) - wide) // CHARS_PER_TOKEN)


def _json_tokens(value: object) -> int:
    return estimate_text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def image_size(data: str) -> tuple[int, int] | None:
    """(width, height) from the header of base64 image data, or None when it cannot be read."""
    prefix = data[:_HEADER_B64_CHARS]
    try:
        head = base64.b64decode(prefix[: len(prefix) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    size: tuple[int, int] | None = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(head)
    if size is None or not size[0] or not size[1]:
        return None
    return size


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Walks the marker segments up to the first start-of-frame, which holds the size."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    return None


def estimate_image_tokens(part: ir.ImagePart) -> int:
    size = image_size(part.data) if part.data else None
    if size is None:
        return IMAGE_TOKENS_MAX
    width, height = size
    scale = min(1.0, _IMAGE_MAX_EDGE / max(width, height))
    tokens = math.ceil(width * scale * height * scale / 750)
    return max(1, min(IMAGE_TOKENS_MAX, tokens))


def _part_tokens(part: ir.Part) -> int:
    if isinstance(part, ir.TextPart):
        return estimate_text_tokens(part.text)
    if isinstance(part, ir.ImagePart):
        return estimate_image_tokens(part)
    if isinstance(part, ir.ToolCallPart):
        return estimate_text_tokens(part.name) + _json_tokens(part.arguments)
    if isinstance(part, ir.ToolResultPart):
        return sum(_part_tokens(p) for p in part.content)
    return estimate_text_tokens(part.text)  # thinking


def _tool_tokens(tool: ir.Tool) -> int:
    if tool.raw is not None and tool.kind not in ("function", "custom"):
        return _json_tokens(tool.raw)
    return estimate_text_tokens(tool.name) + estimate_text_tokens(tool.description) + _json_tokens(tool.parameters)


def estimate_request_tokens(req: ir.Request) -> int:
    """Input tokens of a request by the rules above; at least 1."""
    total = sum(estimate_text_tokens(p.text) for p in req.system)
    for msg in req.messages:
        total += MESSAGE_OVERHEAD + sum(_part_tokens(p) for p in msg.parts)
    total += sum(_tool_tokens(t) for t in req.tools)
    return max(total, 1)
