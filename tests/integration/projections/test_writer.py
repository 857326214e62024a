"""The checkpointing writer against a real PostgreSQL: positions and `skip_seen`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from lendstream.domain.sequencing import Position
from lendstream.metrics import Metrics
from lendstream.projections.writer import CheckpointedWriter, Item, stored_positions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
TOPIC = "loan-events"


def writer(
    pool: asyncpg.Pool, schema: str, skip_seen: bool, into: list[str]
) -> CheckpointedWriter[str]:
    async def apply(conn: asyncpg.Connection, payloads: Sequence[str]) -> None:
        into.extend(payloads)

    return CheckpointedWriter(pool, schema, "test", apply, Metrics(CollectorRegistry()), skip_seen)


def items(*offsets: int) -> list[Item[str]]:
    return [Item(Position(TOPIC, 0, o), f"m{o}") for o in offsets]


@pytest.mark.parametrize(
    ("skip_seen", "expected"),
    [(True, ["m3", "m4"]), (False, ["m1", "m2", "m3", "m4"])],
)
async def test_redelivered_items_are_dropped_only_with_skip_seen(
    pool: asyncpg.Pool, pg_schema: str, skip_seen: bool, expected: list[str]
) -> None:
    """A batch that starts with redelivered messages (at or below the stored position) keeps
    them unless `skip_seen`: the loan projection relies on that to store every state snapshot."""
    written: list[str] = []
    w = writer(pool, pg_schema, skip_seen, written)
    await w.commit(items(0, 1, 2), {(TOPIC, 0): 2})
    written.clear()

    await w.commit(items(1, 2, 3, 4), {(TOPIC, 0): 4})

    assert written == expected
    assert await stored_positions(pool, pg_schema, "test") == {(TOPIC, 0): 4}


async def test_positions_never_move_back(pool: asyncpg.Pool, pg_schema: str) -> None:
    w = writer(pool, pg_schema, skip_seen=False, into=[])
    await w.commit(items(5), {(TOPIC, 0): 5})
    await w.commit(items(3), {(TOPIC, 0): 3})
    assert await stored_positions(pool, pg_schema, "test") == {(TOPIC, 0): 5}
