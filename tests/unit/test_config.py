"""The configuration file: every mistake is named by its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"providers": {"openai-custom": {"base_url": "nope"}}}, "providers.openai-custom.base_url: not a URL"),
        ({"providers": {"openai-custom": {"base_url": "ftp://x"}}}, "providers.openai-custom.base_url: not an http"),
        ({"providers": {"made-up": {}}}, "unknown provider id"),
        ({"listen": {"port": 70000}}, "listen.port:"),
        ({"default_provider": "claude-custom"}, "default_provider: 'claude-custom' is not under providers"),
        ({"models": {"fast": "no-colon"}}, "expected 'provider:model'"),
        ({"models": {"fast": "unknown-provider:m"}}, "models.fast.provider"),
        ({"limits": {"max_body": "lots"}}, "limits.max_body:"),
        ({"lissten": {}}, "lissten: unknown key"),
        ({"providers": {"openai-custom": {"accounts": [{"api_kee": "x"}]}}}, "accounts.0.api_kee: unknown key"),
        ([1, 2], "mapping of keys at the top level"),
    ],
)
def test_invalid_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert message in str(e.value)


def test_env_references_are_expanded(monkeypatch):
    monkeypatch.setenv("AICM_TEST_KEY", "sk-from-env")
    config = parse_config(
        {
            "providers": {
                "openai-custom": {
                    "base_url": "${AICM_TEST_BASE:-http://127.0.0.1:9/v1}",
                    "accounts": [{"api_key": "${AICM_TEST_KEY}"}, {"api_key": "${AICM_TEST_UNSET}"}],
                }
            }
        }
    )
    provider = config.providers["openai-custom"]
    assert str(provider.base_url) == "http://127.0.0.1:9/v1"
    assert provider.accounts[0].api_key.get_secret_value() == "sk-from-env"
    assert provider.accounts[1].api_key.get_secret_value() == ""


def test_model_shorthand_and_sizes():
    config = parse_config(
        {
            "providers": {"claude-custom": {}},
            "models": {"fast": "claude-custom:claude-haiku-4-5", "big": {"provider": "claude-custom", "model": "o"}},
            "limits": {"max_body": "1MiB"},
        }
    )
    assert config.models["fast"].provider == "claude-custom"
    assert config.models["fast"].model == "claude-haiku-4-5"
    assert int(config.limits.max_body) == 1024 * 1024


def test_secrets_do_not_show_in_repr():
    config = parse_config(
        {"api_keys": ["client-secret"], "providers": {"openai-custom": {"accounts": [{"api_key": "up"}]}}}
    )
    assert "client-secret" not in repr(config)
    assert "'up'" not in repr(config)


def test_shipped_config_is_valid():
    config = load_config(REPO / "config.yaml")
    assert config.listen.port == 3000
    assert config.default_provider in config.providers


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
