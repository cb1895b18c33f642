"""bench.profile_summary's attribution of py-spy samples to the categories issue 21 splits time into."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import profile_summary as ps

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "bench_profile_raw.txt"

LAYERS = "mitmproxy HTTP layers"
HOOKS = "mitmproxy addon/hook dispatch"
RELAY = "our stream relay (addons/stream.py, core/http1.py)"
SSE = "SSE framing (translators/sse.py)"
TRANSLATION = "translation (other translators/)"
JSON = "JSON encode/decode"
LOGGING = "logging / inspect copies"
ASYNCIO = "asyncio event loop & transports"
GATEWAY = "gateway: other code (routing, auth, providers...)"
MITM_OTHER = "mitmproxy: other"


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        # the innermost frame in a category decides
        ("Handle._run (asyncio/events.py:89);ConnectionHandler.server_event (mitmproxy/proxy/server.py:426)", LAYERS),
        ("HttpStream._handle_event (mitmproxy/proxy/layers/http/__init__.py:204)", LAYERS),
        ("Http1Server.send (mitmproxy/proxy/layers/http/_http1.py:25);Message.headers (mitmproxy/http.py:296)", LAYERS),
        ("AddonManager.invoke_addon (mitmproxy/addonmanager.py:27);Upstream.request (addons/upstream.py:218)", GATEWAY),
        ("ProxyConnectionHandler.handle_hook (mitmproxy/proxy/mode_servers.py:73)", HOOKS),
        ("LoopbackRelay._pump (addons/stream.py:414);StreamWriter.write (asyncio/streams.py:340)", ASYNCIO),
        ("Upstream._send (addons/upstream.py:506);Http1Client.post (core/http1.py:130)", RELAY),
        ("Http1Client._head (core/http1.py:247);Connection.next_event (h11/_connection.py:483)", "h11"),
        ("feed (translators/claude.py:500);encode_event (translators/sse.py:40)", SSE),
        ("feed (addons/stream.py:150);encode (translators/claude.py:500)", TRANSLATION),
        ("encode_event (translators/sse.py:40);JSONEncoder.encode (json/encoder.py:203)", JSON),
        ("Logger.debug (logging/__init__.py:1507)", LOGGING),
        ("log (mitmproxy/log.py:60)", LOGGING),
        ("Flow.copy (mitmproxy/flow.py:180)", MITM_OTHER),
        # helpers pass the sample to their caller
        ("Hook.args (mitmproxy/hooks.py:20);fields (dataclasses.py:1290)", HOOKS),
        ("FlowInspect.response (addons/flow_inspect.py:80);deepcopy (copy.py:136)", LOGGING),
        ("server_event (mitmproxy/proxy/server.py:426);create_task (mitmproxy/utils/asyncio_utils.py:28)", LAYERS),
        ("helper (contextlib.py:305)", ps.OTHER),
        # absolute paths (site-packages, the standard library, a checkout) are cut to the import root
        ("f (/venv/lib/python3.13/site-packages/h11/_readers.py:114)", "h11"),
        ("f (/usr/lib/python3.13/json/decoder.py:345)", JSON),
        ("f (/work/wt/x/addons/stream.py:150)", RELAY),
        ("f (/venv/lib/python3.13/site-packages/pydantic/core/x.py:1)", ps.OTHER),
        # idle: waiting in the selector
        ("BaseEventLoop._run_once (asyncio/base_events.py:1987);EpollSelector.select (selectors.py:452)", ps.IDLE),
        ("EpollSelector.select (/usr/lib/python3.13/selectors.py:452)", ps.IDLE),
        ("EpollSelector.register (selectors.py:350)", ASYNCIO),
    ],
)
def test_categorize(stack: str, expected: str) -> None:
    assert ps.categorize(stack.split(";")) == expected


def test_golden_profile_breakdown() -> None:
    prof = ps.load(GOLDEN.read_text(encoding="utf-8"))
    assert prof.total == 54
    assert prof.busy == 44
    assert dict(prof.categories) == {
        ps.IDLE: 10,
        LAYERS: 9,
        ASYNCIO: 6,
        GATEWAY: 5,
        HOOKS: 4,
        "h11": 4,
        JSON: 4,
        RELAY: 3,
        TRANSLATION: 3,
        SSE: 2,
        LOGGING: 2,
        MITM_OTHER: 1,
        ps.OTHER: 1,
    }


def test_summary_and_table_show_idle_apart_from_the_busy_shares(tmp_path: Path) -> None:
    text = ps.summarize(GOLDEN)
    assert "idle in the selector's wait: 18.5% of all samples" in text
    assert f"20.5%  {LAYERS}" in text  # 9 of 44 busy samples
    (tmp_path / "a.txt").write_text(GOLDEN.read_text(encoding="utf-8"), encoding="utf-8")
    table = ps.table([tmp_path / "a.txt"])
    assert f"| {LAYERS} | 20.5% |" in table
    assert f"| {ps.IDLE}, of all samples | 18.5% |" in table
