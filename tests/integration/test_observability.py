"""A worker's /metrics while it absorbs a burst: lag in messages and seconds against the truth
in PostgreSQL, freshness, and every metric the rules and dashboard use.

Pausing the worker: the test holds a transaction that row-locks every `projection_positions`
row of the loan projection (what a stuck PostgreSQL lock looks like). The worker keeps fetching
and serving /metrics, but no batch can commit, so PostgreSQL's positions — the truth for
"reflected in the read models" — stand still: lag must then equal the unreflected count
exactly, and lag seconds must grow. (SIGSTOP would freeze /metrics too.) The same numbers are
also read through `lendstream lag`'s code path (`collect_lag`) meanwhile.

While it catches up, each scrape is checked against PostgreSQL positions read just before the
probe started and just after the scrape: the lag must lie between the two true counts (an
exact bracket, which is stricter than "within one batch" whenever at most one batch commits
during a scrape, and needs no timing assumption).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson
import pytest

from lendstream.app import APP_ID
from lendstream.embedded import Broker, Postgres, free_port
from lendstream.lag import collect_lag
from lendstream.topics import LOAN_KEYED, LOAN_PROCESSOR_INPUTS
from tests.deploy.metric_names import (
    PROMETHEUS_SERIES,
    dashboard_queries,
    exported_names,
    load_rules,
    promql_metric_names,
    recorded_names,
)
from tests.harness import Pipeline, WorkerProcess
from tests.scrape import Scrape, fresh_scrape, http_get
from tests.traffic import build

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

BATCH_MAX = 300
LOAN_TOPICS = [spec.name for spec in LOAN_KEYED]
CHANGELOG = f"{APP_ID}-loans-changelog"
LAG = "lendstream_consumer_lag_messages"
LAG_SECONDS = "lendstream_consumer_lag_seconds"


def true_lag(
    pipeline: Pipeline, positions: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Events produced minus events reflected in PostgreSQL, per partition."""
    return {tp: end - positions.get(tp, -1) for tp, end in pipeline.ends.items()}


def metric_by_tp(scrape: Scrape, name: str) -> dict[tuple[str, int], float]:
    return {(t, p): v for t in LOAN_TOPICS for p, v in scrape.by_partition(name, t).items()}


async def freeze(pipeline: Pipeline) -> asyncpg.Connection:
    """Lock every position row of the loan projection (created first where missing)."""
    schema = pipeline.settings.pg_schema
    conn = await asyncpg.connect(pipeline.settings.pg_dsn)
    await conn.execute("BEGIN")
    inputs = [spec.name for spec in LOAN_PROCESSOR_INPUTS]  # control commands too
    rows = [(t, p) for t in inputs for p in range(pipeline.settings.partitions)]
    await conn.executemany(
        f'INSERT INTO "{schema}".projection_positions (projection, topic, partition, "offset") '
        "VALUES ('loans', $1, $2, -1) ON CONFLICT DO NOTHING",
        rows,
    )
    await conn.execute("COMMIT")
    await conn.execute("BEGIN")
    await conn.execute(
        f'SELECT 1 FROM "{schema}".projection_positions WHERE projection = $1 FOR UPDATE', "loans"
    )
    return conn


async def test_lag_follows_a_burst_and_matches_postgres(pipeline: Pipeline) -> None:
    port = free_port()
    await pipeline.create_topics()
    worker = pipeline.start_worker(web_port=port, batch_max=BATCH_MAX, probe_interval=0.5)
    await pipeline.produce(build(seed=11, loans=300, min_events=3000, invalid=5).stream)
    await pipeline.wait_caught_up(timeout=180)

    lock = await freeze(pipeline)
    try:
        await pipeline.produce(build(seed=12, loans=800, min_events=15_000).stream)
        produced_at = time.time()
        frozen = await pipeline.positions()
        truth = true_lag(pipeline, frozen)
        assert sum(truth.values()) > 20 * BATCH_MAX  # more than it can absorb at once

        first = await fresh_scrape(port, probe_started_after=produced_at)
        assert metric_by_tp(first, LAG) == truth  # exact: nothing moves while frozen
        for topic, partition in truth:
            labels = {"topic": topic, "partition": str(partition)}
            position = first.value("lendstream_consumer_position", group=APP_ID, **labels)
            end = first.value("lendstream_partition_end_offset", **labels)
            assert position == frozen.get((topic, partition), -1) + 1
            assert end == pipeline.ends[(topic, partition)] + 1

        settings = pipeline.settings
        via_cli = await collect_lag(settings, [APP_ID], {APP_ID: frozen})
        assert {(r.topic, r.partition): r.lag for r in via_cli if r.topic in LOAN_TOPICS} == truth

        ages = metric_by_tp(first, LAG_SECONDS)
        waiting = [tp for tp, lag in truth.items() if lag > 0]
        assert all(ages[tp] > 0 for tp in waiting)
        later = await fresh_scrape(port, probe_started_after=time.time() + 1.0)
        older = metric_by_tp(later, LAG_SECONDS)
        assert all(older[tp] > ages[tp] for tp in waiting), "lag seconds must grow while paused"
        assert metric_by_tp(later, LAG) == truth
    finally:
        await lock.execute("ROLLBACK")
        await lock.close()

    brackets = await check_scrapes_while_catching_up(pipeline, port)
    assert brackets >= 1

    caught_up_at = time.time()
    final = await fresh_scrape(port, probe_started_after=caught_up_at)
    assert set(metric_by_tp(final, LAG).values()) == {0}
    assert set(metric_by_tp(final, LAG_SECONDS).values()) == {0}
    await wait_changelog_caught_up(port)

    assert final.value("lendstream_end_to_end_seconds_count", projection="loans") >= sum(
        end + 1 for end in pipeline.ends.values()
    )
    assert final.value("lendstream_projection_batch_size_count", projection="loans") > 0
    assert final.value("lendstream_projection_batch_size_sum", projection="loans") == final.value(
        "lendstream_end_to_end_seconds_count", projection="loans"
    )  # a batch's size is its messages, not the one item the loan projection commits
    assert final.value("lendstream_table_recovery_remaining", table="loans") == 0
    assert final.value("lendstream_worker_ready") == 1
    assert final.value("lendstream_pg_pool_max_connections") == settings.pg_pool_max
    assert final.value("lendstream_dead_letters", topic="loan-events", status="dead") >= 0
    assert final.values("process_cpu_seconds_total")
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    assert_rules_and_dashboard_use_only_exported_metrics(final)
    assert worker.alive()


async def check_scrapes_while_catching_up(pipeline: Pipeline, port: int) -> int:
    """Bracket every scrape between PostgreSQL's truth before its probe and after it."""
    scrapes = 0
    while True:
        started = time.time()
        before = await pipeline.positions()
        scrape = await fresh_scrape(port, probe_started_after=started)
        after = await pipeline.positions()
        most, least = true_lag(pipeline, before), true_lag(pipeline, after)
        for tp, lag in metric_by_tp(scrape, LAG).items():
            assert least[tp] <= lag <= most[tp], f"{tp}: {lag} not in [{least[tp]}, {most[tp]}]"
        scrapes += 1
        if not any(most.values()):
            return scrapes
        pipeline.supervise()


async def wait_changelog_caught_up(port: int, timeout: float = 60.0) -> None:
    """The changelog partitions this worker holds converge to lag 0 once writes are flushed."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = await fresh_scrape(port, probe_started_after=time.time())
        lags = scrape.by_partition(LAG, CHANGELOG)
        if lags and set(lags.values()) == {0}:
            return
        assert time.monotonic() < deadline, f"changelog lag stays {lags}"
        await asyncio.sleep(0.2)


def assert_rules_and_dashboard_use_only_exported_metrics(scrape: Scrape) -> None:
    """Names checked against what this live worker exports, not only the code's registry."""
    rules = load_rules()
    known = exported_names(scrape.families) | recorded_names(rules) | PROMETHEUS_SERIES
    used = set().union(*(promql_metric_names(rule["expr"]) for rule in rules))
    used |= set().union(*(promql_metric_names(query) for _, query in dashboard_queries()))
    assert used <= known, f"not exported by a live worker: {sorted(used - known)}"


async def wait_health(
    worker: WorkerProcess, port: int, status: int, containing: str = "", timeout: float = 90.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/health")
        if code == status and containing in body.decode(errors="replace"):
            return orjson.loads(body)  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never {status} with {containing!r}: {code} {body!r}\n"
                                 f"{worker.log_tail(80)}")  # fmt: skip
        await asyncio.sleep(0.25)


async def test_health_names_the_dependency_that_is_unreachable(
    pipeline: Pipeline, postgres: Postgres, broker: Broker
) -> None:
    """PostgreSQL paused while the worker is idle (no commit would notice), then the broker
    gone: /health says 503 and why, from the collector's probes."""
    port = free_port()
    await pipeline.create_topics()
    worker = pipeline.start_worker(web_port=port, probe_interval=0.5)
    assert await wait_health(worker, port, 200) == {"status": "ok", "reasons": []}

    postgres.pause()
    try:
        body = await wait_health(worker, port, 503, containing="PostgreSQL unreachable")
        assert body["status"] == "unavailable"
        assert (await fresh_scrape(port, time.time())).value("lendstream_worker_ready") == 0
    finally:
        postgres.resume()
    await wait_health(worker, port, 200)

    broker.stop()
    body = await wait_health(worker, port, 503, containing="Kafka unreachable")
    assert any(str(reason).startswith("Kafka unreachable") for reason in body["reasons"])  # type: ignore[attr-defined]
    worker.kill()  # a worker without its broker may not stop cleanly; nothing to keep
