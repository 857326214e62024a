"""`lendstream dev`: the whole system on one machine, with optional simulated traffic.

Starts the embedded broker (unless `LENDSTREAM_KAFKA` is set) and PostgreSQL (unless
`LENDSTREAM_PG_DSN` is set), creates the topics, runs a worker as a child process and prints a
progress line every few seconds. Ctrl-C (or SIGTERM) stops the traffic, then the worker
(SIGTERM, then SIGKILL after a deadline), then PostgreSQL and the broker — each by its own pid.

The embedded broker keeps its data in memory, so every `dev` run starts from an empty pipeline:
the worker's local tables and the read-model schema are reset at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from lendstream.admin import ensure_topics
from lendstream.embedded import Broker, Postgres, start_broker, start_postgres, stop_process
from lendstream.pg import drop_schema
from lendstream.producer import produce_all, settings_producer
from lendstream.settings import Settings
from lendstream.simulation import interleave, population

log = logging.getLogger(__name__)
WORKER_STOP_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 3.0
ENDPOINTS_FILE = "dev-endpoints.json"


def run_dev(settings: Settings, simulate: bool, rate: float, seed: int) -> int:
    """Run until Ctrl-C; returns the process exit code."""
    root = settings.data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    broker: Broker | None = None
    pg: Postgres | None = None
    worker: subprocess.Popen[bytes] | None = None
    stop = _stop_on_signals()
    try:
        if settings.kafka is None:
            broker = start_broker(root / "logs")
            settings = settings.model_copy(update={"kafka": broker.url})
        if settings.pg_dsn is None:
            pg = start_postgres(root / "pg")
            settings = settings.model_copy(update={"pg_dsn": pg.dsn})
        _say(f"broker {settings.kafka}  postgres {settings.pg_dsn}")
        _write_endpoints(root, settings)
        _reset_local_state(settings, embedded_broker=broker is not None)
        asyncio.run(ensure_topics(settings))
        worker = _spawn_worker(settings, root / "logs" / "worker.log")
        _say(f"worker pid {worker.pid}, logs in {root / 'logs' / 'worker.log'}; Ctrl-C stops")
        asyncio.run(_supervise(settings, worker, stop, simulate, rate, seed))
        return 0
    finally:
        (root / ENDPOINTS_FILE).unlink(missing_ok=True)
        if worker is not None and worker.poll() is None:
            _say("stopping worker")
            stop_process(worker.pid, grace=WORKER_STOP_SECONDS)
        if pg is not None:
            _say("stopping postgres")
            pg.stop()
        if broker is not None:
            _say("stopping broker")
            broker.stop()
        _say("stopped")


def _write_endpoints(root: Path, settings: Settings) -> None:
    """Tell other commands (`simulate`, `dlq`) where this dev stack's broker and PostgreSQL are."""
    endpoints = {"kafka": settings.kafka, "pg_dsn": settings.pg_dsn, "pid": os.getpid()}
    (root / ENDPOINTS_FILE).write_text(json.dumps(endpoints))


def dev_endpoints(data_dir: Path) -> dict[str, Any] | None:
    """The broker (`kafka`) and `pg_dsn` of a `lendstream dev` running on `data_dir`, or None
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
    stop = asyncio.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
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
) -> None:
    tasks = [asyncio.create_task(_progress(settings, worker))]
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
    """Produce simulated lifecycles at about `rate` events per second, batch after batch."""
    producer = settings_producer(settings)
    await producer.start()
    try:
        for round_no in _count():
            lifecycles = population(seed + round_no, loans=200, with_payouts=True)
            chunk: list[object] = []
            for item in interleave(seed + round_no, lifecycles):
                chunk.append(item)
                if len(chunk) >= max(int(rate / 5), 1):
                    await produce_all(producer, chunk)  # type: ignore[arg-type]
                    chunk.clear()
                    await asyncio.sleep(0.2)
            await produce_all(producer, chunk)  # type: ignore[arg-type]
    finally:
        await producer.stop()


def _count() -> Iterator[int]:
    n = 0
    while True:
        yield n
        n += 1


async def _progress(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    schema = settings.pg_schema
    conn: asyncpg.Connection | None = None
    while True:
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
        try:
            conn = conn or await asyncpg.connect(settings.pg_dsn)
            exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.loan_summary")
            if not exists:
                _say("waiting for the worker to create the read models")
                continue
            rows = await conn.fetch(
                f'SELECT status, count(*) AS n FROM "{schema}".loan_summary GROUP BY 1 ORDER BY 1'
            )
            events = await conn.fetchval(f'SELECT count(*) FROM "{schema}".event_log')
            dead = await conn.fetchval(
                f"SELECT count(*) FROM \"{schema}\".dead_letters WHERE status IN ('dead', 'parked')"
            )
            statuses = " ".join(f"{r['status']}={r['n']}" for r in rows) or "no loans yet"
            _say(f"events applied={events} dead/parked={dead} | loans: {statuses}")
        except (OSError, asyncpg.PostgresError) as exc:
            conn = None
            _say(f"read models not reachable yet: {exc}")
