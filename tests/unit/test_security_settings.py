"""TLS/SASL settings for Kafka and TLS for PostgreSQL (issue 8): unset changes nothing, a bad
value stops start-up with one line naming the variable, and one function per client library
turns the settings into that library's arguments."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from lendstream.security import (
    faust_broker_credentials,
    kafka_client_options,
    kafka_ssl_context,
    postgres_dsn,
)
from lendstream.settings import Settings, SettingsError, load_settings
from tests.offline_app import offline_app
from tests.pki import make_pki
from tests.unit.test_settings import (  # the autouse fixture isolates from the machine's env
    assert_one_line_naming,
    clean_environment,  # noqa: F401
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    return {
        "ca": made.ca,
        "cert": made.server_cert,
        "key": made.server_key,
        "garbage": made.garbage,
    }


KAFKA_SECURITY_VARIABLES = [
    "LENDSTREAM_KAFKA_SECURITY_PROTOCOL",
    "LENDSTREAM_KAFKA_SASL_MECHANISM",
    "LENDSTREAM_KAFKA_SASL_USERNAME",
    "LENDSTREAM_KAFKA_SASL_PASSWORD",
    "LENDSTREAM_KAFKA_SSL_CAFILE",
    "LENDSTREAM_KAFKA_SSL_CERTFILE",
    "LENDSTREAM_KAFKA_SSL_KEYFILE",
    "LENDSTREAM_KAFKA_SSL_KEY_PASSWORD",
    "LENDSTREAM_PG_SSLMODE",
    "LENDSTREAM_PG_SSLROOTCERT",
]


def test_unset_changes_nothing() -> None:
    settings = load_settings(pg_dsn="postgresql://u@db:5432/lend")
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(settings) is None
    assert postgres_dsn(settings) == "postgresql://u@db:5432/lend"
    assert credentials_to_aiokafka_auth(None) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("variable", KAFKA_SECURITY_VARIABLES)
def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "")
    assert load_settings() == load_settings(_env_file=None)


def test_sasl_scram_over_tls(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("LENDSTREAM_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("LENDSTREAM_KAFKA_SASL_USERNAME", "lendstream")
    monkeypatch.setenv("LENDSTREAM_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("LENDSTREAM_KAFKA_SSL_CAFILE", str(pki["ca"]))
    settings = load_settings()
    options = kafka_client_options(settings)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "lendstream",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected_protocol"),
    [
        ({"LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"}, "SSL"),
        (
            {
                "LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "LENDSTREAM_KAFKA_SASL_USERNAME": "u",
                "LENDSTREAM_KAFKA_SASL_PASSWORD": "p",
            },
            "SASL_PLAINTEXT",
        ),
        (
            {
                "LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "LENDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                "LENDSTREAM_KAFKA_SASL_USERNAME": "u",
                "LENDSTREAM_KAFKA_SASL_PASSWORD": "p",
            },
            "SASL_SSL",
        ),
    ],
)
def test_faust_credentials_give_the_same_aiokafka_arguments(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected_protocol: str
) -> None:
    """The worker's Faust consumer/producer and our own clients connect the same way."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    ours = kafka_client_options(settings)
    faust_side = credentials_to_aiokafka_auth(faust_broker_credentials(settings))
    assert ours["security_protocol"] == expected_protocol
    assert {k: v for k, v in faust_side.items() if v is not None and k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert ("ssl_context" in ours) == (faust_side.get("ssl_context") is not None)


def test_a_client_certificate_is_loaded(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("LENDSTREAM_KAFKA_SSL_CAFILE", str(pki["ca"]))
    monkeypatch.setenv("LENDSTREAM_KAFKA_SSL_CERTFILE", str(pki["cert"]))
    monkeypatch.setenv("LENDSTREAM_KAFKA_SSL_KEYFILE", str(pki["key"]))
    context = kafka_ssl_context(load_settings())
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "LENDSTREAM_KAFKA_SECURITY_PROTOCOL"),
        (
            {"LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "LENDSTREAM_KAFKA_SASL_USERNAME",
        ),
        (
            {
                "LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "LENDSTREAM_KAFKA_SASL_USERNAME": "u",
            },
            "LENDSTREAM_KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "LENDSTREAM_KAFKA_SASL_MECHANISM": "GSSAPI",
                "LENDSTREAM_KAFKA_SASL_USERNAME": "u",
                "LENDSTREAM_KAFKA_SASL_PASSWORD": "p",
            },
            "LENDSTREAM_KAFKA_SASL_MECHANISM",
        ),
        ({"LENDSTREAM_KAFKA_SASL_USERNAME": "u"}, "LENDSTREAM_KAFKA_SASL_USERNAME"),
        ({"LENDSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"}, "LENDSTREAM_KAFKA_SASL_MECHANISM"),
        (
            {
                "LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                "LENDSTREAM_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem",
            },
            "LENDSTREAM_KAFKA_SSL_CAFILE",
        ),
        (
            {"LENDSTREAM_KAFKA_SSL_CAFILE": "{ca}"},  # TLS file without a TLS protocol
            "LENDSTREAM_KAFKA_SSL_CAFILE",
        ),
        (
            {"LENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "LENDSTREAM_KAFKA_SSL_KEYFILE": "{key}"},
            "LENDSTREAM_KAFKA_SSL_KEYFILE",
        ),
        ({"LENDSTREAM_PG_SSLMODE": "verify"}, "LENDSTREAM_PG_SSLMODE"),
        ({"LENDSTREAM_PG_SSLROOTCERT": "/nonexistent/root.crt"}, "LENDSTREAM_PG_SSLROOTCERT"),
        (
            {"LENDSTREAM_PG_SSLMODE": "prefer", "LENDSTREAM_PG_SSLROOTCERT": "{ca}"},
            "LENDSTREAM_PG_SSLROOTCERT",
        ),
        (
            {"LENDSTREAM_REPLICATION_FACTOR": "3", "LENDSTREAM_MIN_INSYNC_REPLICAS": "4"},
            "LENDSTREAM_MIN_INSYNC_REPLICAS",
        ),
        ({"LENDSTREAM_CREATE_TOPICS": "sometimes"}, "LENDSTREAM_CREATE_TOPICS"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], env: dict[str, str], variable: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(ca=pki["ca"], key=pki["key"]))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert_one_line_naming(caught.value, variable)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LENDSTREAM_KAFKA_SSL_CAFILE": "{garbage}"}, "LENDSTREAM_KAFKA_SSL_CAFILE"),
        (
            {"LENDSTREAM_KAFKA_SSL_CERTFILE": "{garbage}", "LENDSTREAM_KAFKA_SSL_KEYFILE": "{key}"},
            "LENDSTREAM_KAFKA_SSL_CERTFILE",
        ),
    ],
)
def test_a_file_that_is_not_a_certificate_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], env: dict[str, str], variable: str
) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(garbage=pki["garbage"], key=pki["key"]))
    settings = load_settings()
    with pytest.raises(SettingsError) as caught:
        kafka_client_options(settings)
    assert_one_line_naming(caught.value, variable)


def test_a_bad_tls_setting_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    """Through the real command: exit 2, one line on stderr, no stack trace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(
        LENDSTREAM_KAFKA="kafka://127.0.0.1:9",
        LENDSTREAM_PG_DSN="postgresql://u@127.0.0.1:9/x",
        LENDSTREAM_KAFKA_SECURITY_PROTOCOL="SSL",
        LENDSTREAM_KAFKA_SSL_CAFILE=str(tmp_path / "missing-ca.pem"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "lendstream", "worker"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("lendstream: LENDSTREAM_KAFKA_SSL_CAFILE"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(
    ("dsn", "env", "expected"),
    [
        (
            "postgresql://u:p%40ss@db:5432/lend",
            {"LENDSTREAM_PG_SSLMODE": "verify-full", "LENDSTREAM_PG_SSLROOTCERT": "{ca}"},
            "postgresql://u:p%40ss@db:5432/lend?sslmode=verify-full&sslrootcert={ca}",
        ),
        (
            "postgresql://u@db1:5432,db2:5432/lend?target_session_attrs=read-write&sslmode=disable",
            {"LENDSTREAM_PG_SSLMODE": "require"},
            "postgresql://u@db1:5432,db2:5432/lend?target_session_attrs=read-write&sslmode=require",
        ),
        (
            "postgresql://u@db/lend?sslmode=verify-ca",
            {"LENDSTREAM_PG_SSLROOTCERT": "{ca}"},
            "postgresql://u@db/lend?sslmode=verify-ca&sslrootcert={ca}",
        ),
    ],
)
def test_postgres_tls_settings_become_libpq_parameters(
    monkeypatch: pytest.MonkeyPatch,
    pki: dict[str, Path],
    dsn: str,
    env: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.setenv("LENDSTREAM_PG_DSN", dsn)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(ca=pki["ca"]))
    assert postgres_dsn(load_settings()) == expected.format(ca=pki["ca"])


def test_settings_stay_hashable_and_copyable() -> None:
    settings = Settings(_env_file=None, kafka_security_protocol="SSL")  # type: ignore[call-arg]
    assert hash(settings) == hash(settings.model_copy())


def test_the_worker_port_does_not_serve_table_contents(tmp_path: Path) -> None:
    """Workers listen on all interfaces in containers: Faust's /table view stays off."""
    app = offline_app(tmp_path, web_host="0.0.0.0")
    assert app.conf.web_tables_enabled is False
    assert app.conf.web_host == "0.0.0.0"
