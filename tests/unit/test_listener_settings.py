"""Listener settings: environment names, the original application.yml shape, precedence, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from listener.auth import ClientCredentials, FileToken, NoToken, StaticToken, token_source
from listener.errors import AuthError, ConfigError
from listener.settings import YAML_KEYS, ListenerSettings, load_settings

ORIGINAL = """\
websocket:
  client:
    enabled: true                    # Enable/disable WebSocket client
    baseurl: https://messenger.jiffy.ai
    topic: proxy_config_events        # STOMP topic to subscribe
    retry-interval: 5000              # Retry interval in milliseconds
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in [*YAML_KEYS.values(), "LOG_FORMAT"]:
        monkeypatch.delenv(env, raising=False)


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings()
    assert (s.enabled, s.baseurl, s.endpoint, s.topic, s.transport) == (
        True,
        "http://localhost:8080",
        "/messenger/websocket",
        "proxy_config_events",
        "auto",
    )
    assert (s.retry_interval_ms, s.retry_max_ms, s.heartbeat_ms, s.max_frame) == (
        5000,
        60000,
        10000,
        3 * 1024**2,
    )
    assert (s.gap_policy, s.http_port, s.broker_url, s.stomp_host) == (
        "resync",
        8081,
        "redis://localhost:6379/0",
        None,
    )
    assert s.url == "http://localhost:8080/messenger/websocket"
    assert s.destination == "/topic/proxy_config_events"


def test_original_yaml_shape_is_read(tmp_path: Path) -> None:
    path = tmp_path / "application.yml"
    path.write_text(ORIGINAL)
    s = load_settings(path)
    assert s.baseurl == "https://messenger.jiffy.ai" and s.retry_interval_ms == 5000
    assert s.url == "https://messenger.jiffy.ai/messenger/websocket"


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "application.yml"
    path.write_text(ORIGINAL + "    transport: sockjs\niam:\n  token-url: http://iam/token\n")
    monkeypatch.setenv("WEBSOCKET_CLIENT_RETRY_INTERVAL", "250")
    monkeypatch.setenv("WEBSOCKET_CLIENT_ENABLED", "false")
    s = load_settings(path)
    assert (s.retry_interval_ms, s.enabled, s.transport, s.iam_token_url) == (
        250,
        False,
        "sockjs",
        "http://iam/token",
    )


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="WEBSOCKET_CLIENT_TRANSPORT"):
        ListenerSettings(WEBSOCKET_CLIENT_TRANSPORT="smoke-signals")
    bad = tmp_path / "bad.yml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        load_settings(bad)


def test_token_source_follows_the_settings(tmp_path: Path) -> None:
    assert isinstance(token_source(load_settings()), NoToken)
    assert isinstance(token_source(load_settings(WEBSOCKET_CLIENT_TOKEN="abcd1234")), StaticToken)
    token_file = tmp_path / "tok"
    source = token_source(load_settings(WEBSOCKET_CLIENT_TOKEN_FILE=str(token_file)))
    assert isinstance(source, FileToken)
    with pytest.raises(AuthError, match="cannot read token file"):
        source.get()
    token_file.write_text("first-token\n")
    assert source.get() == "first-token"
    token_file.write_text("second-token")
    assert source.get() == "second-token"  # re-read on every connect
    iam = load_settings(
        IAM_TOKEN_URL="http://127.0.0.1:9/token", IAM_CLIENT_ID="c", IAM_CLIENT_SECRET="s3cr3t!"
    )
    assert isinstance(token_source(iam), ClientCredentials)
    with pytest.raises(AuthError, match="IAM_CLIENT_ID"):
        token_source(load_settings(IAM_TOKEN_URL="http://iam/token"))
