"""Settings -> connection security for every Kafka and PostgreSQL client lendstream builds.

One place turns the `LENDSTREAM_KAFKA_SECURITY_PROTOCOL`, `…_SASL_*`, `…_SSL_*` and
`LENDSTREAM_PG_SSL*` settings into what each client library takes:

- `kafka_client_options` — keyword arguments for any aiokafka client (admin, producer, the
  group-less probe consumer), passed next to `bootstrap_servers`;
- `faust_broker_credentials` — Faust's `broker_credentials`, which faust-streaming turns into the
  same aiokafka arguments for its own consumer and producer;
- `postgres_dsn` — the DSN with `sslmode` / `sslrootcert` merged in as libpq parameters, which
  asyncpg (and psql, pg_dump…) apply with libpq's semantics.

With every setting unset the result is exactly what lendstream did before: PLAINTEXT Kafka and
the DSN as given. A certificate or key that cannot be loaded raises `SettingsError` naming the
variable, so start-up stops with one line.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lendstream.settings import ENV_PREFIX, Settings, SettingsError

DEFAULT_SASL_MECHANISM = "PLAIN"


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS client context (server certificate and host name verified), or None without TLS.

    Without `LENDSTREAM_KAFKA_SSL_CAFILE` the system's trusted CAs are used.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"{ENV_PREFIX}KAFKA_SSL_CAFILE: cannot load {cafile}: {exc}") from None
    if settings.kafka_ssl_certfile is not None:
        try:
            context.load_cert_chain(
                settings.kafka_ssl_certfile,
                settings.kafka_ssl_keyfile,
                settings.kafka_ssl_key_password,
            )
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"{ENV_PREFIX}KAFKA_SSL_CERTFILE: cannot load the client certificate "
                f"{settings.kafka_ssl_certfile} (key {settings.kafka_ssl_keyfile or 'in it'}): "
                f"{exc}"
            ) from None
    return context


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka client: `AIOKafkaProducer(bootstrap_servers=…, **these)`."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or DEFAULT_SASL_MECHANISM
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same settings (None for PLAINTEXT).

    faust-streaming maps these back to aiokafka arguments (`credentials_to_aiokafka_auth`):
    `SSLCredentials` -> SSL; `SASLCredentials` -> SASL_PLAINTEXT, or SASL_SSL when it carries an
    SSL context. A test checks that both paths give the same arguments.
    """
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism or DEFAULT_SASL_MECHANISM,
    )


def postgres_dsn(settings: Settings, dsn: str | None = None) -> str:
    """`dsn` (default `LENDSTREAM_PG_DSN`) with `LENDSTREAM_PG_SSLMODE` and
    `LENDSTREAM_PG_SSLROOTCERT` set as its `sslmode` / `sslrootcert` parameters.

    A setting replaces the same parameter in the DSN; other parameters (client certificates
    `sslcert`/`sslkey`, `target_session_attrs`…) are kept. With neither setting the DSN is
    returned unchanged.
    """
    dsn = dsn if dsn is not None else settings.pg_dsn
    if dsn is None:
        raise SettingsError(f"{ENV_PREFIX}PG_DSN is required but not set")
    wanted = {
        name: str(value)
        for name, value in (
            ("sslmode", settings.pg_sslmode),
            ("sslrootcert", settings.pg_sslrootcert),
        )
        if value is not None
    }
    if not wanted:
        return dsn
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in wanted]
    query.extend(wanted.items())
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))
