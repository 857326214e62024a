"""Fixtures: a PostgreSQL per test session, a broker and a schema per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from lendstream.embedded import Broker, Postgres, start_broker, start_postgres
from lendstream.pg import drop_schema
from lendstream.projections.migrate import migrate
from lendstream.settings import Settings
from tests.harness import Pipeline


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = start_postgres(tmp_path_factory.mktemp("pg") / "data", remove_on_stop=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = start_broker(tmp_path / "broker")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_schema(postgres: Postgres) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    asyncio.run(drop_schema(postgres.dsn, schema))


@pytest.fixture
async def pool(postgres: Postgres, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on `pg_schema`, migrated."""
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn, pg_schema)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def pipeline(
    broker: Broker, postgres: Postgres, pg_schema: str, tmp_path: Path
) -> Iterator[Pipeline]:
    settings = Settings(
        kafka=broker.url,
        pg_dsn=postgres.dsn,
        pg_schema=pg_schema,
        data_dir=tmp_path / "data",
        partitions=8,
        kafka_session_timeout=6.0,
        kafka_heartbeat_interval=1.0,
        payout_saga=False,  # the traffic writes payout events itself; saga tests turn it on
        _env_file=None,  # type: ignore[call-arg]
    )
    pipe = Pipeline(settings, tmp_path)
    try:
        yield pipe
    finally:
        pipe.stop_all()
