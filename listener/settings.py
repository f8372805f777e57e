"""The listener's settings: every knob and its default, declared once.

Environment variables mirror the original ``application.yml`` keys (``websocket.client.*``). The same keys can
be read from a YAML file in the original shape (``--config application.yml``)::

    websocket:
      client:
        enabled: true
        baseurl: https://messenger.example.com
        topic: proxy_config_events
        retry-interval: 5000

The environment wins over the file (as Spring's relaxed binding does).
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cache.names import DEFAULT_PREFIX
from listener.errors import ConfigError
from proxysync import constants as C

Transport = Literal["auto", "sockjs", "sockjs-raw", "websocket"]
GapPolicy = Literal["resync", "none"]

# The YAML file being read (set only while load_settings() builds the object).
_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("listener_yaml", default=None)

# YAML path (under the root mapping) -> environment variable name.
YAML_KEYS: dict[tuple[str, ...], str] = {
    ("websocket", "client", "enabled"): "WEBSOCKET_CLIENT_ENABLED",
    ("websocket", "client", "baseurl"): "WEBSOCKET_CLIENT_BASEURL",
    ("websocket", "client", "endpoint"): "WEBSOCKET_CLIENT_ENDPOINT",
    ("websocket", "client", "topic"): "WEBSOCKET_CLIENT_TOPIC",
    ("websocket", "client", "transport"): "WEBSOCKET_CLIENT_TRANSPORT",
    ("websocket", "client", "retry-interval"): "WEBSOCKET_CLIENT_RETRY_INTERVAL",
    ("websocket", "client", "retry-max"): "WEBSOCKET_CLIENT_RETRY_MAX",
    ("websocket", "client", "stomp-host"): "WEBSOCKET_CLIENT_STOMP_HOST",
    ("websocket", "client", "heartbeat"): "WEBSOCKET_CLIENT_HEARTBEAT",
    ("websocket", "client", "max-frame"): "WEBSOCKET_CLIENT_MAX_FRAME",
    ("websocket", "client", "token"): "WEBSOCKET_CLIENT_TOKEN",
    ("websocket", "client", "token-file"): "WEBSOCKET_CLIENT_TOKEN_FILE",
    ("websocket", "client", "ca-bundle"): "WEBSOCKET_CLIENT_CA_BUNDLE",
    ("websocket", "client", "gap-policy"): "WEBSOCKET_CLIENT_GAP_POLICY",
    ("iam", "token-url"): "IAM_TOKEN_URL",
    ("iam", "client-id"): "IAM_CLIENT_ID",
    ("iam", "client-secret"): "IAM_CLIENT_SECRET",
    ("listener", "spool-path"): "LISTENER_SPOOL_PATH",
    ("listener", "http-port"): "LISTENER_HTTP_PORT",
    ("celery", "broker-url"): "CELERY_BROKER_URL",
}


class _YamlSource(PydanticBaseSettingsSource):
    """Values from the ``--config`` YAML file, keyed by environment-variable alias."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers everything at once

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        return yaml_values(path)


def yaml_values(path: Path) -> dict[str, Any]:
    """The known keys found in a YAML file in the original shape, as ``{ENV_NAME: value}``."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} is not a YAML mapping")
    found: dict[str, Any] = {}
    for keys, env in YAML_KEYS.items():
        node: Any = doc
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            found[env] = node
    return found


class ListenerSettings(BaseSettings):
    """Every listener setting. Attribute names are short; the environment names are the aliases."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=False)

    enabled: bool = Field(True, alias="WEBSOCKET_CLIENT_ENABLED")
    baseurl: str = Field("http://localhost:8080", alias="WEBSOCKET_CLIENT_BASEURL")
    endpoint: str = Field(C.DEFAULT_ENDPOINT, alias="WEBSOCKET_CLIENT_ENDPOINT")
    topic: str = Field(C.DEFAULT_TOPIC, alias="WEBSOCKET_CLIENT_TOPIC")
    transport: Transport = Field("auto", alias="WEBSOCKET_CLIENT_TRANSPORT")
    retry_interval_ms: int = Field(5000, ge=1, alias="WEBSOCKET_CLIENT_RETRY_INTERVAL")
    retry_max_ms: int = Field(60000, ge=1, alias="WEBSOCKET_CLIENT_RETRY_MAX")
    stomp_host: str | None = Field(None, alias="WEBSOCKET_CLIENT_STOMP_HOST")
    heartbeat_ms: int = Field(10000, ge=0, alias="WEBSOCKET_CLIENT_HEARTBEAT")
    max_frame: int = Field(3 * 1024 * 1024, ge=1024, alias="WEBSOCKET_CLIENT_MAX_FRAME")
    token: SecretStr | None = Field(None, alias="WEBSOCKET_CLIENT_TOKEN")
    token_file: Path | None = Field(None, alias="WEBSOCKET_CLIENT_TOKEN_FILE")
    iam_token_url: str | None = Field(None, alias="IAM_TOKEN_URL")
    iam_client_id: str | None = Field(None, alias="IAM_CLIENT_ID")
    iam_client_secret: SecretStr | None = Field(None, alias="IAM_CLIENT_SECRET")
    ca_bundle: Path | None = Field(None, alias="WEBSOCKET_CLIENT_CA_BUNDLE")
    gap_policy: GapPolicy = Field("resync", alias="WEBSOCKET_CLIENT_GAP_POLICY")
    spool_path: Path = Field(Path("listener-spool.sqlite3"), alias="LISTENER_SPOOL_PATH")
    http_port: int = Field(8081, ge=0, le=65535, alias="LISTENER_HTTP_PORT")
    broker_url: str = Field(C.DEFAULT_REDIS_URL, alias="CELERY_BROKER_URL")
    # Delivery confirmation (listener/confirm.py): where workers mark the tasks they started; 0 s = off.
    cache_redis_url: str | None = Field(None, alias="CACHE_REDIS_URL")
    cache_prefix: str = Field(DEFAULT_PREFIX, alias="CACHE_PREFIX")
    confirm_after_s: float = Field(10.0, ge=0, alias="LISTENER_CONFIRM_AFTER")
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the YAML file.
        return init_settings, env_settings, _YamlSource(settings_cls)

    @property
    def url(self) -> str:
        """The Messenger endpoint as configured: ``{baseurl}{endpoint}``."""
        return self.baseurl.rstrip("/") + (
            "/" + self.endpoint.lstrip("/") if self.endpoint.strip("/") else ""
        )

    @property
    def destination(self) -> str:
        return C.topic_destination(self.topic)

    @property
    def cache_url(self) -> str:
        return C.cache_url(self.cache_redis_url, self.broker_url)

    @property
    def uses_iam(self) -> bool:
        return bool(self.iam_token_url)


def load_settings(config: Path | None = None, **overrides: Any) -> ListenerSettings:
    """Settings from arguments, the environment and (optionally) a YAML file, in that order of precedence."""
    token = _yaml_path.set(config)
    try:
        return ListenerSettings(**overrides)
    finally:
        _yaml_path.reset(token)
