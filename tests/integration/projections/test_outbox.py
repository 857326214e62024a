"""The `outbox` table against a real PostgreSQL: staged with a batch's commit, read back until
deleted."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from lendstream.domain.sequencing import Position
from lendstream.metrics import Metrics
from lendstream.projections.outbox import Staged
from lendstream.projections.writer import CheckpointedWriter, Item, stored_positions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
TOPIC = "loan-events"
RECORDS = [
    ("payout-events", b"L1", b'{"event_id":"payout:L1:PayoutRequested"}', 3),
    ("customer-notifications", b"C1", b"{}", None),
]


def writer(pool: asyncpg.Pool, schema: str, projection: str = "test") -> CheckpointedWriter[str]:
    async def apply(conn: asyncpg.Connection, payloads: Sequence[str]) -> None:
        if "crash" in payloads:
            raise RuntimeError("the batch failed before its commit")

    return CheckpointedWriter(pool, schema, projection, apply, Metrics(CollectorRegistry()))


def item(offset: int, payload: str = "rows") -> list[Item[str]]:
    return [Item(Position(TOPIC, 0, offset), payload)]


async def test_staged_records_are_committed_with_the_batch_until_sent(
    pool: asyncpg.Pool, pg_schema: str
) -> None:
    w = writer(pool, pg_schema)
    staged = Staged(RECORDS)
    await w.commit(item(0), {(TOPIC, 0): 0}, staged=staged)

    assert await w.leftovers() == [staged]
    await w.sent([staged])
    assert await w.leftovers() == []


async def test_a_failed_batch_leaves_no_records(pool: asyncpg.Pool, pg_schema: str) -> None:
    w = writer(pool, pg_schema)
    with pytest.raises(RuntimeError):
        await w.commit(item(0, "crash"), {(TOPIC, 0): 0}, staged=Staged(RECORDS))

    assert await w.leftovers() == []
    assert await stored_positions(pool, pg_schema, "test") == {}


async def test_leftovers_are_per_projection_oldest_first(
    pool: asyncpg.Pool, pg_schema: str
) -> None:
    loans, treasury = writer(pool, pg_schema, "loans"), writer(pool, pg_schema, "treasury")
    first, second = Staged(RECORDS[:1]), Staged(RECORDS[1:])
    await loans.commit(item(0), {(TOPIC, 0): 0}, staged=first)
    await treasury.commit(item(0), {(TOPIC, 0): 0}, staged=Staged(RECORDS))
    await loans.commit(item(1), {(TOPIC, 0): 1}, staged=second)

    assert await loans.leftovers() == [first, second]


async def test_a_retried_commit_stages_its_records_once(pool: asyncpg.Pool, pg_schema: str) -> None:
    """A commit whose answer was lost is retried with the same row: no duplicate-key error."""
    w = writer(pool, pg_schema)
    staged = Staged(RECORDS)
    await w.commit(item(0), {(TOPIC, 0): 0}, staged=staged)
    await w.commit(item(0), {(TOPIC, 0): 0}, staged=staged)

    assert await w.leftovers() == [staged]
