"""Inlines http(s) image URLs for upstreams that cannot fetch them (Gemini, Kiro).

Bounded: a size cap, a timeout, image content types only, and no loopback/private targets
unless the operator allows them.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.parse
from collections.abc import Iterator

import httpx2

from core.config import Images
from translators import ir
from translators.base import TranslationError


def remote_images(req: ir.Request) -> Iterator[tuple[str, ir.ImagePart]]:
    """(field path, part) of every image given by an http(s) URL, tool results included."""
    for i, msg in enumerate(req.messages):
        for j, part in enumerate(msg.parts):
            if isinstance(part, ir.ImagePart) and part.url and part.url.startswith(("http://", "https://")):
                yield f"messages[{i}].content[{j}]", part
            elif isinstance(part, ir.ToolResultPart):
                for k, inner in enumerate(part.content):
                    if isinstance(inner, ir.ImagePart) and inner.url and inner.url.startswith(("http://", "https://")):
                        yield f"messages[{i}].content[{j}].content[{k}]", inner


async def _check_address(host: str) -> None:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global or addr.is_multicast:
            raise ValueError(f"{host} resolves to a non-public address")


async def inline_remote_images(req: ir.Request, cfg: Images, client: httpx2.AsyncClient, target: str) -> None:
    for field, part in list(remote_images(req)):
        if not cfg.fetch_remote:
            raise TranslationError(
                field, f"{target} only accepts inline images and images.fetch_remote is off; send the image as base64"
            )
        url = part.url or ""
        try:
            if not cfg.allow_private_addresses:
                await _check_address(urllib.parse.urlsplit(url).hostname or "")
            data, media_type = await _fetch(client, url, int(cfg.max_bytes), cfg.timeout)
        except (ValueError, httpx2.HTTPError, OSError) as e:
            raise TranslationError(field, f"image URL could not be fetched: {e}") from None
        part.data = base64.b64encode(data).decode("ascii")
        part.media_type = media_type
        part.url = None


async def _fetch(client: httpx2.AsyncClient, url: str, max_bytes: int, timeout: float) -> tuple[bytes, str]:
    async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as r:
        if r.status_code != 200:
            raise ValueError(f"HTTP {r.status_code}")
        media_type = r.headers.get("content-type", "").split(";")[0].strip().lower()
        if not media_type.startswith("image/"):
            raise ValueError(f"not an image (content-type {media_type or 'missing'})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"larger than images.max_bytes ({max_bytes} bytes)")
            chunks.append(chunk)
    return b"".join(chunks), media_type
