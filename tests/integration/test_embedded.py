"""The embedded PostgreSQL of `dev` and the tests: started with its own settings (once per data
dir, a restart), started again on the same data dir, and stopped by its pid every time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import psutil
import pytest

from lendstream.embedded import SETTINGS_FILE, server_settings, start_postgres

pytestmark = pytest.mark.integration


async def shared_buffers(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT setting::bigint * 8 / 1024 || 'MB' FROM "
                                       "pg_settings WHERE name = 'shared_buffers'"))  # fmt: skip
    finally:
        await conn.close()


def test_the_embedded_server_runs_with_its_settings_and_stops_by_its_pid(tmp_path: Path) -> None:
    wanted = server_settings()["shared_buffers"]
    pids = []
    for _ in range(2):  # a fresh data dir (restarted for the settings), then the same again
        pg = start_postgres(tmp_path / "pg")
        try:
            pids.append(pg.pid)
            assert asyncio.run(shared_buffers(pg.dsn)) == wanted
        finally:
            pg.stop()
        assert not psutil.pid_exists(pg.pid)
        assert not (tmp_path / "pg" / "postmaster.pid").exists()  # a clean (fast) shutdown
    conf = (tmp_path / "pg" / "postgresql.conf").read_text()
    assert conf.count(SETTINGS_FILE) == 1
    assert len(set(pids)) == 2
