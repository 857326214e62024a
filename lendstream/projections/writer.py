"""The batched, checkpointing PostgreSQL writer behind every projection.

One `commit` is one transaction holding a batch's rows, the records it decided to send (an
`outbox` row, sent by the caller after the commit) *and* the projection's Kafka positions
(`projection_positions`). The transaction locks the positions of the partitions in the batch.
With `skip_seen=True` it drops every item whose triggering message is at or below the stored
position, which makes any projection exactly-once as long as a redelivered message has the same
effects as the first time. A projection whose effects depend on the interleaving of several
partitions (the loan projection) sets `skip_seen=False` and makes each statement idempotent by
content instead; the positions then still record what was durably processed.

If PostgreSQL is unreachable, `commit` keeps retrying with capped exponential backoff and does
not return until the batch is durable: the caller does not ack (and Kafka does not advance)
past what is written. `healthy` tells the health endpoint whether the last attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from lendstream.domain.sequencing import Position
from lendstream.metrics import Metrics
from lendstream.projections import outbox

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0

#: Errors that mean "PostgreSQL is not there right now", as opposed to a bug in our SQL.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """Something to write, tagged with the message whose processing produced it."""

    trigger: Position
    payload: T


Apply = Callable[[asyncpg.Connection, Sequence[T]], Awaitable[None]]


class CheckpointedWriter(Generic[T]):
    """Writes one projection's batches exactly once per Kafka position."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        projection: str,
        apply: Apply[T],
        metrics: Metrics,
        skip_seen: bool = True,
    ) -> None:
        self.skip_seen = skip_seen
        self.pool = pool
        self.schema = schema
        self.projection = projection
        self.apply = apply
        self.metrics = metrics
        #: when a batch was last committed (monotonic): whether the worker is busy, for the
        #: stall watch
        self.committed_at: float | None = None
        self.healthy = True
        self.last_error: str | None = None

    async def commit(
        self,
        items: Sequence[Item[T]],
        ends: Mapping[tuple[str, int], int],
        timestamps: Sequence[float] = (),
        staged: outbox.Staged | None = None,
    ) -> int:
        """Write `items` and `staged` records, and advance positions to `ends` ((topic,
        partition) -> last offset). `timestamps` are the Kafka timestamps of the batch's
        messages, one each: the end-to-end histogram observes them, and the batch size
        histogram their number (the number of items if there are none: a projection may put a
        whole batch in one item).

        Returns how many items were new. Retries until PostgreSQL takes the batch.
        """
        started = time.perf_counter()
        written = await self._retrying(lambda: self._commit_once(items, ends, staged))
        size = len(timestamps) or len(items)
        self._committed(size, time.perf_counter() - started, timestamps)
        return written

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A read for the batch in progress, retried like `commit` while PostgreSQL is away."""
        return await self._retrying(lambda: self.pool.fetch(sql, *args))

    async def sent(self, staged: Sequence[outbox.Staged]) -> None:
        """Delete the `outbox` rows of `staged`: Kafka has acknowledged their records."""
        ids = [s.id for s in staged]
        await self._retrying(lambda: outbox.delete(self.pool, self.schema, ids))

    async def leftovers(self) -> list[outbox.Staged]:
        """This projection's committed records not known to be sent, oldest first."""
        return await self._retrying(
            lambda: outbox.leftovers(self.pool, self.schema, self.projection)
        )

    async def stored(self) -> dict[tuple[str, int], int]:
        """This projection's stored positions, retried like `commit` while PostgreSQL is away."""
        return await self._retrying(
            lambda: stored_positions(self.pool, self.schema, self.projection)
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[R]]) -> R:
        delay = RETRY_INITIAL_SECONDS
        while True:
            try:
                result = await attempt()
            except UNAVAILABLE as exc:
                self._unavailable(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            return result

    async def _commit_once(
        self,
        items: Sequence[Item[T]],
        ends: Mapping[tuple[str, int], int],
        staged: outbox.Staged | None,
    ) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await self._lock_positions(conn, ends)
            fresh = [item.payload for item in items if not self._seen(item, stored)]
            if fresh:
                await self.apply(conn, fresh)
            if staged is not None and staged.records:
                await outbox.stage(conn, self.schema, self.projection, staged)
            await conn.executemany(
                f'UPDATE "{self.schema}".projection_positions SET "offset" = $4, updated_at = now() '
                'WHERE projection = $1 AND topic = $2 AND partition = $3 AND "offset" < $4',
                [(self.projection, t, p, o) for (t, p), o in ends.items()],
            )
            return len(fresh)

    def _seen(self, item: Item[T], stored: Mapping[tuple[str, int], int]) -> bool:
        """Whether `item` is to be dropped as already written (only with `skip_seen`)."""
        if not self.skip_seen:
            return False
        trigger = item.trigger
        return trigger.offset <= stored.get((trigger.topic, trigger.partition), -1)

    async def _lock_positions(
        self, conn: asyncpg.Connection, ends: Mapping[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        keys = sorted(ends)
        topics = [t for t, _ in keys]
        partitions = [p for _, p in keys]
        await conn.execute(
            f'INSERT INTO "{self.schema}".projection_positions (projection, topic, partition, "offset") '
            "SELECT $1, t, p, -1 FROM unnest($2::text[], $3::int[]) AS u(t, p) "
            "ON CONFLICT DO NOTHING",
            self.projection,
            topics,
            partitions,
        )
        rows = await conn.fetch(
            f'SELECT topic, partition, "offset" FROM "{self.schema}".projection_positions '
            "WHERE projection = $1 AND (topic, partition) IN "
            "(SELECT * FROM unnest($2::text[], $3::int[])) "
            "ORDER BY topic, partition FOR UPDATE",
            self.projection,
            topics,
            partitions,
        )
        return {(r["topic"], r["partition"]): r["offset"] for r in rows}

    def _unavailable(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("PostgreSQL unavailable for %s, retrying: %s", self.projection, exc)
        self.healthy = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.pg_unavailable.labels(self.projection).inc()

    def _committed(self, size: int, seconds: float, timestamps: Sequence[float]) -> None:
        if not self.healthy:
            log.info("PostgreSQL is back for %s", self.projection)
        self.healthy = True
        self.last_error = None
        self.committed_at = time.monotonic()
        self.metrics.batch_size.labels(self.projection).observe(size)
        self.metrics.commit_seconds.labels(self.projection).observe(seconds)
        now = time.time()
        histogram = self.metrics.end_to_end.labels(self.projection)
        for appended in timestamps:
            histogram.observe(max(now - appended, 0.0))


async def stored_positions(
    pool: asyncpg.Pool, schema: str, projection: str
) -> dict[tuple[str, int], int]:
    """The last offset written per (topic, partition) for `projection`."""
    rows = await pool.fetch(
        f'SELECT topic, partition, "offset" FROM "{schema}".projection_positions '
        "WHERE projection = $1",
        projection,
    )
    return {(r["topic"], r["partition"]): r["offset"] for r in rows}
