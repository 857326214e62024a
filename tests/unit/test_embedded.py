"""The embedded PostgreSQL's settings (`lendstream.embedded`); the server itself is tested in
tests/integration/test_embedded.py."""

from __future__ import annotations

from lendstream.embedded import server_settings


def test_shared_buffers_is_an_eighth_of_memory_within_128_mb_and_1_gb() -> None:
    value = server_settings()["shared_buffers"]
    assert value.endswith("MB") and 128 <= int(value[:-2]) <= 1024
