"""`lendstream simulate` against the real embedded broker: what it produces is exactly the
seeded simulation (without payout events: the saga writes them) after the partners' credit
lines, on co-partitioned topics created with the configured partition count."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from lendstream.embedded import Broker
from lendstream.kafka import group_less_consumer, high_watermarks
from lendstream.simulate import produce_paced
from lendstream.simulation import Produced, Simulation, credit_lines
from lendstream.topics import LOAN_KEYED, TREASURY_EVENTS, TopicSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PARTITIONS = 3


async def read_everything(
    bootstrap: str, specs: tuple[TopicSpec, ...] = LOAN_KEYED
) -> list[tuple[str, int, int, Produced]]:
    """Every record of the `specs` topics as (topic, partition, offset, message)."""
    tps = [TopicPartition(s.name, p) for s in specs for p in range(PARTITIONS)]
    ends = await high_watermarks(bootstrap, tps)
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    out = []
    try:
        consumer.assign(tps)
        while sum(ends.values()) > len(out):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out += [
                    (tp.topic, tp.partition, r.offset,
                     Produced(tp.topic, r.key.decode(), orjson.loads(r.value)))
                    for r in records
                ]  # fmt: skip
    finally:
        await consumer.stop()
    return out


async def partition_counts(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([s.name for s in LOAN_KEYED])
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described}


def test_the_command_produces_the_seeded_simulation(broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(LENDSTREAM_KAFKA=broker.url, LENDSTREAM_PARTITIONS=str(PARTITIONS))
    done = subprocess.run(
        [sys.executable, "-m", "lendstream", "simulate", "--dau", "200", "--seed", "4",
         "--backlog", "3000"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "done: 3,000 events" in done.stdout
    assert "credit lines set: P00 EUR 100,000,000,000.00" in done.stdout

    async def check() -> None:
        assert await partition_counts(broker.bootstrap) == {s.name: PARTITIONS for s in LOAN_KEYED}
        records = await read_everything(broker.bootstrap)
        expected = list(itertools.islice(Simulation(seed=4, dau=200, with_payouts=False), 3000))
        assert sorted(orjson.dumps(r[3].value) for r in records) == sorted(
            orjson.dumps(p.value) for p in expected
        )
        by_offset = sorted(records, key=lambda r: (r[0], r[1], r[2]))
        partition_of: dict[str, int] = {}
        for topic, partition, _, message in by_offset:  # co-partitioned: one partition a loan
            assert partition_of.setdefault(message.key, partition) == partition, topic
        lines = await read_everything(broker.bootstrap, (TREASURY_EVENTS,))
        assert sorted(orjson.dumps(r[3].value) for r in lines) == sorted(
            orjson.dumps(p.value) for p in credit_lines(4, at=Simulation.start)
        )
        order = {p.value["event_id"]: i for i, p in enumerate(expected)}
        for _, group in itertools.groupby(by_offset, key=lambda r: r[:2]):
            ranks = [order[r[3].value["event_id"]] for r in group]
            assert ranks == sorted(ranks)  # production order kept within each partition

    asyncio.run(check())


async def test_paced_production_continues_the_stream(broker: Broker) -> None:
    sim = Simulation(seed=8, dau=100)
    report = await produce_paced([broker.bootstrap], sim, rate=400, duration=1.0)
    assert report.events == sim.produced > 0
    assert sum(end + 1 for end in report.ends.values()) == report.events
