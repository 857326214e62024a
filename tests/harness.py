"""Test harness: the real broker and PostgreSQL, worker processes, producing and waiting.

Every process a test starts is started on a free port (PostgreSQL: a socket in its own dir),
stopped by its own pid, and its data dir removed.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, TopicPartition

from lendstream.admin import ensure_topics
from lendstream.agents.batch import FAIL_STOP_EXIT_CODE
from lendstream.devstack import worker_env
from lendstream.embedded import free_port, stop_process
from lendstream.kafka import group_less_consumer, high_watermarks
from lendstream.producer import kafka_producer, produce_all
from lendstream.projections.writer import stored_positions
from lendstream.settings import Settings
from lendstream.simulation import Produced

WORKER = ("-m", "lendstream", "worker")
WORKER_STOP_SECONDS = 20.0
MAX_FAIL_STOPS = 5


@dataclass
class WorkerProcess:
    """A `lendstream worker` child process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str = "w1"
    overrides: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = WORKER
    settings: Settings | None = None
    stopped: bool = False  # stopped on purpose by `stop` (its exit is not a failure)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash we test against."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM with a deadline, then SIGKILL."""
        self.stopped = True
        if self.alive():
            stop_process(self.proc.pid, grace=WORKER_STOP_SECONDS)
        self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Pipeline:
    """One isolated pipeline: its own broker, PostgreSQL schema and worker data dirs."""

    settings: Settings
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    fail_stops: int = 0
    fail_stop_logs: list[str] = field(default_factory=list)  # the end of each one's log
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def start_worker(
        self, name: str = "w1", command: tuple[str, ...] = WORKER, **overrides: Any
    ) -> WorkerProcess:
        """Start a worker process (`command`, by default `lendstream worker`) with its own data
        dir and web port; `overrides` change its settings."""
        settings = self.settings.model_copy(
            update={"data_dir": self.root / name, "web_port": free_port(), **overrides}
        )
        log_path = self.root / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
        env.update(worker_env(settings))
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *command],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(proc, log_path, name, overrides, command, settings)
        self.workers.append(worker)
        return worker

    def supervise(self) -> None:
        """Do what a process supervisor does: restart a worker that stopped itself (fail-stop,
        exit code 70) rather than risk losing a batch. Any other exit fails the test."""
        latest = {w.name: i for i, w in enumerate(self.workers)}
        for i in latest.values():
            worker = self.workers[i]
            code = worker.proc.poll()
            if code == FAIL_STOP_EXIT_CODE:
                self.fail_stops += 1
                self.fail_stop_logs.append(f"{worker.name}:\n{worker.log_tail()}")
                assert self.fail_stops <= MAX_FAIL_STOPS, (
                    f"worker keeps failing:\n{worker.log_tail()}"
                )
                self.workers[i] = self.start_worker(worker.name, worker.command, **worker.overrides)
                self.workers.pop()
            elif code not in (None, -signal.SIGKILL) and not (worker.stopped and code == 0):
                raise AssertionError(f"worker exited with {code}:\n{worker.log_tail()}")

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def create_topics(self) -> None:
        await ensure_topics(self.settings)

    async def produce(
        self, items: Iterable[Produced | tuple[str, bytes | None, bytes | None]], **options: Any
    ) -> None:
        """Produce and remember the end offsets (to know when the worker caught up);
        `options` go to the producer (e.g. `max_request_size` for a large message)."""
        producer = kafka_producer(self.settings.bootstrap_servers, **options)
        await producer.start()
        try:
            ends = await produce_all(producer, items)
        finally:
            await producer.stop()
        for tp, offset in ends.items():
            self.ends[tp] = max(self.ends.get(tp, -1), offset)

    async def positions(self, projection: str = "loans") -> dict[tuple[str, int], int]:
        pool = await asyncpg.create_pool(self.settings.pg_dsn, min_size=1, max_size=1)
        try:
            return await stored_positions(pool, self.settings.pg_schema, projection)
        except asyncpg.UndefinedTableError:
            return {}
        finally:
            await pool.close()

    async def caught_up(self, projection: str = "loans", topics: Iterable[str] = ()) -> bool:
        """The projection's positions reach every produced end offset (of `topics` only, if
        given)."""
        stored = await self.positions(projection)
        wanted = set(topics)
        return all(
            stored.get(tp, -1) >= offset
            for tp, offset in self.ends.items()
            if not wanted or tp[0] in wanted
        )

    async def wait_caught_up(
        self, timeout: float, projection: str = "loans", topics: Iterable[str] = ()
    ) -> None:
        """Wait until the projection's stored positions reach every produced end offset (of
        `topics` only, if given)."""
        topics = tuple(topics)
        deadline = time.monotonic() + timeout
        while not await self.caught_up(projection, topics):
            if time.monotonic() > deadline:
                tails = "\n\n".join(w.log_tail() for w in self.workers)
                missing = {
                    tp: (off, (await self.positions(projection)).get(tp))
                    for tp, off in self.ends.items()
                }
                raise AssertionError(f"not caught up after {timeout}s: {missing}\n{tails}")
            self.supervise()
            await asyncio.sleep(0.25)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.settings.pg_dsn)
        try:
            await conn.execute(f'SET search_path TO "{self.settings.pg_schema}"')
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def wait_for(
        self, sql: str, check: Any, timeout: float, what: str, *args: Any
    ) -> list[dict[str, Any]]:
        """Poll `sql` until `check(rows)` holds; fails naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = await self.fetch(sql, *args)
            except asyncpg.UndefinedTableError:  # the worker has not migrated the schema yet
                rows = []
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                tails = "\n\n".join(w.log_tail() for w in self.workers)
                raise AssertionError(f"{what} not reached after {timeout}s: {rows[:8]}\n{tails}")
            self.supervise()
            await asyncio.sleep(0.25)

    def assert_no_crash(self) -> None:
        """No worker restarted an agent, crashed, or stopped itself because of input."""
        assert self.fail_stops == 0, "a worker stopped itself (fail-stop):\n" + "\n".join(
            self.fail_stop_logs
        )
        for worker in self.workers:
            text = worker.log_path.read_text(errors="replace")
            for sign in ("Traceback", "crashed", "restarting"):
                assert sign not in text, (
                    f"{sign!r} in the log of {worker.name}:\n{worker.log_tail()}"
                )

    async def share_processed(self, projection: str = "loans") -> float:
        """How much of what was produced the projection has stored (0.0 to 1.0)."""
        stored = await self.positions(projection)
        total = sum(end + 1 for end in self.ends.values())
        done = sum(min(stored.get(tp, -1), end) + 1 for tp, end in self.ends.items())
        return done / max(total, 1)

    async def wait_for_share(self, share: float, timeout: float) -> float:
        """Wait until the projection has stored at least `share` of what was produced; returns
        the share reached."""
        deadline = time.monotonic() + timeout
        while (reached := await self.share_processed()) < share:
            assert time.monotonic() < deadline, (
                f"only {reached:.0%} processed after {timeout}s:\n"
                + "\n\n".join(w.log_tail() for w in self.workers)
            )
            self.supervise()
            await asyncio.sleep(0.2)
        return reached

    async def wait_for_progress(self, timeout: float = 120) -> None:
        """Wait until the stored positions move (the worker is processing) or it caught up."""
        before = await self.positions()
        deadline = time.monotonic() + timeout
        while await self.positions() == before:
            self.supervise()
            if await self.caught_up():
                return
            assert time.monotonic() < deadline, "worker made no progress"
            await asyncio.sleep(0.1)

    async def crash_repeatedly(
        self, rng: random.Random, kills: int, name: str = "w1", command: tuple[str, ...] = WORKER,
        **overrides: Any,
    ) -> int:  # fmt: skip
        """SIGKILL the worker `kills` times at random moments while it works, restarting it each
        time; every second restart comes up on a wiped data dir (a fresh machine: the table is
        recovered from its changelog alone). Returns how many kills happened before it caught up."""
        done = 0
        self.start_worker(name, command, **overrides)
        while done < kills:
            await self.wait_for_progress()
            if await self.caught_up():
                break
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            self.workers[-1].kill()
            done += 1
            if done % 2 == 0:
                shutil.rmtree(self.root / name, ignore_errors=True)
            self.start_worker(name, command, **overrides)
        return done


async def read_topics(
    bootstrap: list[str], topics: Iterable[str], partitions: int, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topics`, read with a real (group-less) consumer up to each
    partition's high watermark; sorted by topic, partition and offset."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    ends = await high_watermarks(bootstrap, tps)
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(tps)
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the topics to their ends"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(
                    r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)]
                )
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's murmur2_random) picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
