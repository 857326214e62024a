"""The reader's password: the secrets' settings, and the SCRAM-SHA-256 verifier sent to
PostgreSQL (a real server checks it in tests/integration/test_analysts.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from lendstream.analysts import scram_verifier
from lendstream.devstack import worker_env
from lendstream.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LENDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


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


def test_scram_verifier_is_rfc_5802_with_the_given_salt() -> None:
    salt = b"0123456789abcdef"
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    scheme, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt_b64 = params.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert (scheme, int(iterations), base64.b64decode(salt_b64)) == ("SCRAM-SHA-256", 4096, salt)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.digest(salted, b"Server Key", "sha256")


def test_each_verifier_has_a_fresh_salt() -> None:
    assert scram_verifier("same") != scram_verifier("same")
    assert set(scram_verifier("x")) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=$:-"
    )  # safe inside a SQL literal
