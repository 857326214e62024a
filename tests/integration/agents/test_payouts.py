"""The payout saga's `Outbox` with a real PostgreSQL: nothing a batch decides is sent before the
batch is committed, and what a crash left unsent after a commit goes out before anything new.

(Kafka is not what is tested here: `send` records what would be produced.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from lendstream.agents.payouts import Outbox
from lendstream.domain.sequencing import Position
from lendstream.metrics import Metrics
from lendstream.projections.writer import CheckpointedWriter, Item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
TOPIC = "loan-control"


class Recorder:
    """What the outbox sent, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> Any:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def writer(pool: asyncpg.Pool, schema: str) -> CheckpointedWriter[str]:
    async def apply(conn: asyncpg.Connection, payloads: Sequence[str]) -> None:
        if "crash" in payloads:
            raise RuntimeError("killed before the commit")

    return CheckpointedWriter(pool, schema, "loans", apply, Metrics(CollectorRegistry()))


async def run_batch(
    outbox: Outbox, w: CheckpointedWriter[str], offset: int, value: bytes, payload: str = "rows",
    send: bool = True,
) -> None:  # fmt: skip
    """What a processor does with its outbox in one batch."""
    await outbox.send_leftovers(w)
    outbox.add("payout-events", "L1", value, 3)
    staged = outbox.stage()
    await w.commit([Item(Position(TOPIC, 3, offset), payload)], {(TOPIC, 3): offset}, (), staged)
    if send:
        await outbox.send_committed(staged, w)


async def test_a_batch_that_is_not_committed_sends_nothing(
    pool: asyncpg.Pool, pg_schema: str
) -> None:
    """The regression: a `PayoutFailed` decided by a run that was killed before its commit
    reached Kafka, and the next run, which decided otherwise, paid the loan out."""
    kafka = Recorder()
    w = writer(pool, pg_schema)
    with pytest.raises(RuntimeError):
        await run_batch(Outbox(kafka.send), w, 0, b"PayoutFailed", payload="crash")

    await run_batch(Outbox(kafka.send), w, 0, b"PayoutSent")  # the next worker decides again

    assert kafka.sent == [b"PayoutSent"]
    assert await w.leftovers() == []


async def test_records_left_by_a_crash_after_the_commit_go_first_once_per_generation(
    pool: asyncpg.Pool, pg_schema: str
) -> None:
    kafka = Recorder()
    w = writer(pool, pg_schema)
    await run_batch(Outbox(kafka.send), w, 0, b"committed, then killed", send=False)
    generation = [1]
    outbox = Outbox(kafka.send, lambda: generation[0])

    await run_batch(outbox, w, 1, b"next")
    await run_batch(Outbox(kafka.send), w, 2, b"unsent", send=False)  # another worker's crash
    await run_batch(outbox, w, 3, b"same generation")
    generation[0] = 2
    await run_batch(outbox, w, 4, b"new generation")

    assert kafka.sent == [
        b"committed, then killed", b"next", b"same generation", b"unsent", b"new generation"
    ]  # fmt: skip
    assert await w.leftovers() == []
