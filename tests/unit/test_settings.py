"""Settings (contract §1, §2 durations): defaults, parsing, and one-line errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lendstream.devstack import worker_env
from lendstream.settings import SettingsError, load_settings, parse_duration


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `LENDSTREAM_*` variable and no `.env` file leak in from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("LENDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.web_port == 6066
    assert settings.partitions == 8
    assert settings.pg_schema == "lendstream"
    assert settings.data_dir == Path("./.lendstream")
    assert settings.park_deadline == 3600.0  # 1 h
    assert settings.saga_deadline == 900.0  # 15 min
    assert settings.kafka is None
    assert settings.pg_dsn is None
    assert settings.gateway_url is None
    assert settings.bootstrap_servers == []


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA", "kafka://k1:9092, kafka://k2:9093")
    monkeypatch.setenv("LENDSTREAM_PG_DSN", "postgresql://u:p@db:5432/lend")
    monkeypatch.setenv("LENDSTREAM_PG_SCHEMA", "lend_test")
    monkeypatch.setenv("LENDSTREAM_DATA_DIR", "/var/lib/lendstream")
    monkeypatch.setenv("LENDSTREAM_WEB_PORT", "7070")
    monkeypatch.setenv("LENDSTREAM_PARTITIONS", "32")
    monkeypatch.setenv("LENDSTREAM_GATEWAY_URL", "https://gateway.example/")
    settings = load_settings()
    assert settings.kafka == "kafka://k1:9092,kafka://k2:9093"
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.pg_dsn == "postgresql://u:p@db:5432/lend"
    assert settings.pg_schema == "lend_test"
    assert settings.data_dir == Path("/var/lib/lendstream")
    assert (settings.web_port, settings.partitions) == (7070, 32)
    assert settings.gateway_url == "https://gateway.example"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_WEB_PORT", "7070")
    assert load_settings(web_port=8080).web_port == 8080


def test_a_dot_env_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("LENDSTREAM_WEB_PORT=7000\nLENDSTREAM_PARTITIONS=3\n")
    monkeypatch.setenv("LENDSTREAM_PARTITIONS", "5")
    settings = load_settings()
    assert (settings.web_port, settings.partitions) == (7000, 5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("2h", 7200.0),
        ("1.5m", 90.0),
        (" 30s ", 30.0),
        ("0.5", 0.5),
    ],
)
@pytest.mark.parametrize("variable", ["LENDSTREAM_PARK_DEADLINE", "LENDSTREAM_SAGA_DEADLINE"])
def test_durations_parse(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, seconds: float
) -> None:
    monkeypatch.setenv(variable, text)
    settings = load_settings()
    assert getattr(settings, variable.removeprefix("LENDSTREAM_").lower()) == seconds


def test_duration_numbers_are_seconds() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration(1.5) == 1.5
    assert parse_duration("15m") == 900.0


def test_a_list_of_durations_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_RETRY_BACKOFF", "1s, 10, 1m,1h")
    assert load_settings().retry_backoff == (1.0, 10.0, 60.0, 3600.0)


@pytest.mark.parametrize(
    "text", ["soon", "15x", "-5", "0", "0s", "1h30m", "m", "15 minutes", "", "1,5", "True"]
)
def test_a_malformed_duration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("LENDSTREAM_PARK_DEADLINE", text)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert_one_line_naming(caught.value, "LENDSTREAM_PARK_DEADLINE")


def test_parse_duration_rejects_booleans_and_garbage() -> None:
    for value in (True, "abc", -1, 0, None):
        with pytest.raises(ValueError):
            parse_duration(value)


def assert_one_line_naming(error: SettingsError, variable: str) -> None:
    message = str(error)
    assert message.startswith(variable), message
    assert "\n" not in message
    assert len(message) > len(variable) + 5  # says what is wrong, too


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LENDSTREAM_WEB_PORT", "abc"),
        ("LENDSTREAM_WEB_PORT", "70000"),
        ("LENDSTREAM_WEB_PORT", "-1"),
        ("LENDSTREAM_WEB_PORT", "60.5"),
        ("LENDSTREAM_PARTITIONS", "0"),
        ("LENDSTREAM_PARTITIONS", "eight"),
        ("LENDSTREAM_PARTITIONS", "8\n9"),
        ("LENDSTREAM_PG_SCHEMA", "Bad-Schema"),
        ("LENDSTREAM_PG_SCHEMA", "1schema"),
        ("LENDSTREAM_PG_SCHEMA", 'x"; DROP SCHEMA public; --'),
        ("LENDSTREAM_KAFKA", "localhost:9092"),
        ("LENDSTREAM_KAFKA", "kafka://localhost"),
        ("LENDSTREAM_KAFKA", "kafka://a:1,b:2"),
        ("LENDSTREAM_KAFKA", "kafka://host:9092\nkafka://x:1"),
        ("LENDSTREAM_PG_DSN", "mysql://db/x"),
        ("LENDSTREAM_GATEWAY_URL", "ftp://gateway"),
        ("LENDSTREAM_SAGA_DEADLINE", "fifteen minutes"),
        ("LENDSTREAM_RETRY_BACKOFF", "1s,,x"),
    ],
)
def test_a_malformed_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert_one_line_naming(caught.value, variable)


def test_variable_names_are_not_case_sensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("lendstream_web_port", "7071")
    assert load_settings().web_port == 7071


@pytest.mark.parametrize(
    ("name", "variable"), [("kafka", "LENDSTREAM_KAFKA"), ("pg_dsn", "LENDSTREAM_PG_DSN")]
)
def test_require_fails_when_unset(name: str, variable: str) -> None:
    settings = load_settings()
    with pytest.raises(SettingsError) as caught:
        settings.require(name)
    assert_one_line_naming(caught.value, variable)
    assert "required" in str(caught.value)


def test_require_passes_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA", "kafka://localhost:9092")
    monkeypatch.setenv("LENDSTREAM_PG_DSN", "postgres://localhost/x")
    settings = load_settings()
    assert settings.require("kafka", "pg_dsn") is settings


def test_require_names_the_first_missing_of_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_KAFKA", "kafka://localhost:9092")
    with pytest.raises(SettingsError, match=r"^LENDSTREAM_PG_DSN "):
        load_settings().require("kafka", "pg_dsn")


def test_secrets_are_unset_by_default_and_an_empty_value_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (load_settings().ingest_token, load_settings().reader_password) == (None, None)
    monkeypatch.setenv("LENDSTREAM_INGEST_TOKEN", "")
    monkeypatch.setenv("LENDSTREAM_READER_PASSWORD", "")
    assert (load_settings().ingest_token, load_settings().reader_password) == (None, None)


def test_secrets_reach_the_worker_but_not_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENDSTREAM_INGEST_TOKEN", "tok-123")
    monkeypatch.setenv("LENDSTREAM_READER_PASSWORD", "pw-456")
    settings = load_settings()
    assert "tok-123" not in repr(settings) and "pw-456" not in repr(settings)
    env = worker_env(settings)
    assert env["LENDSTREAM_INGEST_TOKEN"] == "tok-123"
    assert env["LENDSTREAM_READER_PASSWORD"] == "pw-456"


def test_app_id_names_the_consumer_group_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().app_id == "lendstream"  # changelog: lendstream-loans-changelog
    monkeypatch.setenv("LENDSTREAM_APP_ID", "lendstream-rebuild")
    assert load_settings().app_id == "lendstream-rebuild"
    monkeypatch.setenv("LENDSTREAM_APP_ID", "has space")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert_one_line_naming(caught.value, "LENDSTREAM_APP_ID")
