"""The Faust app, built from settings: transport, topics, tables, agents, web endpoints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import faust
import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lendstream import analysts, ingest, kafka, observability
from lendstream.agents import loans as loan_agent
from lendstream.agents import timers
from lendstream.agents import treasury as treasury_agent
from lendstream.agents.batch import fail_stop
from lendstream.agents.contiguity import ContiguityGuard, StallWatch, waits_its_turn
from lendstream.agents.payouts import GatewayCalls, Outbox
from lendstream.delivery import BatchDeliveryConsumer, BatchQueue
from lendstream.domain import loans as loan_domain
from lendstream.domain.sequencing import Evolve, Policy
from lendstream.gateway import GatewayClient
from lendstream.metrics import Metrics
from lendstream.projections import loans as loan_projection
from lendstream.projections import treasury as treasury_projection
from lendstream.projections.migrate import migrate
from lendstream.projections.writer import CheckpointedWriter
from lendstream.recovery import BatchedRecovery, FixedRecovery
from lendstream.sagas.payout import SagaPolicy
from lendstream.security import faust_broker_credentials, kafka_client_options, postgres_dsn
from lendstream.settings import Settings
from lendstream.tables import loans as loans_table
from lendstream.tables import store as table_store
from lendstream.tables import treasury as lines_table
from lendstream.topics import (
    CUSTOMER_NOTIFICATIONS_TOPIC,
    DEAD_LETTERS_TOPIC,
    LOAN_CONTROL,
    LOAN_PROCESSOR_INPUTS,
    TREASURY_EVENTS,
)
from lendstream.topics.treasury import COMMANDS_TOPIC as TREASURY_COMMANDS

log = logging.getLogger(__name__)
APP_ID = "lendstream"
PRODUCER_LINGER_SECONDS = 0.005
FETCH_MAX_WAIT_MS = 100
PRODUCER_MAX_BATCH_BYTES = 512 * 1024


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """End offsets from fetch high watermarks (see `lendstream.kafka`), so that table recovery
    reads each changelog to its true end on every broker; a shorter fetch wait; LeaveGroup on
    close in generation 0 too (`kafka.leave_group_in_any_generation`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hardcodes 1,500 ms. A broker that does not answer a fetch early when records
        # arrive (Tansu) then delays delivery by up to that much (p50 405 ms for one record
        # every 100 ms); Apache Kafka answers as soon as a record is there, so a short wait
        # only costs more idle fetch requests (docs/performance.md).
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def on_thread_stop(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            kafka.leave_group_in_any_generation(coordinator)
        await super().on_thread_stop()

    async def _highwaters(self, partitions: list[Any]) -> Any:
        consumer = self._ensure_consumer()
        if self.consumer.in_transaction:  # pragma: no cover - we never use transactions
            return await super()._highwaters(partitions)
        listed = await consumer.end_offsets(partitions)
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        true_ends = await kafka.high_watermarks(
            consumer._client._bootstrap_servers,
            tps,
            {TopicPartition(tp.topic, tp.partition): v for tp, v in listed.items()},
            client_options=faust_aiokafka.credentials_to_aiokafka_auth(
                self.app.conf.broker_credentials
            ),
        )
        return {tp: true_ends[TopicPartition(tp.topic, tp.partition)] for tp in partitions}


class _Consumer(BatchDeliveryConsumer, faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class LendstreamApp(faust.App):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: topic name → the batch agent's queue (`lendstream.delivery`), when batched delivery
        #: is on (`LENDSTREAM_BATCHED_DELIVERY`)
        self.batched_delivery = False
        self.batch_queues: dict[str, BatchQueue] = {}

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


@dataclass
class Runtime:
    """What the agents share in one worker process."""

    settings: Settings
    metrics: Metrics
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pool: asyncpg.Pool | None = None
    writers: list[CheckpointedWriter[Any]] = field(default_factory=list)
    startup_error: str | None = None
    health_checks: list[Callable[[], list[str]]] = field(default_factory=list)


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    evolve: Evolve[loan_domain.Loan] = loan_domain.evolve,
) -> tuple[faust.App, Runtime]:
    """A worker app for `settings` (which must name a broker and a PostgreSQL DSN).

    `evolve` is the loan fold; tests replace it to inject transient failures."""
    settings.require("kafka", "pg_dsn", *(("gateway_url",) if settings.payout_saga else ()))
    runtime = Runtime(settings, metrics or Metrics())
    datadir = (settings.data_dir / "worker").resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    app = LendstreamApp(
        settings.app_id,
        broker=settings.kafka,
        broker_credentials=faust_broker_credentials(settings),
        store=table_store.store_url(),
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        topic_allow_declare=settings.create_topics,
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_tables_enabled=False,  # Faust's /table/<name>/<key> would serve loan state to anyone
        web_in_thread=False,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Batches of records per partition, not a produce request per record: the worker's
        # changelog and outbox records go out together (broker CPU per event about -75%).
        producer_linger=PRODUCER_LINGER_SECONDS,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        stream_buffer_maxsize=max(4 * settings.batch_max, 4096),
        processing_guarantee="at_least_once",
        table_standby_replicas=1,
        worker_redirect_stdouts=False,
        autodiscover=False,
    )
    app.batched_delivery = settings.batched_delivery
    topic = app.topic(
        *[spec.name for spec in LOAN_PROCESSOR_INPUTS],
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    control = app.topic(LOAN_CONTROL.name, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(DEAD_LETTERS_TOPIC, key_serializer="raw", value_serializer="raw")
    table = loans_table.declare(app, settings)
    recovery = BatchedRecovery if settings.batched_delivery else FixedRecovery
    app.tables._recovery = recovery(app, app.tables, beacon=app.tables.beacon)  # type: ignore[attr-defined]
    writer: CheckpointedWriter[loan_projection.BatchRows] = CheckpointedWriter(
        pool=None,  # set once the pool exists (on_start below)
        schema=settings.pg_schema,
        projection=loan_projection.PROJECTION,
        apply=loan_projection.make_apply(settings.pg_schema),
        metrics=runtime.metrics,
        skip_seen=False,  # effects are idempotent by content (see projections/loans.py)
    )
    runtime.writers.append(writer)
    guard = ContiguityGuard(
        stored_positions=writer.stored,
        first_offset_from=lambda topic, partition, offset: kafka.first_offset_from(
            settings.bootstrap_servers,
            TopicPartition(topic, partition),
            offset,
            client_options=kafka_client_options(settings),
        ),
    )
    policy = Policy(backoff=settings.retry_backoff, park_deadline=settings.park_deadline)
    _watch_for_stalls(app, runtime, writer, settings, guard)

    async def produce(topic: str, key: bytes, value: bytes, partition: int | None) -> Any:
        return await app.producer.send(topic, key, value, partition, None, None)

    def generation() -> int:
        return app.consumer_generation_id

    async def send_command(loan_id: str, partition: int, value: bytes) -> None:
        await control.send(key=loan_id.encode(), value=value, partition=partition)

    gateway = None
    if settings.payout_saga:
        gateway = GatewayCalls(GatewayClient.from_settings(settings), send_command)
    processor = loan_agent.LoanProcessor(
        table, writer, guard, runtime.metrics, settings.pg_schema, evolve, policy,
        Outbox(produce, generation), saga_policy(settings, policy), gateway, dead_letters,
    )  # fmt: skip
    loan_agent.register(
        app, topic, processor, settings.batch_max, settings.batch_within, runtime.ready,
        pipelined=settings.pipelined_commits,
    )  # fmt: skip
    _register_treasury(app, runtime, Outbox(produce, generation))
    notifications = app.topic(CUSTOMER_NOTIFICATIONS_TOPIC, key_serializer="raw",
                              value_serializer="raw")  # fmt: skip

    @app.task
    async def declare_outbox_topic() -> None:
        await notifications.maybe_declare()

    timers.register(app, timers.TimerSweep(writer, settings.pg_schema, send_command), runtime.ready)
    _register_startup(app, runtime)
    _register_web(app, runtime)
    ingest.register(app, runtime)
    analysts.register(app, runtime)
    observability.register(app, runtime)
    return app, runtime


def saga_policy(settings: Settings, policy: Policy) -> SagaPolicy:
    """The saga's timing: gateway retries on the retry backoff, `LENDSTREAM_SAGA_DEADLINE`, no
    re-send of a step sooner than `SAGA_RESEND_SECONDS`, and no new gateway call while one may
    still be answering."""
    answer = settings.gateway_connect_timeout + settings.gateway_read_timeout + 1.0
    return SagaPolicy(policy, settings.saga_deadline, SAGA_RESEND_SECONDS, answer)


SAGA_RESEND_SECONDS = 5.0


def _register_treasury(app: faust.App, runtime: Runtime, outbox: Outbox) -> None:
    settings = runtime.settings
    topic = app.topic(
        TREASURY_EVENTS.name, TREASURY_COMMANDS, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions,
    )  # fmt: skip
    writer: CheckpointedWriter[treasury_projection.TreasuryRows] = CheckpointedWriter(
        pool=None,  # set once the pool exists
        schema=settings.pg_schema,
        projection=treasury_projection.PROJECTION,
        apply=treasury_projection.make_apply(settings.pg_schema),
        metrics=runtime.metrics,
        skip_seen=False,  # the processor drops what is stored before folding
    )
    runtime.writers.append(writer)
    table = lines_table.declare(app, settings)
    processor = treasury_agent.TreasuryProcessor(table, writer, outbox, settings.pg_schema)
    treasury_agent.register(
        app, topic, processor, settings.batch_max, settings.batch_within, runtime.ready
    )


STALL_PATIENCE_SECONDS = 60.0
STALL_CHECK_SECONDS = 10.0
#: how long a partition may wait for its turn while the worker is busy (`waits_its_turn`)
STALL_EXCUSED_SECONDS = 600.0
#: A broker or PostgreSQL that is down is /health's to report (the probes); raised from the
#: stall watch it would crash the app (seen: KafkaConnectionError while the broker was stopped).
_UNREACHABLE = (TimeoutError, OSError, KafkaError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _watch_for_stalls(
    app: faust.App,
    runtime: Runtime,
    writer: CheckpointedWriter[Any],
    settings: Settings,
    guard: ContiguityGuard,
) -> None:
    """Fail-stop when a source partition has records that are never delivered (`StallWatch`)."""
    watch = StallWatch(STALL_PATIENCE_SECONDS, busy_patience=STALL_EXCUSED_SECONDS)
    sources = {spec.name for spec in LOAN_PROCESSOR_INPUTS}

    @app.timer(interval=STALL_CHECK_SECONDS, name="stall-watch")
    async def watch_for_stalls() -> None:
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if not runtime.ready.is_set() or not recovered or app.rebalancing or not writer.healthy:
            watch.since.clear()
            return
        owned = [tp for tp in app.consumer.assignment() if tp.topic in sources]
        try:
            ends = await kafka.high_watermarks(
                settings.bootstrap_servers,
                [TopicPartition(tp.topic, tp.partition) for tp in owned],
                client_options=kafka_client_options(settings),
            )
            positions = await writer.stored()
        except _UNREACHABLE as exc:
            log.debug("stall watch skipped: %r", exc)
            return
        by_tp = {(tp.topic, tp.partition): end for tp, end in ends.items()}
        now = time.monotonic()
        busy = waits_its_turn(writer.committed_at, now, busy_within=2 * STALL_CHECK_SECONDS)
        for topic, partition in watch.check(positions, by_tp, now, busy=busy):
            position = positions.get((topic, partition), -1)
            try:
                first = await guard.first_offset_from(topic, partition, position + 1)
            except _UNREACHABLE as exc:
                log.debug("stall watch skipped: %r", exc)
                return
            if first is not None:
                fail_stop(
                    "stall watch",
                    f"{topic}[{partition}] has records after offset {position} that were not "
                    f"processed for {watch.stuck_for((topic, partition), now):.0f}s "
                    f"({client_fetch_state(app, topic, partition)})",
                )


def client_fetch_state(app: faust.App, topic: str, partition: int) -> str:
    """Where the consumer's client stands on the partition, for the stall watch's fail-stop
    message: aiokafka's position (the next offset it hands to Faust; not its fetch position),
    whether the partition is paused (by the client or by Faust), and whether the client holds
    fetched records of it not yet handed on. Read from private attributes of aiokafka and
    Faust; "client fetch state unknown" if they cannot be read. Never raises.

    A position past the processed position: the records are in the worker (an agent's queue).
    At it, with records waiting: fetched, not yet handed on. At it, none waiting: not fetched."""
    tp = TopicPartition(topic, partition)
    try:
        client: Any = app.consumer._thread._consumer  # type: ignore[attr-defined]
        state = client._subscription.subscription.assignment.state_value(tp)
        position = state.position if state.has_valid_position else None
        paused = state.paused or tp in app.consumer._paused_partitions  # type: ignore[attr-defined]
        buffered = tp in client._fetcher._records
    except Exception:  # a diagnostic: it must not keep the watch from fail-stopping
        return "client fetch state unknown"
    return (
        f"client position {position}, {'paused' if paused else 'not paused'}, "
        f"{'fetched records waiting' if buffered else 'no fetched records waiting'} in the client"
    )


def _register_startup(app: faust.App, runtime: Runtime) -> None:
    @app.task
    async def connect_postgres() -> None:
        settings = runtime.settings
        delay = 0.5
        while runtime.pool is None:
            try:
                # min_size=0: no connection floor for asyncpg to restore (with a stack trace in
                # the log every few seconds) while PostgreSQL is away; the writers retry.
                pool = await asyncpg.create_pool(
                    postgres_dsn(settings), min_size=0, max_size=settings.pg_pool_max
                )
                async with pool.acquire() as conn:
                    await migrate(conn, settings.pg_schema)
                runtime.pool = pool
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                runtime.startup_error = f"PostgreSQL unavailable: {exc}"
                log.warning("%s; retrying in %.1fs", runtime.startup_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for writer in runtime.writers:
            writer.pool = runtime.pool
        runtime.startup_error = None
        runtime.ready.set()
        log.info("PostgreSQL ready, schema %s migrated", settings.pg_schema)


def _register_web(app: faust.App, runtime: Runtime) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(runtime.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            reasons = health_reasons(app, runtime)
            status = 503 if reasons else 200
            body = {"status": "ok" if not reasons else "unavailable", "reasons": reasons}
            return self.bytes(orjson.dumps(body), content_type="application/json", status=status)


def health_reasons(app: faust.App, runtime: Runtime) -> list[str]:
    """Why the worker is not ready (empty when it is)."""
    reasons = []
    if not runtime.ready.is_set():
        reasons.append(runtime.startup_error or "starting: connecting to PostgreSQL")
    for writer in runtime.writers:
        if not writer.healthy:
            reasons.append(f"PostgreSQL unavailable for {writer.projection}: {writer.last_error}")
    if app.rebalancing:
        reasons.append("rebalancing")
    if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
        reasons.append("recovering tables from changelogs")
    for check in runtime.health_checks:
        reasons.extend(check())
    return reasons
