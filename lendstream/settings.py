"""The one settings object, read from the environment (and an optional `.env` file).

Nothing else in the code base reads `os.environ`: build `Settings` once at the edge (the CLI)
and pass it down. A missing or malformed value stops start-up with one line naming the variable
(`SettingsError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
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


def _blank_is_none(value: Any) -> Any:
    """An empty variable (`LENDSTREAM_X=`) means unset, as in compose files and manifests."""
    return None if isinstance(value, str) and not value.strip() else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _kafka_protocol(value: Any) -> Any:
    return _upper(value) or "PLAINTEXT"


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


BlankIsNone = BeforeValidator(_blank_is_none)
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PgSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")

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
    web_port: int = Field(default=6066, ge=1, le=65535)
    partitions: int = Field(default=8, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=16)
    gateway_url: str | None = None
    # false: payout events come from elsewhere and no payout saga is started (contract §5 off)
    payout_saga: bool = True

    park_deadline: Duration = 3600.0
    saga_deadline: Duration = 900.0
    retry_backoff: Durations = (1.0, 10.0, 60.0, 300.0)

    # 10,000: batches in time order span less of each loan's life than a whole fetch did; at
    # 2,000 every loan was written about three times as often (docs/performance.md)
    batch_max: int = Field(default=10_000, ge=1, le=100_000)
    # 0.1: counted from the oldest queued record's arrival; at 2,000 events/s p99 from append to
    # commit 0.31-0.38 s (0.2: 0.50-0.68 s), worker CPU per event the same within the noise
    # (0.05: ~17% more, p99 no better); docs/performance.md
    batch_within: Duration = 0.1
    # true: agents take fetched records in time-ordered batches (lendstream.delivery); false:
    # Faust's stream
    batched_delivery: bool = True
    # true (with batched delivery): the loan processor decodes and folds the next batch while
    # PostgreSQL commits the previous one; commits and acks stay in order. Catch-up +15-20%
    # (docs/performance.md); false: one batch at a time
    pipelined_commits: bool = True
    # processes that fold the input partitions in `projections rebuild` (1: the rebuild's own)
    rebuild_workers: int = Field(default=2, ge=1, le=64)
    # `projections rebuild` fails when, for this long, the broker returns none of the messages
    # it still needs (the live positions point past a partition's end: a recreated topic), or,
    # in the swap round, a fold process reports nothing for 30 s longer (it hangs while the live
    # worker's position locks are held); the live tables stay as they were
    rebuild_stall_timeout: Duration = 300.0
    kafka_session_timeout: Duration = 10.0
    kafka_heartbeat_interval: Duration = 1.0
    pg_pool_max: int = Field(default=4, ge=1, le=100)
    # RocksDB memory of all the tables of a worker process, shared by every partition database
    # (lendstream/tables/store.py): an LRU block cache and a write buffer (memtable) budget.
    rocksdb_block_cache_mb: int = Field(default=32, ge=1, le=1_048_576)
    rocksdb_write_buffer_mb: int = Field(default=64, ge=1, le=1_048_576)
    worker_name: str = Field(default="", max_length=100)
    # Not SecretStr: `devstack.worker_env` hands settings to child processes by value.
    ingest_token: str | None = Field(default=None, repr=False, description="ingest bearer token")
    reader_password: str | None = Field(default=None, repr=False, description="analysts' password")
    gateway_connect_timeout: Duration = 2.0
    gateway_read_timeout: Duration = 10.0

    @field_validator("ingest_token", "reader_password")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    # Production topology and security (docs/operations.md). Unset: nothing changes.
    web_host: str = Field(default="127.0.0.1", pattern=r"^[A-Za-z0-9_.:\-]+$")
    create_topics: bool = True
    min_insync_replicas: Annotated[int | None, BlankIsNone] = Field(default=None, ge=1, le=16)
    kafka_security_protocol: Annotated[KafkaSecurityProtocol, BeforeValidator(_kafka_protocol)] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: Annotated[
        KafkaSaslMechanism | None, BlankIsNone, BeforeValidator(_upper)
    ] = Field(default=None, validate_default=True)
    kafka_sasl_username: Annotated[str | None, BlankIsNone] = Field(
        default=None, validate_default=True
    )
    kafka_sasl_password: Annotated[str | None, BlankIsNone] = Field(
        default=None, validate_default=True, repr=False
    )
    kafka_ssl_cafile: Annotated[Path | None, BlankIsNone] = None
    kafka_ssl_certfile: Annotated[Path | None, BlankIsNone] = None
    kafka_ssl_keyfile: Annotated[Path | None, BlankIsNone] = None
    kafka_ssl_key_password: Annotated[str | None, BlankIsNone] = Field(default=None, repr=False)
    pg_sslmode: Annotated[PgSslMode | None, BlankIsNone, BeforeValidator(_lower)] = None
    pg_sslrootcert: Annotated[Path | None, BlankIsNone] = None
    probe_interval: Duration = 5.0  # how often a worker measures lag, dead letters, sagas

    app_id: str = Field(
        default="lendstream",
        pattern=r"^[a-z][a-z0-9_.-]{0,62}$",
        description="Faust app id: the consumer group and the prefix of the changelog topics",
    )

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

    @field_validator("min_insync_replicas")
    @classmethod
    def _check_min_insync(cls, value: int | None, info: ValidationInfo) -> int | None:
        replication = info.data.get("replication_factor", 1)
        if value is not None and value > replication:
            raise ValueError(
                f"{value} is more than {ENV_PREFIX}REPLICATION_FACTOR ({replication}): "
                "no write could ever succeed"
            )
        return value

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
    @classmethod
    def _check_sasl(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("kafka_security_protocol", "PLAINTEXT")
        if protocol in _SASL and value is None and info.field_name != "kafka_sasl_mechanism":
            raise ValueError(f"required when {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL is {protocol}")
        if protocol not in _SASL and value is not None:
            raise ValueError(_only_with("SASL_PLAINTEXT or SASL_SSL", protocol))
        return value

    @field_validator(
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password"
    )
    @classmethod
    def _check_kafka_tls(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("kafka_security_protocol", "PLAINTEXT")
        if value is None:
            return None
        if protocol not in _TLS:
            raise ValueError(_only_with("SSL or SASL_SSL", protocol))
        if info.field_name in ("kafka_ssl_keyfile", "kafka_ssl_key_password") and not info.data.get(
            "kafka_ssl_certfile"
        ):
            raise ValueError(f"needs {ENV_PREFIX}KAFKA_SSL_CERTFILE (the client certificate)")
        return _existing_file(value) if isinstance(value, Path) else value

    @field_validator("pg_sslrootcert")
    @classmethod
    def _check_pg_sslrootcert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        mode = info.data.get("pg_sslmode")
        if value is not None and mode in ("disable", "allow", "prefer"):
            raise ValueError(
                f"is not used with {ENV_PREFIX}PG_SSLMODE={mode} (use require, verify-ca or "
                "verify-full)"
            )
        return None if value is None else _existing_file(value)

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


def _only_with(protocols: str, protocol: str) -> str:
    return (
        f"only applies when {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL is {protocols} (it is {protocol})"
    )


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    return path


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
