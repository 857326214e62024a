"""The reader's password: the SCRAM-SHA-256 verifier sent to PostgreSQL (a real server checks
it in tests/integration/test_analysts.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from lendstream.analysts import scram_verifier


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
