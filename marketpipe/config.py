"""Service configuration: a file (YAML or TOML) overlaid by ``MARKETPIPE_<KEY>`` variables.

Every key is validated at start-up; an unknown key or a bad value stops the process with a
message naming the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MARKETPIPE_"


class ConfigError(Exception):
    """Raised for an unreadable config file, an unknown key or an invalid value."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseModel):
    """All of marketpipe's settings. Keys are case-insensitive; files use these names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where things are.
    nats_urls: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    redis_url: str = "redis://127.0.0.1:6379/0"
    etcd_endpoints: list[str] = Field(default_factory=list)
    binance_rest_url: str = "https://api.binance.com"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    assets_url: str = ""
    settings_url: str = ""

    # Naming.
    subject_prefix: str = ""
    redis_prefix: str = "marketpipe:"

    # Pairs when no assets API is configured.
    priority_symbols: list[str] = Field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    quote_assets: list[str] = Field(default_factory=lambda: ["USDT"])
    max_symbols: int = Field(default=0, ge=0, description="0: no cap")

    # Polling.
    assets_poll_seconds: float = Field(default=60.0, gt=0)
    settings_poll_seconds: float = Field(default=30.0, gt=0)

    # Order books.
    publish_interval_ms: int = Field(default=100, ge=1)
    publish_max_wait_ms: float = Field(default=20.0, ge=0)
    publish_deltas: bool = True  # delta.orderbook.<SYMBOL> beside every full view (DESIGN §10)
    default_max_spread_pct: float = Field(default=35.0, gt=0, le=100)
    default_depth: int = Field(default=250, ge=1, le=5000)
    # depth snapshot limits; 0: the smallest of 100/500/1000/5000 covering twice the view's Depth
    snapshot_limit: int = Field(default=0, ge=0, le=5000, description="priority pairs; 0: auto")
    snapshot_limit_others: int = Field(
        default=0, ge=0, le=5000, description="depth limit for non-priority pairs; 0: auto"
    )
    diff_buffer_size: int = Field(default=1000, ge=1)
    audit_interval_seconds: float = Field(default=0.0, ge=0, description="0: off")
    quiet_book_seconds: float = Field(
        default=10.0, gt=0, description="a pair without a diff this long is checked by snapshot"
    )

    # Exchange connections and REST budget.
    streams_per_connection: int = Field(default=200, ge=1, le=1024)
    rest_weight_share: float = Field(default=0.5, gt=0, le=1)
    rest_weight_limit: int = Field(default=6000, ge=1)
    max_connection_age_seconds: float = Field(default=23 * 3600, gt=0)
    silent_connection_seconds: float = Field(default=30.0, gt=0)
    reconnect_backoff_max_seconds: float = Field(default=30.0, gt=0)

    # High availability.
    leader_ttl_seconds: int = Field(default=5, ge=1)
    shards: int = Field(
        default=1, ge=1, le=1024, description="pairs are split into this many shards (DESIGN §9)"
    )
    standbys_per_shard: int = Field(
        default=1, ge=0, le=8, description="hot standbys each shard keeps besides its leader"
    )

    # Gateway.
    gateway_max_connections: int = Field(default=10000, ge=1)
    gateway_max_topics: int = Field(default=100, ge=1)
    gateway_max_message_bytes: int = Field(default=4096, ge=64)
    gateway_max_messages_per_second: float = Field(default=10.0, gt=0)
    # a slow client is cut (1013) when it holds more than this unsent, or stays behind longer
    gateway_max_pending_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    gateway_write_deadline_seconds: float = Field(default=10.0, gt=0)
    # the kernel's send buffer per client socket (0: the OS's own, autotuned up to MBs)
    gateway_socket_send_buffer_bytes: int = Field(default=256 * 1024, ge=0)
    gateway_auth_tokens: list[str] = Field(default_factory=list)
    gateway_allowed_origins: list[str] = Field(default_factory=list)
    gateway_ping_seconds: float = Field(default=20.0, gt=0)
    gateway_idle_timeout_seconds: float = Field(default=120.0, gt=0)
    gateway_compression: bool = False

    # Operations.
    http_host: str = "0.0.0.0"  # where --port listens (probes, metrics, the gateway's WebSocket)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    @field_validator(
        "nats_urls",
        "etcd_endpoints",
        "priority_symbols",
        "quote_assets",
        "gateway_auth_tokens",
        "gateway_allowed_origins",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("gateway_auth_tokens", mode="after")
    @classmethod
    def _no_empty_token(cls, value: list[str]) -> list[str]:
        # an empty token would admit a request that presents none
        if any(not token.strip() for token in value):
            raise ValueError("a token may not be empty")
        return value

    @field_validator("priority_symbols", mode="after")
    @classmethod
    def _normalise_symbols(cls, value: list[str]) -> list[str]:
        return [normalise_symbol(s) for s in value]

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
        return upper


def normalise_symbol(name: str) -> str:
    """``btc-usdt`` / ``BTC/USDT`` / ``BTCUSDT`` -> ``BTCUSDT``."""
    return name.replace("-", "").replace("/", "").replace("_", "").strip().upper()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).lower(): v for k, v in data.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX)
    }


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """File, then environment, then explicit overrides; raise ConfigError naming any bad key."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_file(Path(config_file)))
    values.update(_from_env(os.environ if environ is None else environ))
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {key.upper()!r} (MARKETPIPE_{key.upper()})")
        else:
            lines.append(f"setting {key.upper()!r}: {err['msg']} (got {err.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)
