"""Test harness: the real broker and PostgreSQL, worker processes, producing and waiting.

Every process a test starts is started on a free port (PostgreSQL: a socket in its own dir),
stopped by its own pid, and its data dir removed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, TopicPartition

from lendstream.admin import ensure_topics
from lendstream.agents.batch import FAIL_STOP_EXIT_CODE
from lendstream.devstack import worker_env
from lendstream.embedded import free_port, stop_process
from lendstream.kafka import high_watermarks
from lendstream.producer import kafka_producer, produce_all
from lendstream.projections.writer import stored_positions
from lendstream.settings import Settings
from lendstream.simulation import Produced

WORKER_STOP_SECONDS = 20.0
MAX_FAIL_STOPS = 5


@dataclass
class WorkerProcess:
    """A `lendstream worker` child process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str = "w1"
    overrides: dict[str, Any] = field(default_factory=dict)

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
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def start_worker(self, name: str = "w1", **overrides: Any) -> WorkerProcess:
        settings = self.settings.model_copy(
            update={"data_dir": self.root / name, "web_port": free_port(), **overrides}
        )
        log_path = self.root / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
        env.update(worker_env(settings))
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lendstream", "worker"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(proc, log_path, name, overrides)
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
                assert self.fail_stops <= MAX_FAIL_STOPS, (
                    f"worker keeps failing:\n{worker.log_tail()}"
                )
                self.workers[i] = self.start_worker(worker.name, **worker.overrides)
                self.workers.pop()
            elif code not in (None, -signal.SIGKILL):
                raise AssertionError(f"worker exited with {code}:\n{worker.log_tail()}")

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def create_topics(self) -> None:
        await ensure_topics(self.settings.bootstrap_servers, self.settings.partitions)

    async def produce(
        self, items: Iterable[Produced | tuple[str, bytes | None, bytes | None]]
    ) -> None:
        """Produce and remember the end offsets (to know when the worker caught up)."""
        producer = kafka_producer(self.settings.bootstrap_servers)
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

    async def caught_up(self, projection: str = "loans") -> bool:
        stored = await self.positions(projection)
        return all(stored.get(tp, -1) >= offset for tp, offset in self.ends.items())

    async def wait_caught_up(self, timeout: float, projection: str = "loans") -> None:
        """Wait until the projection's stored positions reach every produced end offset."""
        deadline = time.monotonic() + timeout
        while not await self.caught_up(projection):
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


async def read_topics(
    bootstrap: list[str], topics: Iterable[str], partitions: int, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topics`, read with a real (group-less) consumer up to each
    partition's high watermark; sorted by topic, partition and offset."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    ends = await high_watermarks(bootstrap, tps)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )  # fmt: skip
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
