"""Hostile-input fuzzing against a real gateway (mitmdump -s run.py) in front of the strict fakes.

Valid requests of every dialect endpoint are mutated field by field (wrong JSON types, deletion,
huge numbers, deep nesting, lone surrogates, long strings), at the byte level (truncation, bad
UTF-8), in their Content-Encoding (gzip/deflate/br/zstd, bombs, broken and unknown encodings), in
their framing (chunked, chunked with trailers) and in their key headers (bytes that are not UTF-8).
Every answer must come within a bounded time and never be a 500; a request the gateway must refuse
never reaches a fake; the process stays up and its memory bounded.

CI runs a fixed seed and FUZZ_EXAMPLES (default 250) inputs; `FUZZ_EXAMPLES=10000 pytest
tests/e2e/test_hostile_fuzz.py` is the long local run.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import pytest
from backports import zstd
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import CLIENT_KEY, Fakes, api_key_providers
from tests.gateway import GatewayProcess, start_gateway
from tests.rawhttp import exchange, request_bytes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
MAX_BODY = 64 * 1024
MAX_RSS_MB = 400
ANSWER_TIMEOUT = 20.0

SEEDS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
        "max_tokens": 50,
        "temperature": 0.5,
        "stream": False,
    },
    "/v1/responses": {
        "model": "gpt-4o-mini",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
        "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
        "max_output_tokens": 50,
        "stream": False,
    },
    "/v1/messages": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        ],
        "tools": [{"name": "get", "input_schema": {"type": "object"}}],
        "temperature": 0.5,
    },
    "/v1/messages/count_tokens": {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1beta/models/gpt-4o-mini:generateContent": {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get", "args": {"a": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get", "response": {"x": 42}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "tools": [{"functionDeclarations": [{"name": "get", "parameters": {"type": "object"}}]}],
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.5, "topK": 3},
    },
    "/v1beta/models/gpt-4o-mini:streamGenerateContent?alt=sse": {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 50},
    },
    "/v1beta/models/gpt-4o-mini:countTokens": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
}
ENDPOINTS = sorted(SEEDS)

# Placeholders replaced in the serialized body: values json.dumps cannot write.
SURROGATE = "\x00SURROGATE\x00"
HUGE_FLOAT = "\x00HUGEFLOAT\x00"
NAN = "\x00NAN\x00"

HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [None, True, 0, -1, 1.5, "", "x", [], {}, [1, "a"], {"a": 1}, 10**19, -(10**19), 10**30, 2**63, 1e308]
    ),
    st.sampled_from([SURROGATE, HUGE_FLOAT, NAN]),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.text(max_size=40),
    st.builds(lambda n: "x" * n, st.integers(min_value=1000, max_value=90_000)),
    st.builds(lambda d: _nested(d), st.integers(min_value=2, max_value=3000)),
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replace(body: dict[str, Any], path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def _serialize(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False)
    text = text.replace(json.dumps(SURROGATE), '"\\ud800 lone"')
    text = text.replace(json.dumps(HUGE_FLOAT), "1e400").replace(json.dumps(NAN), "NaN")
    return text.encode("utf-8", "surrogatepass")


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    body_obj: Any = SEEDS[endpoint]
    headers = [(b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"content-type", b"application/json")]
    kind = draw(
        st.sampled_from(
            ["field", "field", "field", "delete", "truncate", "bad_utf8", "encoding", "framing", "key", "header"]
        )
    )
    must_refuse = False
    framing = "length"
    if kind in ("field", "delete"):
        path = draw(st.sampled_from(list(_paths(body_obj))[1:]))
        body_obj = _replace(body_obj, path, draw(HOSTILE_VALUES), delete=kind == "delete")
    body = _serialize(body_obj)
    if kind == "truncate":
        body = body[: draw(st.integers(min_value=0, max_value=len(body) - 1))]
        must_refuse = True
    elif kind == "bad_utf8":
        at = draw(st.integers(min_value=0, max_value=len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + body[at:]
        must_refuse = True
    elif kind == "encoding":
        coding = draw(st.sampled_from(["gzip", "deflate", "br", "zstd"]))
        variant = draw(st.sampled_from(["ok", "bomb", "broken", "unknown"]))
        compress = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}
        if variant == "bomb":
            body = b'{"model": "' + b"a" * (MAX_BODY * 4) + b'"}'
        body = compress[coding](body)
        if variant == "broken":
            body = body[: len(body) // 2] + b"\x00garbage"
        if variant == "unknown":
            coding = draw(st.sampled_from(["compress", "x-bogus", "gzip, snappy", "\xff"]))
        headers.append((b"content-encoding", coding.encode("latin-1")))
        must_refuse = variant != "ok"
    elif kind == "framing":
        framing = draw(st.sampled_from(["chunked", "trailers"]))
    elif kind == "key":
        bad = draw(st.sampled_from([b"Bearer \xff\xfe", b"Bearer \xed\xa0\x80", b"\xff", b"Bearer " + b"k" * 9000]))
        headers[0] = (b"authorization", bad)
        if draw(st.booleans()):
            headers[0] = (b"x-api-key", bad.removeprefix(b"Bearer "))
        must_refuse = True
    elif kind == "header":
        name = draw(st.sampled_from([b"model-provider", b"anthropic-version", b"anthropic-beta", b"user-agent"]))
        headers.append((name, draw(st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"x" * 5000, b"openai-custom"]))))
    target = endpoint.encode()
    if kind == "key" and draw(st.booleans()):
        headers = headers[1:]
        target += (b"&" if b"?" in target else b"?") + b"key=%FF%FE"
    return {
        "label": f"{kind} {endpoint}",
        "data": request_bytes("POST", target, headers, body, framing=framing),
        "must_refuse": must_refuse,
    }


@pytest.fixture(scope="module")
def fuzz_gateway(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("fuzz-gateway")
    gw = start_gateway(
        workdir,
        {
            "api_keys": [CLIENT_KEY],
            "default_provider": "openai-custom",
            "providers": api_key_providers(fakes),
            "models": {"claude-sonnet-4-5": "claude-custom:claude-sonnet-4-5"},
            "limits": {"max_body": "64KiB", "max_depth": 64},
        },
    )
    yield gw
    gw.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.timeout(60 + EXAMPLES // 5)  # each input is answered within ANSWER_TIMEOUT, most in ~10 ms
def test_fuzzed_requests_never_500_hang_or_leak(fuzz_gateway: GatewayProcess, fakes: Fakes) -> None:
    statuses: Counter[int] = Counter()

    @seed(20)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=False,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests())
    def one(case: dict[str, Any]) -> None:
        before = fakes.request_count()
        answer = exchange(fuzz_gateway.url, case["data"], timeout=ANSWER_TIMEOUT)
        statuses[answer.status] += 1
        assert answer.status != 0, f"{case['label']}: connection closed without an answer"
        assert answer.status != 500, f"{case['label']}: 500 {answer.body[:300]!r}"
        if case["must_refuse"]:
            assert answer.status >= 400, f"{case['label']}: accepted ({answer.status})"
            assert fakes.request_count() == before, f"{case['label']}: forwarded a request it refused"
        assert fuzz_gateway.proc.poll() is None, f"{case['label']}: the gateway exited"

    one()
    rss = _rss_mb(fuzz_gateway.proc.pid)
    print(f"\nfuzz: {sum(statuses.values())} inputs, statuses {dict(sorted(statuses.items()))}, RSS {rss:.0f} MB")
    assert fuzz_gateway.proc.poll() is None
    assert rss < MAX_RSS_MB
    assert "Traceback" not in fuzz_gateway.log(), fuzz_gateway.log()[-3000:]


CHAT_BODY = json.dumps(SEEDS["/v1/chat/completions"]).encode()
AUTH_JSON = [(b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"content-type", b"application/json")]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_encoded_body_is_forwarded_decoded_and_a_bomb_is_413(
    fuzz_gateway: GatewayProcess, fakes: Fakes, coding: str
) -> None:
    compress = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}[coding]
    headers = [*AUTH_JSON, (b"content-encoding", coding.encode())]
    answer = exchange(fuzz_gateway.url, request_bytes("POST", b"/v1/chat/completions", headers, compress(CHAT_BODY)))
    assert answer.status == 200, answer.body[:300]
    sent = fakes.openai.requests[-1]
    assert "content-encoding" not in {k.lower() for k in sent.headers} and sent.json["messages"]

    before = fakes.request_count()
    bomb = compress(b'{"model": "' + b"a" * (50 * 1024 * 1024) + b'"}')  # 50 MiB decoded, ~50 KiB sent
    answer = exchange(fuzz_gateway.url, request_bytes("POST", b"/v1/chat/completions", headers, bomb))
    assert answer.status == 413 and b"limits.max_body" in answer.body
    assert fakes.request_count() == before


def test_chunked_request_with_trailers_is_answered(fuzz_gateway: GatewayProcess) -> None:
    data = request_bytes("POST", b"/v1/chat/completions", AUTH_JSON, CHAT_BODY, framing="trailers")
    answer = exchange(fuzz_gateway.url, data, timeout=10)
    assert answer.status == 200
