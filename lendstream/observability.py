"""What a worker measures for `/metrics` and `/health` beyond what agents and writers record.

`register(app, runtime)` adds one small service to the app, started with it — before table
recovery, unlike `app.task`s, which Faust starts only once recovery is complete — running one
loop. Every second it reads in-memory state (PostgreSQL pool usage, Faust's table recovery,
readiness); every `LENDSTREAM_PROBE_INTERVAL` seconds it probes, never per message:

- PostgreSQL: projection positions (the processed position of the app's group), when each
  projection last advanced, dead letters by topic and status (and the parked ones waiting for
  a retry after a transient failure), saga instances by type and
  status (overdue and retrying too; the `saga_instances` table may be missing);
- Kafka: the lag of the app's consumer group on every partition of every source topic
  (repartition topics included) — the whole group, not only this worker's partitions, so lag
  stays visible while a worker is dead; and the lag of each changelog partition this worker
  holds (active or standby), from what it has written or read of it (`_changelog_targets`;
  not while the worker rebalances or restores: `table_recovery_remaining` shows a restore).
  Computation and edge cases: `lendstream.lag`.

Every worker exports the same group-wide lag; rules and dashboards take the max over
instances. The gauges of one probe are set together (no await in between), so a scrape never
mixes two probes; `lendstream_lag_probe_timestamp_seconds` is that probe's start time.

A probe that fails keeps the previous values, counts `lendstream_probe_failures_total`, and,
when Kafka or PostgreSQL does not answer, adds a reason to `/health` until a probe succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service
from prometheus_client import Gauge

from lendstream import lag
from lendstream.domain.sequencing import TRANSIENT
from lendstream.projections.writer import UNAVAILABLE
from lendstream.security import kafka_client_options

if TYPE_CHECKING:
    from lendstream.app import Runtime

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 10.0
Series = dict[tuple[str, ...], float]  # label values -> value, for one gauge
DEAD_LETTER_STATUSES = ("parked", "released", "dead", "replayed", "discarded")
SAGA_STATUSES = ("running", "completed", "compensated", "failed")


def register(app: faust.App, runtime: Runtime) -> Collector:
    """Start the collector on `app` and add its reasons to the worker's health check."""
    # Every probe consumer's assign() logs the whole subscription at INFO: once per probe.
    logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
    collector = Collector(app, runtime)
    runtime.health_checks.append(collector.health_problems)
    app.add_dependency(_CollectorService(collector))
    return collector


class _CollectorService(Service):
    def __init__(self, collector: Collector) -> None:
        super().__init__()
        self.collector = collector

    @Service.task
    async def _collect(self) -> None:
        await self.collector.run()


class Collector:
    def __init__(self, app: faust.App, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.settings = runtime.settings
        self.group = app.conf.id
        self.kafka_options = kafka_client_options(runtime.settings)
        self.kafka_problem: str | None = None
        self.pg_problem: str | None = None
        self._series: dict[Gauge, set[tuple[str, ...]]] = {}

    @property
    def recovery(self) -> Any:
        """Faust's table recovery (typed loosely: the table manager's type hides it)."""
        return self.app.tables.recovery  # type: ignore[attr-defined]

    def health_problems(self) -> list[str]:
        """Why Kafka or PostgreSQL looked unreachable to the last probe (empty when fine)."""
        return [p for p in (self.kafka_problem, self.pg_problem) if p]

    async def run(self) -> None:
        next_probe = 0.0
        while True:
            try:
                self.observe_local()
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + self.settings.probe_interval
                    await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # the collector must never stop the worker
                log.exception("metrics collection failed")
            await asyncio.sleep(min(TICK_SECONDS, self.settings.probe_interval))

    # --- every tick: in-memory state -------------------------------------------------------

    def observe_local(self) -> None:
        from lendstream.app import health_reasons  # app.py imports this module

        pool = self.runtime.pool
        if pool is not None:
            idle = pool.get_idle_size()
            self.metrics.pg_pool_connections.labels("idle").set(idle)
            self.metrics.pg_pool_connections.labels("in_use").set(pool.get_size() - idle)
            self.metrics.pg_pool_max.set(pool.get_max_size())
        self._publish(self.metrics.table_recovery_remaining, self._recovery_remaining())
        self.metrics.worker_ready.set(0 if health_reasons(self.app, self.runtime) else 1)

    def _recovery_remaining(self) -> Series:
        """Changelog records each table has left to restore (Faust's own count; 0 when not
        restoring)."""
        remaining: Series = {(table.name,): 0.0 for table in self.app.tables.values()}
        recovery = self.recovery
        if recovery.in_recovery:
            for tp, left in recovery.active_remaining().items():
                name = recovery.tp_to_table[tp].name
                remaining[(name,)] = remaining.get((name,), 0.0) + max(left, 0)
        return remaining

    # --- every probe interval: PostgreSQL and Kafka -----------------------------------------

    async def probe(self) -> None:
        started = time.time()
        processed = await self._probe_postgres()
        rows = await self._probe_kafka(processed)
        if rows is not None:
            self._publish_lag(rows, started)

    async def _probe_postgres(self) -> dict[tuple[str, int], int] | None:
        """Processed positions (None when unknown); sets the PostgreSQL-derived gauges."""
        pool = self.runtime.pool
        if pool is None:
            return None  # still starting: /health already says so
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), pool.acquire() as conn:
                positions = await lag.read_positions(conn, self.settings.pg_schema)
                tables = await self._read_tables(conn)
        except (*UNAVAILABLE, TimeoutError) as exc:
            self.metrics.probe_failures.labels("postgres").inc()
            self.pg_problem = f"PostgreSQL unreachable: {type(exc).__name__}: {exc}"
            return None
        self.pg_problem = None
        self._publish_tables(tables)
        return positions

    async def _read_tables(self, conn: Any) -> dict[str, list[Any]]:
        schema = self.settings.pg_schema
        found: dict[str, list[Any]] = {}
        queries = {
            "projection_positions": "SELECT projection, "
            "extract(epoch FROM max(updated_at))::float8 AS at FROM {t} GROUP BY projection",
            "dead_letters": "SELECT topic, status, count(*) AS n, "
            f"count(*) FILTER (WHERE error_class = '{TRANSIENT}') AS retrying "
            "FROM {t} GROUP BY 1, 2",
            "saga_instances": "SELECT saga_type, status, count(*) AS n, "
            "count(*) FILTER (WHERE status = 'running' AND deadline_at < now()) AS overdue, "
            "count(*) FILTER (WHERE status = 'running' AND last_error IS NOT NULL) AS retrying "
            "FROM {t} GROUP BY 1, 2",
        }
        for table, sql in queries.items():
            name = f'"{schema}".{table}'
            if await conn.fetchval("SELECT to_regclass($1)", name):
                found[table] = await conn.fetch(sql.format(t=name))
        return found

    def _publish_tables(self, tables: Mapping[str, list[Any]]) -> None:
        m = self.metrics
        advanced: Series = {
            (r["projection"],): r["at"] for r in tables.get("projection_positions", [])
        }
        self._publish(m.projection_last_advance, advanced)
        dead_rows = tables.get("dead_letters", [])
        topics = set(self._source_topics()) | {r["topic"] for r in dead_rows}
        dead: Series = {(t, s): 0.0 for t in topics for s in DEAD_LETTER_STATUSES}
        dead.update({(r["topic"], r["status"]): r["n"] for r in dead_rows})
        self._publish(m.dead_letters, dead)
        retrying: Series = {(t,): 0.0 for t in topics}
        for r in dead_rows:
            if r["status"] == "parked":
                retrying[(r["topic"],)] += r["retrying"]
        self._publish(m.dead_letters_retrying, retrying)
        saga_rows = tables.get("saga_instances", [])
        sagas = {r["saga_type"] for r in saga_rows}
        counts: Series = {(saga, s): 0.0 for saga in sagas for s in SAGA_STATUSES}
        counts.update({(r["saga_type"], r["status"]): r["n"] for r in saga_rows})
        self._publish(m.saga_instances, counts)
        for gauge, column in ((m.saga_overdue, "overdue"), (m.saga_retrying, "retrying")):
            totals: Series = {(saga,): 0.0 for saga in sagas}
            for r in saga_rows:
                totals[(r["saga_type"],)] += r[column]
            self._publish(gauge, totals)

    async def _probe_kafka(
        self, processed: dict[tuple[str, int], int] | None
    ) -> list[lag.PartitionLag] | None:
        bootstrap = self.settings.bootstrap_servers
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **self.kafka_options)
                await admin.start()
                try:
                    targets = await lag.group_targets(
                        admin, self.group, self._source_topics(), processed
                    )
                finally:
                    await admin.close()
                targets += self._changelog_targets()
                rows = await lag.measure(bootstrap, targets, self.kafka_options)
        except (KafkaError, OSError, TimeoutError) as exc:
            self.metrics.probe_failures.labels("kafka").inc()
            self.kafka_problem = f"Kafka unreachable: {type(exc).__name__}: {exc}"
            return None
        self.kafka_problem = None
        return rows

    def _source_topics(self) -> list[str]:
        """Topics the app's agents consume (repartition topics included), changelogs not."""
        names = {name for topic in self.app.topics for name in (topic.topics or ())}
        return sorted(names - self.app.tables.changelog_topics)

    def _changelog_targets(self) -> list[lag.Target]:
        """Changelog partitions this worker holds, active or standby. The position is the
        furthest offset it has of each: written (the table's persisted offset in RocksDB) or
        read (Faust's recovery counters: a standby buffers what it reads and applies it in
        batches, so RocksDB alone would show a quiet standby as forever behind)."""
        if self.app.rebalancing:
            return []  # partitions are moving; their stores may be closed
        recovery = self.recovery
        targets = []
        for tp in sorted(recovery.active_tps | recovery.standby_tps):
            table = recovery.tp_to_table.get(tp)
            if table is None:
                continue
            seen = [table.data.persisted_offset(tp), recovery.active_offsets.get(tp),
                    recovery.standby_offsets.get(tp)]  # fmt: skip
            known = [int(offset) for offset in seen if offset is not None and offset >= 0]
            processed = max(known) + 1 if known else None
            targets.append(lag.Target(self.group, tp.topic, tp.partition, processed=processed))
        return targets

    def _publish_lag(self, rows: list[lag.PartitionLag], started: float) -> None:
        m = self.metrics
        per_group = {(r.group, r.topic, str(r.partition)): r for r in rows}
        self._publish(m.consumer_lag_messages, {k: r.lag for k, r in per_group.items()})
        self._publish(m.consumer_lag_seconds, {k: r.lag_seconds for k, r in per_group.items()})
        self._publish(m.consumer_position, {k: r.position for k, r in per_group.items()})
        self._publish(m.partition_end_offset, {(r.topic, str(r.partition)): r.end for r in rows})
        m.lag_probe_timestamp.set(started)

    def _publish(self, gauge: Gauge, values: Series) -> None:
        """Set `gauge` to exactly `values`: label sets seen before and now gone are removed."""
        for labels in self._series.get(gauge, set()) - values.keys():
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        self._series[gauge] = set(values)
