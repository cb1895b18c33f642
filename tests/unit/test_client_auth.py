"""ClientAuth with mitmproxy's own test helpers: carriers, dialect-shaped 401s, fail-closed."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.client_auth import ClientAuth, key_file_for, key_id
from addons.context import CLIENT_KEY, CLIENT_KEY_ID, CLIENT_KEY_NAME, Gateway
from auth.client_keys import ClientKey, Keyring, plain_key_name
from core.config import parse_config


def make_flow(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(method, f"http://127.0.0.1:1{path}", body, headers or {})
    return flow


@pytest.fixture
def auth(tmp_path: Path) -> ClientAuth:
    gateway = Gateway(parse_config({"api_keys": ["k-one", "k-two"]}), tmp_path / "config.yaml")
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
        yield addon


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"authorization": "Bearer k-one"}, "/v1/chat/completions"),
        ({"x-api-key": "k-two"}, "/v1/messages"),
        ({"x-goog-api-key": "k-one"}, "/v1beta/models/g:generateContent"),
        ({}, "/v1beta/models/g:generateContent?key=k-two&alt=sse"),
    ],
)
def test_every_carrier_is_accepted_and_stripped(auth, headers, path):
    flow = make_flow("POST", path, headers)
    auth.request(flow)
    assert flow.response is None
    secret = b"k-one" if "k-one" in str(headers) + path else b"k-two"
    assert flow.metadata[CLIENT_KEY_ID] == key_id(secret)
    assert flow.metadata[CLIENT_KEY_NAME] == plain_key_name(secret) == flow.metadata[CLIENT_KEY].name
    assert flow.metadata[CLIENT_KEY].admin
    assert "authorization" not in flow.request.headers
    assert "x-api-key" not in flow.request.headers
    assert "x-goog-api-key" not in flow.request.headers
    assert "key" not in flow.request.query
    assert "k-one" not in flow.request.url and "k-two" not in flow.request.url


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/v1/chat/completions", lambda b: b["error"]["code"] == "invalid_api_key" and "type" in b["error"]),
        ("/v1/responses", lambda b: b["error"]["type"] == "authentication_error"),
        ("/v1/messages", lambda b: b["type"] == "error" and b["error"]["type"] == "authentication_error"),
        ("/v1beta/models/g:streamGenerateContent", lambda b: b["error"]["status"] == "UNAUTHENTICATED"),
        ("/claude-custom/v1/messages", lambda b: b["type"] == "error"),
    ],
)
def test_wrong_key_gets_401_in_the_callers_dialect(auth, path, check):
    flow = make_flow("POST", path, {"authorization": "Bearer nope", "x-api-key": "also-nope"})
    auth.request(flow)
    assert flow.response is not None and flow.response.status_code == 401
    body = json.loads(flow.response.content)
    assert check(body), body
    assert "nope" not in flow.response.text


def test_missing_key_is_refused_but_health_and_preflight_are_open(auth):
    flow = make_flow("GET", "/v1/models")
    auth.request(flow)
    assert flow.response.status_code == 401
    assert "missing API key" in flow.response.text
    for method, path in (("GET", "/health"), ("OPTIONS", "/v1/chat/completions")):
        flow = make_flow(method, path)
        auth.request(flow)
        assert flow.response is None


def test_an_answered_flow_is_left_alone(auth):
    flow = make_flow("POST", "/v1/chat/completions")
    flow.response = http.Response.make(204)
    auth.request(flow)
    assert flow.response.status_code == 204


def test_fails_closed_on_internal_error(tmp_path):
    gateway = Gateway(parse_config({}), tmp_path / "config.yaml")
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        # A key of the wrong type makes compare_digest raise inside the hook.
        gateway.keyring = Keyring([ClientKey("broken", "not-bytes")])  # type: ignore[arg-type]
        flow = make_flow("POST", "/v1/messages", {"x-api-key": "whatever"})
        addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert json.loads(flow.response.content)["type"] == "error"


def test_generated_key_is_created_once_with_0600(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config_path = tmp_path / "config.yaml"
    gateway = Gateway(parse_config({}), config_path)
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
        key_file = key_file_for(config_path)
        key = key_file.read_text().strip()
        assert key.startswith("sk-aicm-") and len(key) > 30
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert gateway.keyring.secrets() == [key.encode()]
        assert key in caplog.text and str(key_file) in caplog.text
        # A second start reuses it and does not print it again.
        caplog.clear()
        addon.configure({"config"})
        assert gateway.keyring.secrets() == [key.encode()]
        assert key not in caplog.text and str(key_file) in caplog.text


def test_env_keys_are_added(tmp_path, monkeypatch):
    monkeypatch.setenv("AICLIENT_API_KEYS", " env-a , env-b ,")
    gateway = Gateway(parse_config({"api_keys": ["cfg"]}), tmp_path / "config.yaml")
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
    assert gateway.keyring.secrets() == [b"cfg", b"env-a", b"env-b"]
    assert not key_file_for(tmp_path / "config.yaml").exists()


def test_named_entries_and_an_expired_key(tmp_path):
    config = parse_config(
        {
            "api_keys": [
                {"key": "k-alice", "name": "alice", "models": ["gpt-*"]},
                {"key": "k-old", "name": "old", "expires_at": "2020-01-01T00:00:00Z"},
            ]
        }
    )
    gateway = Gateway(config, tmp_path / "config.yaml")
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
        flow = make_flow("POST", "/v1/messages", {"x-api-key": "k-alice"})
        addon.request(flow)
        assert flow.response is None and flow.metadata[CLIENT_KEY_NAME] == "alice"
        assert not flow.metadata[CLIENT_KEY].admin
        flow = make_flow("POST", "/v1/messages", {"x-api-key": "k-old"})
        addon.request(flow)
    assert flow.response.status_code == 401
    body = json.loads(flow.response.content)
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"] == "client key 'old' expired at 2020-01-01T00:00:00Z"
    assert "k-old" not in flow.response.text


def test_a_bad_keys_file_stops_the_start_with_its_path(tmp_path, caplog):
    (tmp_path / "keys.yaml").write_text("- {key: k-bob, name: bob}\n- {key: k-eve, name: bob}\n")
    gateway = Gateway(parse_config({"keys_file": "keys.yaml"}), tmp_path / "config.yaml")
    addon = ClientAuth(gateway)
    with taddons.context(addon):
        addon.configure({"config"})
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["aiclient-mitm: invalid client keys: keys_file.1.name: 'bob' is already used by keys_file.0"]
    assert len(gateway.keyring) == 0
    assert "k-bob" not in caplog.text and "k-eve" not in caplog.text
