"""The one settings object, read from the environment (and an optional `.env` file).

Nothing else in the code base reads `os.environ`: build `Settings` once at the edge (the CLI)
and pass it down. A missing or malformed value stops start-up with one line naming the variable
(`SettingsError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

ENV_PREFIX = "LENDSTREAM_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `90s`, `15m`, `1h` (contract §2); a number is taken as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90, 90s, 15m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_durations(value: Any) -> tuple[float, ...]:
    """A comma-separated list of durations, e.g. `1s,10s,60s,5m`."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    parsed = tuple(parse_duration(item) for item in items if str(item).strip())
    if not parsed:
        raise ValueError("at least one duration is needed")
    return parsed


Duration = Annotated[float, BeforeValidator(parse_duration)]
Durations = Annotated[tuple[float, ...], NoDecode, BeforeValidator(parse_durations)]

_KAFKA_URL = re.compile(r"^kafka://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of lendstream, read from `LENDSTREAM_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    kafka: str | None = Field(default=None, description="bootstrap servers, kafka://host:port,…")
    pg_dsn: str | None = Field(default=None, description="PostgreSQL DSN")
    pg_schema: str = Field(default="lendstream", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    data_dir: Path = Path("./.lendstream")
    web_port: int = Field(default=6066, ge=0, le=65535)
    partitions: int = Field(default=8, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=16)
    gateway_url: str | None = None

    park_deadline: Duration = 3600.0
    saga_deadline: Duration = 900.0
    retry_backoff: Durations = (1.0, 10.0, 60.0, 300.0)

    batch_max: int = Field(default=2000, ge=1, le=100_000)
    batch_within: Duration = 0.2
    kafka_session_timeout: Duration = 10.0
    kafka_heartbeat_interval: Duration = 1.0
    pg_pool_max: int = Field(default=4, ge=1, le=100)
    worker_name: str = Field(default="", max_length=100)
    probe_interval: Duration = 5.0  # how often a worker measures lag, dead letters, sagas

    @field_validator("kafka")
    @classmethod
    def _check_kafka(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = [part.strip() for part in value.split(",") if part.strip()]
        if not urls or not all(_KAFKA_URL.match(url) for url in urls):
            raise ValueError(f"expected kafka://host:port[,kafka://host:port…], got {value!r}")
        return ",".join(urls)

    @field_validator("pg_dsn")
    @classmethod
    def _check_pg_dsn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("expected a postgresql:// DSN")
        return value

    @field_validator("gateway_url")
    @classmethod
    def _check_gateway_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s):// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @property
    def bootstrap_servers(self) -> list[str]:
        """`host:port` items of `kafka` (empty until a broker is configured)."""
        if not self.kafka:
            return []
        return [url.removeprefix("kafka://") for url in self.kafka.split(",")]

    def require(self, *names: str) -> Settings:
        """Fail with `SettingsError` when one of `names` is unset (e.g. `kafka` for `worker`)."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} is required but not set")
        return self


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment; `SettingsError` names the first bad variable."""
    try:
        return Settings(**overrides)
    except _SourceError as exc:
        raise SettingsError(
            str(exc).replace('field "', f"{ENV_PREFIX}").split('" from')[0]
        ) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        name = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}" if error["loc"] else ENV_PREFIX
        raise SettingsError(f"{name}: {error['msg']}") from None
