"""Analyst access (issue 7, contract §6): as `lendstream_reader`, every query of
docs/analysts.md runs against read models the real pipeline filled, the views agree with an
independent oracle, and any write, DDL or access outside the schema fails."""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg
import pytest

from lendstream.analysts import READER_ROLE, grant_login
from lendstream.embedded import Postgres, start_postgres
from lendstream.projections.migrate import migrate
from lendstream.simulation import interleave, population
from tests import oracle
from tests.harness import Pipeline
from tests.traffic import invalid_messages

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
PASSWORD = "analyst pässword 1"
SEED = 1  # docs/analysts.md names loan L1-0000001


def doc_queries() -> list[str]:
    """Every ```sql block of docs/analysts.md (each is one statement)."""
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 10
    return [block.strip().rstrip(";") for block in blocks]


def socket_dir(dsn: str) -> str:
    return parse_qs(urlparse(dsn).query)["host"][0]


async def connect_reader(dsn: str, schema: str, password: str = PASSWORD) -> asyncpg.Connection:
    """A connection as lendstream_reader, waiting (bounded) for the worker to open its login."""
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = await asyncpg.connect(
                host=socket_dir(dsn), user=READER_ROLE, password=password, database="postgres",
                server_settings={"search_path": schema},
            )  # fmt: skip
            return conn
        except asyncpg.InvalidAuthorizationSpecificationError:  # no LOGIN yet
            assert time.monotonic() < deadline, "the worker never gave the reader a login"
            await asyncio.sleep(0.25)


@pytest.fixture
async def filled(pipeline: Pipeline) -> AsyncIterator[tuple[Pipeline, dict[str, Any], list[Any]]]:
    """A pipeline whose worker applied a population of loans and opened the reader's login."""
    lifecycles = population(seed=SEED, loans=80)
    await pipeline.create_topics()
    pipeline.start_worker(reader_password=PASSWORD)
    await pipeline.produce([*interleave(SEED, lifecycles), *invalid_messages(4, SEED)])
    await pipeline.wait_caught_up(timeout=120)
    owner = await asyncpg.connect(pipeline.settings.pg_dsn)
    try:  # no projection writes partner_credit yet: put in what the saga's would
        await owner.executemany(
            f'INSERT INTO "{pipeline.settings.pg_schema}".partner_credit VALUES '
            "($1, 'EUR', $2, $3, now())",
            [("P00", 1_000_000, 250_000), ("P01", 0, 0), ("P02", 500_000, 500_000)],
        )
    finally:
        await owner.close()
    yield pipeline, oracle.fold_all(lifecycles), lifecycles


async def test_docs_queries_and_views_as_the_reader(
    filled: tuple[Pipeline, dict[str, Any], list[Any]],
) -> None:
    pipeline, loans, lifecycles = filled
    reader = await connect_reader(pipeline.settings.pg_dsn or "", pipeline.settings.pg_schema)
    try:
        assert await reader.fetchval("SELECT current_user") == READER_ROLE
        for sql in doc_queries():
            rows = await reader.fetch(sql)
            assert rows, f"no rows for a documented query:\n{sql}"

        portfolio = {
            (r["status"], r["currency"]): (r["loans"], r["outstanding_cents"], r["repaid_cents"])
            for r in await reader.fetch("SELECT * FROM portfolio_by_status")
        }
        expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in loans.values():
            cell = expected[(row["status"], row["currency"])]
            cell[0] += 1
            cell[1] += row["outstanding_cents"]
            cell[2] += row["repaid_cents"]
        assert portfolio == {k: tuple(v) for k, v in expected.items()}

        months: dict[tuple[Any, str], list[int]] = defaultdict(lambda: [0, 0])
        for events in lifecycles:
            for item in events:
                if item.value["type"] == "RepaymentReceived":
                    at = datetime.fromisoformat(item.value["occurred_at"].replace("Z", "+00:00"))
                    cell = months[(at.date().replace(day=1), item.value["data"]["currency"])]
                    cell[0] += 1
                    cell[1] += item.value["data"]["amount_cents"]
        by_month = {
            (r["month"], r["currency"]): [r["repayments"], r["amount_cents"]]
            for r in await reader.fetch("SELECT * FROM repayments_by_month")
        }
        assert by_month == months and len(months) > 3

        utilisation = {
            r["partner_id"]: (r["available_cents"], r["utilisation"])
            for r in await reader.fetch("SELECT * FROM partner_utilisation")
        }
        assert {k: (a, None if u is None else float(u)) for k, (a, u) in utilisation.items()} == {
            "P00": (750_000, 0.25), "P01": (0, None), "P02": (0, 1.0)
        }  # fmt: skip
    finally:
        await reader.close()


async def test_the_reader_can_read_the_schema_and_do_nothing_else(
    filled: tuple[Pipeline, dict[str, Any], list[Any]],
) -> None:
    pipeline, _, _ = filled
    schema = pipeline.settings.pg_schema
    owner = await asyncpg.connect(pipeline.settings.pg_dsn)
    await owner.execute("CREATE SCHEMA IF NOT EXISTS not_lendstream")
    await owner.execute("CREATE TABLE IF NOT EXISTS not_lendstream.secrets (x int)")
    await owner.execute("CREATE TABLE IF NOT EXISTS public.secrets (x int)")
    # a table added after the migrations (by the migrating role) is readable at once
    await owner.execute(f'CREATE TABLE "{schema}".added_later AS SELECT 1 AS x')
    await owner.close()

    reader = await connect_reader(pipeline.settings.pg_dsn or "", schema)
    try:
        assert await reader.fetchval("SELECT count(*) FROM loan_summary") == 80
        assert await reader.fetchval("SELECT x FROM added_later") == 1
        for table in ("loan_history", "event_log", "dead_letters", "ingest_accepted"):
            await reader.fetch(f"SELECT * FROM {table} LIMIT 1")

        writes = [
            "INSERT INTO loan_summary (loan_id) VALUES ('x')",
            "UPDATE loan_summary SET status = 'settled'",
            "DELETE FROM event_log",
            "TRUNCATE dead_letters",
            "INSERT INTO ingest_accepted (event_id, topic) VALUES ('x', 'loan-events')",
        ]
        ddl = [
            "CREATE TABLE mine (x int)",
            "CREATE TABLE public.mine (x int)",
            "CREATE VIEW mine AS SELECT 1",
            "CREATE SCHEMA mine",
            "ALTER TABLE loan_summary ADD COLUMN x int",
            "DROP VIEW portfolio_by_status",
            "CREATE INDEX ON loan_summary (currency)",
            "CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ]
        outside = [
            "SELECT * FROM not_lendstream.secrets",
            "SELECT * FROM public.secrets",
            "SELECT pg_read_file('PG_VERSION')",
            "SET ROLE postgres",
        ]
        # read-only by default ...
        for sql in writes + ddl:
            with pytest.raises(asyncpg.PostgresError):
                await reader.execute(sql)
        # ... and without the privileges when the reader turns read-only off
        await reader.execute("SET default_transaction_read_only = off")
        for sql in writes + ddl + outside:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(sql)
        assert await reader.fetchval("SELECT count(*) FROM loan_summary") == 80
    finally:
        await reader.close()


async def test_the_migration_is_idempotent_across_schemas_and_creates_a_nologin_role(
    postgres: Postgres, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        others = [await asyncpg.connect(postgres.dsn) for _ in range(2)]
        await asyncio.gather(  # two schemas migrating at once share the one role
            *(migrate(other, f"{pg_schema}_{n}") for n, other in enumerate(others, 1))
        )
        for other in others:
            await other.close()
        granted = await conn.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee = $1 AND table_schema = ANY($2) AND privilege_type = 'SELECT' "
            "AND table_name = 'loan_summary'",
            READER_ROLE, [f"{pg_schema}_1", f"{pg_schema}_2"],
        )  # fmt: skip
        assert granted == 2
        others = await conn.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee = $1 AND privilege_type <> 'SELECT'",
            READER_ROLE,
        )
        assert others == 0
    finally:
        for n in (1, 2):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}_{n}" CASCADE')
        await conn.close()


async def test_the_reader_password_is_a_working_scram_login(tmp_path: Path) -> None:
    """On a server that checks passwords (the test server trusts local connections)."""
    server = start_postgres(tmp_path / "pg", remove_on_stop=True)
    try:
        owner = await asyncpg.connect(server.dsn)
        await migrate(owner, "lendstream")
        assert not await owner.fetchval(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", READER_ROLE
        )
        await grant_login(owner, PASSWORD)
        (server.data_dir / "pg_hba.conf").write_text(
            "local all postgres trust\nlocal all all scram-sha-256\n"
        )
        await owner.execute("SELECT pg_reload_conf()")
        await owner.close()
        reader = await connect_reader(server.dsn, "lendstream")
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        await reader.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host=socket_dir(server.dsn), user=READER_ROLE, password="wrong", database="postgres"
            )
    finally:
        server.stop()
