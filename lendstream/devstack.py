"""`lendstream dev`: the whole system on one machine, with optional simulated traffic.

Starts the embedded broker (unless `LENDSTREAM_KAFKA` is set), PostgreSQL (unless
`LENDSTREAM_PG_DSN` is set) and the payout gateway simulator on a free loopback port (unless
`LENDSTREAM_GATEWAY_URL` is set), creates the topics, runs a worker as a child process and prints
progress lines every few seconds: loans by status, payout sagas by status, payouts the simulator
accepted. Ctrl-C (or SIGTERM) stops the traffic, then the worker (SIGTERM, then SIGKILL after a
deadline), then the simulator, PostgreSQL and the broker — each by its own pid.

Simulated traffic (`--simulate`) first sets a credit line for every partner of the simulated
population (`simulation.credit_lines`), then produces loan lifecycles; the payout events are the
saga's, unless `LENDSTREAM_PAYOUT_SAGA=false`, when the traffic writes them itself.

The embedded broker keeps its data in memory, so every `dev` run starts from an empty pipeline:
the worker's local tables and the read-model schema are reset at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka.structs import TopicPartition

from lendstream.admin import ensure_topics
from lendstream.embedded import Broker, Postgres, start_broker, start_postgres, stop_process
from lendstream.gateway import PAYOUTS_PATH
from lendstream.gateway_sim import SimulatorConfig, SimulatorProcess, start_process
from lendstream.kafka import group_less_consumer, high_watermarks
from lendstream.pg import drop_schema
from lendstream.producer import produce_all, settings_producer
from lendstream.security import kafka_client_options
from lendstream.settings import Settings
from lendstream.simulation import Produced, Repayments, credit_lines, interleave, population
from lendstream.topics import PAYOUT_EVENTS

log = logging.getLogger(__name__)
WORKER_STOP_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 3.0
TICKS_PER_SECOND = 5  # simulated traffic is produced in this many chunks a second
ENDPOINTS_FILE = "dev-endpoints.json"


def run_dev(
    settings: Settings,
    simulate: bool,
    rate: float,
    seed: int,
    gateway: SimulatorConfig,
) -> int:
    """Run until Ctrl-C; returns the process exit code. `gateway` configures the simulator
    started when `LENDSTREAM_GATEWAY_URL` is unset."""
    root = settings.data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    broker: Broker | None = None
    pg: Postgres | None = None
    simulator: SimulatorProcess | None = None
    worker: subprocess.Popen[bytes] | None = None
    stop = _stop_on_signals()
    try:
        if settings.kafka is None:
            broker = start_broker(root / "logs")
            settings = settings.model_copy(update={"kafka": broker.url})
        if settings.pg_dsn is None:
            pg = start_postgres(root / "pg")
            settings = settings.model_copy(update={"pg_dsn": pg.dsn})
        if settings.gateway_url is None:
            simulator = start_process(extra_args=simulator_args(gateway))
            settings = settings.model_copy(update={"gateway_url": simulator.url})
        _say(f"broker {settings.kafka}  postgres {settings.pg_dsn}")
        _say(f"payout gateway {settings.gateway_url}" + (
            f" (simulator pid {simulator.pid}: {gateway.transient_rate:.0%} transient, "
            f"{gateway.permanent_rate:.0%} permanent failures)" if simulator else ""
        ))  # fmt: skip
        _write_endpoints(root, settings)
        _reset_local_state(settings, embedded_broker=broker is not None)
        asyncio.run(ensure_topics(settings))
        worker = _spawn_worker(settings, root / "logs" / "worker.log")
        _say(f"worker pid {worker.pid}, logs in {root / 'logs' / 'worker.log'}; Ctrl-C stops")
        simulator_url = simulator.url if simulator else None
        asyncio.run(_supervise(settings, worker, stop, simulate, rate, seed, simulator_url))
        return 0
    finally:
        (root / ENDPOINTS_FILE).unlink(missing_ok=True)
        if worker is not None and worker.poll() is None:
            _say("stopping worker")
            stop_process(worker.pid, grace=WORKER_STOP_SECONDS)
        if simulator is not None:
            _say("stopping payout gateway simulator")
            simulator.stop()
        if pg is not None:
            _say("stopping postgres")
            pg.stop()
        if broker is not None:
            _say("stopping broker")
            broker.stop()
        _say("stopped")


def simulator_args(config: SimulatorConfig) -> tuple[str, ...]:
    """`lendstream gateway-sim` options for `config`'s failure rates and seed."""
    return ("--transient-rate", str(config.transient_rate),
            "--permanent-rate", str(config.permanent_rate), "--seed", str(config.seed),
            "--hang-seconds", str(config.hang_seconds))  # fmt: skip


def _write_endpoints(root: Path, settings: Settings) -> None:
    """Tell other commands (`simulate`, `dlq`) where this dev stack's broker, PostgreSQL and
    payout gateway are."""
    endpoints = {
        "kafka": settings.kafka,
        "pg_dsn": settings.pg_dsn,
        "gateway_url": settings.gateway_url,
        "pid": os.getpid(),
    }
    (root / ENDPOINTS_FILE).write_text(json.dumps(endpoints))


def dev_endpoints(data_dir: Path) -> dict[str, Any] | None:
    """The broker (`kafka`), `pg_dsn` and `gateway_url` of a `lendstream dev` running on
    `data_dir`, or None
    when none runs there (no file, or the process that wrote it is gone)."""
    try:
        endpoints = json.loads((data_dir.resolve() / ENDPOINTS_FILE).read_text())
        os.kill(int(endpoints["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return endpoints


def _say(text: str) -> None:
    print(f"[dev {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _stop_on_signals() -> asyncio.Event:
    """Ctrl-C (SIGINT) and SIGTERM stop `dev`. SIGINT gets the handler explicitly: a process
    started in the background by a non-interactive shell (a CI script's `cmd &`) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt for it."""
    stop = asyncio.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _reset_local_state(settings: Settings, embedded_broker: bool) -> None:
    if not embedded_broker:
        return
    shutil.rmtree(settings.data_dir.resolve() / "worker", ignore_errors=True)
    assert settings.pg_dsn is not None
    asyncio.run(drop_schema(settings.pg_dsn, settings.pg_schema))


def _spawn_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(worker_env(settings))
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lendstream", "worker"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def worker_env(settings: Settings) -> dict[str, str]:
    """The `LENDSTREAM_*` variables that reproduce `settings` in a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        env[f"LENDSTREAM_{name.upper()}"] = str(value)
    return env


async def _supervise(
    settings: Settings,
    worker: subprocess.Popen[bytes],
    stop: asyncio.Event,
    simulate: bool,
    rate: float,
    seed: int,
    simulator_url: str | None,
) -> None:
    tasks = [asyncio.create_task(_progress(settings, worker, simulator_url))]
    if simulate:
        tasks.append(asyncio.create_task(_traffic(settings, rate, seed)))
    try:
        while worker.poll() is None and not stop.is_set():
            await asyncio.sleep(0.2)
        if worker.poll() is not None:
            _say(f"worker exited with {worker.returncode}; see its log")
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*tasks)


async def _traffic(settings: Settings, rate: float, seed: int) -> None:
    """Set the partners' credit lines, then produce simulated lifecycles at about `rate` events
    per second. With the payout saga on, the lifecycles stop at approval and `follow_payouts`
    adds each loan's repayments once the saga paid it out; with the saga off, the lifecycles
    carry their own payout events and repayments."""
    producer = settings_producer(settings)
    await producer.start()
    follower: asyncio.Task[None] | None = None
    try:
        await produce_all(producer, credit_lines(seed))
        originations = _lifecycles(seed, with_payouts=not settings.payout_saga)
        repayments = Repayments(seed) if settings.payout_saga else None
        due: deque[Produced] = deque()
        if repayments is not None:
            follower = asyncio.create_task(follow_payouts(settings, repayments, due))
        per_tick = max(int(rate / TICKS_PER_SECOND), 1)
        while True:
            chunk = next_chunk(due, originations, per_tick)
            for item in chunk:
                if repayments is not None:
                    repayments.observe(item)  # before it is produced: its payout comes after
            await produce_all(producer, chunk)
            await asyncio.sleep(1 / TICKS_PER_SECOND)
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        await producer.stop()


def _lifecycles(seed: int, with_payouts: bool) -> Iterator[Produced]:
    """Endless rounds of 200 interleaved loan lifecycles."""
    for round_no in itertools.count():
        yield from interleave(
            seed + round_no, population(seed + round_no, loans=200, with_payouts=with_payouts)
        )


def next_chunk(due: deque[Produced], originations: Iterator[Produced], size: int) -> list[Produced]:
    """`size` messages: repayments that are due first, but never more than 90% of the chunk, so
    new loans keep coming (a loan brings fewer new events than that share: the queue of due
    repayments stays bounded); the rest from `originations`."""
    repaying = min(len(due), size - max(size // 10, 1))
    chunk = [due.popleft() for _ in range(repaying)]
    chunk.extend(itertools.islice(originations, size - len(chunk)))
    return chunk


async def follow_payouts(settings: Settings, repayments: Repayments, due: deque[Produced]) -> None:
    """Append to `due` the repayments of every simulated loan the saga pays out, reading
    `payout-events` from where it ended when the traffic started."""
    options = kafka_client_options(settings)
    consumer = group_less_consumer(settings.bootstrap_servers, options)
    await consumer.start()
    try:
        await consumer.topics()  # metadata: the topic's partitions
        partitions = consumer.partitions_for_topic(PAYOUT_EVENTS.name) or set()
        tps = [TopicPartition(PAYOUT_EVENTS.name, p) for p in sorted(partitions)]
        ends = await high_watermarks(settings.bootstrap_servers, tps, client_options=options)
        consumer.assign(tps)
        for tp, end in ends.items():
            consumer.seek(tp, end)
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    value = _json_object(record.value)
                    due.extend(repayments.on_payout_event(value) if value else [])
    finally:
        await consumer.stop()


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _progress(
    settings: Settings, worker: subprocess.Popen[bytes], simulator_url: str | None
) -> None:
    """Every few seconds: loans by status, then payout sagas by status and what the gateway
    simulator accepted. Failures to read say so and are tried again on the next tick."""
    schema = settings.pg_schema
    conn: asyncpg.Connection | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_SECONDS)
                try:
                    conn = conn or await asyncpg.connect(settings.pg_dsn)
                    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.loan_summary")
                    if not exists:
                        _say("waiting for the worker to create the read models")
                        continue
                    _say(await _loans_line(conn, schema))
                    sagas = await saga_counts(conn, schema) if settings.payout_saga else None
                except (OSError, asyncpg.PostgresError) as exc:
                    conn = None
                    _say(f"read models not reachable yet: {exc}")
                    continue
                gateway = await simulator_payouts(http, simulator_url) if simulator_url else None
                _say(payouts_line(sagas, gateway, simulator_url is not None))
    finally:
        # Closed here, not left to the garbage collector after the loop has stopped: that
        # printed "Task was destroyed but it is pending" (asyncpg's cancel task) after Ctrl-C.
        if conn is not None:
            conn.terminate()


async def _loans_line(conn: asyncpg.Connection, schema: str) -> str:
    rows = await conn.fetch(
        f'SELECT status, count(*) AS n FROM "{schema}".loan_summary GROUP BY 1 ORDER BY 1'
    )
    events = await conn.fetchval(f'SELECT count(*) FROM "{schema}".event_log')
    dead = await conn.fetchval(
        f"SELECT count(*) FROM \"{schema}\".dead_letters WHERE status IN ('dead', 'parked')"
    )
    statuses = " ".join(f"{r['status']}={r['n']}" for r in rows) or "no loans yet"
    return f"events applied={events} dead/parked={dead} | loans: {statuses}"


SAGA_STATUSES = ("running", "completed", "compensated", "failed")


async def saga_counts(conn: asyncpg.Connection, schema: str) -> dict[str, int]:
    """Saga instances per status (contract §6 `saga_instances`), every status present (0)."""
    rows = await conn.fetch(
        f'SELECT status, count(*) AS n FROM "{schema}".saga_instances GROUP BY status'
    )
    return {**dict.fromkeys(SAGA_STATUSES, 0), **{r["status"]: r["n"] for r in rows}}


@dataclass(frozen=True)
class SimulatorPayouts:
    """What the gateway simulator's `GET /payouts` says: distinct payouts it accepted, and
    requests it answered (retries and failures included)."""

    accepted: int
    requests: int


async def simulator_payouts(http: aiohttp.ClientSession, url: str) -> SimulatorPayouts | None:
    """The simulator's tally, or None when it does not answer."""
    try:
        async with http.get(url + PAYOUTS_PATH) as response:
            response.raise_for_status()
            body = await response.json()
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None
    requests = sum(record["requests"] for record in body["requested"].values())
    return SimulatorPayouts(accepted=len(body["payouts"]), requests=requests)


def payouts_line(
    sagas: dict[str, int] | None, gateway: SimulatorPayouts | None, simulated: bool
) -> str:
    """The progress line about payouts: sagas per status (None: the saga is off) and, when
    `dev` runs the gateway simulator (`simulated`), what it accepted (None: not answering)."""
    if sagas is None:
        parts = ["payouts: saga off (LENDSTREAM_PAYOUT_SAGA=false)"]
    else:
        parts = ["payout sagas: " + " ".join(f"{status}={n}" for status, n in sagas.items())]
    if simulated:
        parts.append(
            f"gateway simulator: {gateway.accepted} payouts accepted, {gateway.requests} requests"
            if gateway
            else "gateway simulator not answering"
        )
    return " | ".join(parts)
