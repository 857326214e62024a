"""`lendstream projections rebuild` (issue 7, "done when" 5): a rebuild of loan_summary during
live traffic ends with tables equal to the live ones, and an analyst reading all the while never
gets an error or an empty table. Real broker, PostgreSQL, worker and CLI process. And its bulk
writer against the live writer's statements, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from lendstream.devstack import worker_env
from lendstream.embedded import Postgres
from lendstream.projections.loans import BatchRows, LoanRows, make_apply
from lendstream.projections.migrate import migrate
from lendstream.projections.rebuild import (
    ProcessFolds,
    RebuildStalled,
    ShadowWriter,
    TruncatedInput,
    rebuild,
)
from lendstream.projections.replay import REBUILT_TABLES, ShadowRows
from lendstream.settings import Settings
from tests.harness import Pipeline
from tests.traffic import build
from tests.unit.domain.factories import lifecycle_versions
from tests.verify import assert_read_models_match

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

READS = (
    "SELECT count(*) FROM loan_summary",
    "SELECT coalesce(sum(loans), 0) FROM portfolio_by_status",
    "SELECT count(*) FROM loan_history",
    "SELECT count(*) FROM customer_exposure",
)
#: Every column except the time a row was last written (not part of the model's content).
SNAPSHOTS = {
    "loan_summary": "SELECT * FROM loan_summary ORDER BY loan_id",
    "loan_history": "SELECT * FROM loan_history ORDER BY loan_id, version",
    "customer_exposure": "SELECT customer_id, currency, active_loans, outstanding_cents "
    "FROM customer_exposure ORDER BY 1, 2",
}


async def analyst(dsn: str, schema: str, stop: asyncio.Event) -> dict[str, Any]:
    """Run the analyst's queries in a loop until `stop`; count reads, failures and empties."""
    seen: dict[str, Any] = {"reads": 0, "errors": [], "empty": []}
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'SET search_path TO "{schema}"')
    try:
        while not stop.is_set():
            for sql in READS:
                try:
                    count = await conn.fetchval(sql)
                except asyncpg.PostgresError as exc:
                    seen["errors"].append(f"{sql}: {type(exc).__name__}: {exc}")
                    continue
                seen["reads"] += 1
                if count == 0:
                    seen["empty"].append(sql)
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    return seen


async def snapshot(pipeline: Pipeline) -> dict[str, list[dict[str, Any]]]:
    return {table: await pipeline.fetch(sql) for table, sql in SNAPSHOTS.items()}


#: The definition of a schema's rebuilt tables: columns, constraints, indexes (names included).
DEFINITION = (
    "SELECT c.relname, 'column' AS kind, a.attname AS name, "
    "format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END "
    "|| coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS definition "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE c.relnamespace = $1::regnamespace AND c.relname = ANY($2::text[]) "
    "AND a.attnum > 0 AND NOT a.attisdropped "
    "UNION ALL SELECT c.relname, 'constraint', k.conname, pg_get_constraintdef(k.oid) "
    "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
    "WHERE c.relnamespace = $1::regnamespace AND c.relname = ANY($2::text[]) "
    "UNION ALL SELECT c.relname, 'index', i.relname, "
    "replace(pg_get_indexdef(i.oid), $1 || '.', '') "
    "FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid "
    "WHERE c.relnamespace = $1::regnamespace AND c.relname = ANY($2::text[]) "
    "ORDER BY 1, 2, 3"
)


async def definition(conn: asyncpg.Connection, schema: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(DEFINITION, schema, list(REBUILT_TABLES))]


async def table_rows(conn: asyncpg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    await conn.execute(f'SET search_path TO "{schema}"')
    return {table: [tuple(r) for r in await conn.fetch(sql)] for table, sql in SNAPSHOTS.items()}


async def test_the_shadow_writer_leaves_the_live_writers_tables_at_every_round_end(
    postgres: Postgres, pg_schema: str
) -> None:
    """The same versions through the live writer's statements (`make_apply`, batches of 3) and
    through `ShadowRows` + `ShadowWriter` (rounds of batches of 2, COPY and the later rounds'
    closes and replacements) give equal tables after every round; after the first round the
    shadow tables have the live ones' definition, index and constraint names included."""
    versions = lifecycle_versions()
    shadow = f"{pg_schema}__rebuild"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await migrate(conn, pg_schema)
        live_apply = make_apply(pg_schema)
        writer, rows = ShadowWriter(pg_schema, shadow), ShadowRows()
        await writer.create(conn)
        for start, end in [(0, 7), (7, 13), (13, 16), (16, len(versions))]:
            for i in range(start, end, 3):
                batch = LoanRows(versions=versions[i : min(i + 3, end)], count_payouts=False)
                async with conn.transaction():
                    await live_apply(conn, [BatchRows(batch, [])])
            for i in range(start, end, 2):
                await writer.write_batch(conn, *rows.add(versions[i : min(i + 2, end)]))
            await writer.write_round(conn, rows.end_round())
            if start == 0:
                await writer.build_indexes(conn)
                assert await definition(conn, shadow) == await definition(conn, pg_schema)
            assert await table_rows(conn, shadow) == await table_rows(conn, pg_schema)
        exposure = await table_rows(conn, shadow)
        assert exposure["customer_exposure"] == [
            ("C1", "EUR", 1, 90_000), ("C1", "USD", 1, 110_000), ("C2", "USD", 0, 0),
        ]  # fmt: skip
        stamped = await conn.fetchval(
            f'SELECT count(*) FROM "{shadow}".customer_exposure WHERE updated_at IS NOT NULL'
        )
        assert stamped == 3
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
        await conn.close()


async def schema_definition(pipeline: Pipeline) -> list[tuple[Any, ...]]:
    settings = pipeline.settings
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        return await definition(conn, settings.pg_schema)
    finally:
        await conn.close()


async def table_oid(pipeline: Pipeline) -> int:
    rows = await pipeline.fetch("SELECT 'loan_summary'::regclass::oid AS oid")
    return int(rows[0]["oid"])


async def run_cli(
    pipeline: Pipeline, *args: str, settings: Settings | None = None
) -> tuple[int, str, str]:
    """`lendstream *args` with the pipeline's settings (or `settings`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(worker_env(settings or pipeline.settings))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lendstream", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def produce_paced(pipeline: Pipeline, items: list[Any], chunks: int) -> None:
    size = len(items) // chunks + 1
    for start in range(0, len(items), size):
        await pipeline.produce(items[start : start + size])
        await asyncio.sleep(0.3)


async def test_rebuild_during_live_traffic_swaps_in_equal_tables(pipeline: Pipeline) -> None:
    traffic = build(seed=11, loans=600, min_events=16_000)
    half = len(traffic.stream) // 2
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce(traffic.stream[:half])
    await pipeline.wait_caught_up(timeout=240)
    before = await table_oid(pipeline)
    defined = await schema_definition(pipeline)

    stop = asyncio.Event()
    reader = asyncio.create_task(
        analyst(pipeline.settings.pg_dsn, pipeline.settings.pg_schema, stop)
    )
    producing = asyncio.create_task(produce_paced(pipeline, traffic.stream[half:], chunks=20))
    code, out, err = await run_cli(pipeline, "projections", "rebuild", "loan_summary")
    await producing
    await pipeline.wait_caught_up(timeout=240)
    stop.set()
    seen = await reader

    assert code == 0, err
    assert "rebuilt loan_summary, loan_history, customer_exposure" in out
    assert "events" in err and "ev/s" in err and "ETA" in err  # the progress line
    assert await table_oid(pipeline) != before, "the tables were not swapped"
    assert await schema_definition(pipeline) == defined  # the migrations' names included
    assert seen["reads"] > 0
    assert seen["errors"] == [], seen["errors"][:3]
    assert seen["empty"] == [], seen["empty"][:3]
    await assert_read_models_match(pipeline, traffic)
    pipeline.assert_no_crash()

    # At rest, a rebuild reproduces the live tables row for row, folding in this process or
    # in two (`LENDSTREAM_REBUILD_WORKERS`, default 2); grants survive.
    live = await snapshot(pipeline)
    for workers in (1, 2):
        settings = pipeline.settings.model_copy(update={"rebuild_workers": workers})
        report = await rebuild(
            settings, settings.pg_dsn, settings.bootstrap_servers, {}, lambda _: None
        )
        assert report.events >= len(traffic.stream)
        assert await snapshot(pipeline) == live, f"{workers} fold process(es)"
    granted = await pipeline.fetch(
        "SELECT has_table_privilege('lendstream_reader', 'loan_summary', 'SELECT') AS ok"
    )
    assert granted[0]["ok"]


async def test_a_schema_without_read_models_is_one_line_and_exit_2(pipeline: Pipeline) -> None:
    await pipeline.create_topics()
    code, _, err = await run_cli(pipeline, "projections", "rebuild")
    assert code == 2, err
    (line,) = [x for x in err.strip().splitlines() if not x.startswith("rebuild [")]
    assert line.startswith("lendstream: schema ") and "LENDSTREAM_PG_SCHEMA" in line, err
    rows = await pipeline.fetch(
        "SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1",
        f"{pipeline.settings.pg_schema}__rebuild",
    )
    assert rows[0]["n"] == 0  # nothing left behind


async def test_a_fold_process_that_dies_fails_the_rebuild_and_leaves_the_live_tables(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of a fold process: the rebuild fails with a clear error naming it, the live
    tables are as they were, and no fold process is left behind."""
    traffic = build(seed=5, loans=100, min_events=2_000)
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce(traffic.stream)
    await pipeline.wait_caught_up(timeout=240)
    live = await snapshot(pipeline)
    start = ProcessFolds.start

    async def start_then_kill_one(self: ProcessFolds, tps: Any) -> None:
        await start(self, tps)
        self.children[0][0].kill()

    monkeypatch.setattr(ProcessFolds, "start", start_then_kill_one)
    settings = pipeline.settings.model_copy(update={"rebuild_workers": 2})
    with pytest.raises(RuntimeError, match=r"rebuild-fold-0 (exited|failed)"):
        await rebuild(settings, settings.pg_dsn, settings.bootstrap_servers, {}, lambda _: None)

    assert await snapshot(pipeline) == live
    left = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    assert not [c for c in left if "spawn_main" in c], left  # a fold process
    pipeline.assert_no_crash()


async def caught_up_and_stopped(pipeline: Pipeline, seed: int) -> dict[str, list[dict[str, Any]]]:
    """A small traffic projected by a worker that is then stopped; the live tables' snapshot."""
    traffic = build(seed=seed, loans=100, min_events=2_000)
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce(traffic.stream)
    await pipeline.wait_caught_up(timeout=240)
    pipeline.stop_all()
    return await snapshot(pipeline)


async def test_positions_past_a_partitions_end_fail_the_rebuild_as_stalled(
    pipeline: Pipeline,
) -> None:
    """The live worker's stored position lies past the end of a partition (as after a topic was
    deleted and recreated): the rebuild, folding in this process or in two, fails after
    `LENDSTREAM_REBUILD_STALL_TIMEOUT` naming that partition instead of waiting for ever; the
    CLI says so in one line (exit 2); the live tables are as they were."""
    live = await caught_up_and_stopped(pipeline, seed=6)
    moved = await pipeline.fetch(
        'UPDATE projection_positions SET "offset" = "offset" + 1000 WHERE projection = $1 '
        "AND topic = 'payment-events' AND partition = 0 RETURNING \"offset\"",
        "loans",
    )
    needs = moved[0]["offset"]
    settings = pipeline.settings.model_copy(
        update={"rebuild_workers": 1, "rebuild_stall_timeout": 2.0}
    )
    stalled = rf"payment-events\[0\] read to offset \d+, needs {needs}"
    with pytest.raises(RebuildStalled, match=stalled):
        await rebuild(settings, settings.pg_dsn, settings.bootstrap_servers, {}, lambda _: None)

    two = settings.model_copy(update={"rebuild_workers": 2})
    code, _, err = await run_cli(pipeline, "projections", "rebuild", settings=two)
    assert code == 2, err
    (line,) = [x for x in err.strip().splitlines() if not x.startswith("rebuild [")]
    assert line.startswith("lendstream: rebuild failed, the live tables are unchanged: "), err
    assert "rebuild-fold-0" in line and re.search(stalled, line), line
    assert await snapshot(pipeline) == live


async def test_a_rebuild_refuses_input_that_retention_truncated(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input partition that no longer starts at offset 0 (topic retention deleted its
    start) would give partial tables: the rebuild refuses, naming it; with `from_retained` it
    folds what is retained, not waiting for what is gone; a full rebuild (two fold processes,
    the real broker) then restores the tables. Tansu has no DeleteRecords (it closes the
    connection), so the broker's answers to "where does the partition start" and "go to its
    start" are the one thing faked here, in this process only."""
    live = await caught_up_and_stopped(pipeline, seed=7)
    truncated, first = TopicPartition("loan-events", 1), 40
    beginning_offsets = AIOKafkaConsumer.beginning_offsets
    seek_to_beginning = AIOKafkaConsumer.seek_to_beginning

    async def retention_ran(
        self: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        firsts = await beginning_offsets(self, partitions)
        return {tp: first if tp == truncated else n for tp, n in firsts.items()}

    async def to_retained(self: AIOKafkaConsumer, *partitions: TopicPartition) -> None:
        await seek_to_beginning(self, *partitions)
        if truncated in partitions:
            self.seek(truncated, first)

    monkeypatch.setattr(AIOKafkaConsumer, "beginning_offsets", retention_ran)
    monkeypatch.setattr(AIOKafkaConsumer, "seek_to_beginning", to_retained)
    settings = pipeline.settings.model_copy(update={"rebuild_workers": 1})
    refused = r"loan-events\[1\] starts at offset 40\. "
    with pytest.raises(TruncatedInput, match=refused):
        await rebuild(settings, settings.pg_dsn, settings.bootstrap_servers, {}, lambda _: None)
    assert await snapshot(pipeline) == live

    report = await rebuild(settings, settings.pg_dsn, settings.bootstrap_servers, {},
                           lambda _: None, from_retained=True)  # fmt: skip
    produced = sum(end + 1 for end in pipeline.ends.values())
    assert report.events == produced - first  # all but the 40 "deleted" ones

    monkeypatch.undo()  # the fold processes are not patched: the real broker's answers
    code, _, err = await run_cli(pipeline, "projections", "rebuild",
                                 settings=settings.model_copy(update={"rebuild_workers": 2}))  # fmt: skip
    assert code == 0, err
    assert await snapshot(pipeline) == live
