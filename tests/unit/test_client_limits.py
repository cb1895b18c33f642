"""ClientLimits hands the write timeout to mitmproxy's own inactivity timeout (tcp_timeout)."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons

from addons.client_limits import ClientLimits
from addons.context import Gateway
from core.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, 300),
        ({"write_timeout": 42.5, "idle_timeout": 60}, 60),
        ({"write_timeout": 42.5, "idle_timeout": 5, "body_timeout": 5}, 43),
    ],
)
def test_tcp_timeout_is_the_longest_limit(limits: dict, expected: int) -> None:
    addon = ClientLimits(Gateway(config=parse_config({"limits": limits})))
    with taddons.context(addon) as tctx:
        addon.configure({"config"})
        assert tctx.options.tcp_timeout == expected


@pytest.mark.parametrize(
    "bad", [{"header_timeout": 0}, {"max_connections": 0}, {"max_depth": 2}, {"write_timeout": -1}]
)
def test_nonsense_limits_stop_the_start(bad: dict) -> None:
    with pytest.raises(ConfigError, match="limits"):
        parse_config({"limits": bad})
