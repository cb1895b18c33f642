"""ConfigLoader: the options the gateway needs, and a listener that is not a reverse proxy stops it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons

from addons.config_loader import ConfigLoader
from addons.context import Gateway


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_sets_the_options_and_leaves_the_listener_to_the_command_line(tmp_path):
    gateway = Gateway()
    loader = ConfigLoader(gateway)
    with taddons.context(proxyserver.Proxyserver(), loader) as tctx:
        tctx.configure(
            loader, config=str(write(tmp_path, "listen: {host: 127.0.0.2, port: 3456}\nlimits: {max_body: 1MiB}\n"))
        )
        # A script's mode is ignored before the first listener exists (core/launch.py sets it).
        assert tctx.options.mode == ["regular"]
        assert tctx.options.connection_strategy == "lazy"
        assert tctx.options.http2 is False
        assert tctx.options.body_size_limit == str(2 * 1024 * 1024 + 1024 * 1024)
        assert tctx.options.stream_large_bodies is None
    assert gateway.config.listen.port == 3456


def test_invalid_config_is_logged(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    gateway = Gateway()
    loader = ConfigLoader(gateway)
    with taddons.context(proxyserver.Proxyserver(), loader) as tctx:
        tctx.configure(loader, config=str(write(tmp_path, "providers: {openai-custom: {base_url: nope}}\n")))
    assert "providers.openai-custom.base_url: not a URL" in caplog.text
    assert gateway.config_path is None


def test_stream_large_bodies_is_refused(tmp_path):
    loader = ConfigLoader(Gateway())
    with taddons.context(proxyserver.Proxyserver(), loader) as tctx:
        with pytest.raises(Exception, match="stream_large_bodies"):
            tctx.configure(loader, stream_large_bodies="1m")


def test_running_without_the_reverse_listener_logs_the_flags(tmp_path, caplog):
    """A listener that is not the reverse one (a user's wrong --mode): an error naming the flags."""
    caplog.set_level(logging.ERROR)
    loader = ConfigLoader(Gateway())
    with taddons.context(proxyserver.Proxyserver(), loader) as tctx:
        tctx.configure(loader, config=str(write(tmp_path, "listen: {port: 3999}\n")))
        # No server was started in this test context, like a master that ignored the mode.
        loader.running()
    assert "not running the configured reverse listener" in caplog.text
    assert "--mode reverse:http://127.0.0.1:1@3999 --listen-host 127.0.0.1" in caplog.text
