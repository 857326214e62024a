"""The `outbox` table: the records of a committed batch, until Kafka has them.

A processor's fold decides records to send (saga steps, treasury commands and answers, customer
notifications). Some of those decisions depend on processing time and on how the partitions
of a batch interleave, so running a batch again after a crash can decide differently. Records
of a batch that was never committed must therefore never reach Kafka: they are written here in
the batch's own transaction (`stage`), sent after the commit, and deleted when acknowledged
(`delete`). What a crash leaves here between the commit and the send is read back by
`leftovers` and sent again (duplicates downstream, by event id, never a second fact).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

#: (topic, key, value, partition or None): one record to produce.
Record = tuple[str, bytes, bytes, int | None]


@dataclass(frozen=True, slots=True)
class Staged:
    """One batch's records, under the id of their `outbox` row."""

    records: Sequence[Record]
    id: uuid.UUID = field(default_factory=uuid.uuid4)


async def stage(conn: asyncpg.Connection, schema: str, projection: str, staged: Staged) -> None:
    """Insert `staged` as one row (call inside the batch's transaction)."""
    topics, keys, values, partitions = (list(c) for c in zip(*staged.records, strict=True))
    await conn.execute(
        f'INSERT INTO "{schema}".outbox (id, projection, topics, keys, "values", partitions) '
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",  # a commit retried
        staged.id, projection, topics, keys, values, partitions,
    )  # fmt: skip


async def delete(pool: asyncpg.Pool, schema: str, ids: Sequence[uuid.UUID]) -> None:
    await pool.execute(f'DELETE FROM "{schema}".outbox WHERE id = ANY($1::uuid[])', list(ids))


async def leftovers(pool: asyncpg.Pool, schema: str, projection: str) -> list[Staged]:
    """`projection`'s rows still here, oldest first."""
    rows = await pool.fetch(
        f'SELECT id, topics, keys, "values", partitions FROM "{schema}".outbox '
        "WHERE projection = $1 ORDER BY created_at, id",
        projection,
    )
    return [
        Staged(
            list(zip(r["topics"], r["keys"], r["values"], r["partitions"], strict=True)), r["id"]
        )
        for r in rows
    ]
