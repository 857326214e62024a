"""`lendstream projections rebuild [NAME]`: rebuild the loan read models from the retained
topics into shadow tables, then swap them in atomically while the live worker keeps running.

1. **Shadow.** A schema `<schema>__rebuild` gets empty copies of `loan_summary`,
   `loan_history` and `customer_exposure` (`LIKE … INCLUDING ALL EXCLUDING INDEXES`); the live
   tables stay untouched and readable.
2. **Fold**, in rounds: group-less aiokafka consumers (one per fold process, below) read the
   loan processor's inputs from the start (`replay.Merge` orders them) and the live pure code
   folds them (`sequencing.handle`; `projections.loans.new_version` keeps the versions the live
   projection writes) — first up to the positions the live worker had stored when the rebuild
   started (`projection_positions`), then again up to its newer positions until the gap is
   small. The rebuild never reads past the live positions, so it is never ahead of the live tables.

   The shadow tables are empty and only the rebuild writes them, so it writes in bulk
   (`replay.ShadowRows`, built on the live pure functions `history_row`, `superseded`,
   `loan_row` and `exposure_deltas`): each batch COPYs the `loan_history` rows that the batch
   made final (superseded versions); the end of each round writes (one transaction per fold
   process, and one for the exposures) every changed loan's newest version (open in
   `loan_history`, and its `loan_summary` row) and the new `customer_exposure` totals of the
   customers it touched. The first round COPYs into the empty tables; a later round closes
   (UPDATE) the versions it supersedes and replaces (DELETE, then COPY) the summary and
   exposure rows it changed. So every round ends with the shadow tables exactly as the live
   writer would leave them at the positions reached. Why not hold
   everything until the swap: memory would grow with every version, and the swap transaction
   (which holds the live worker's position locks) would write the whole tables; this way memory
   holds one version per loan, and only the later rounds — the small gap to the live worker —
   touch rows already written. After the first round the live tables' indexes and constraints
   are built under their live names (one sort each instead of an insert per row).

   The fold is the rebuild's bottleneck (CPU), so it runs in `LENDSTREAM_REBUILD_WORKERS`
   processes (`ProcessFolds`, default 2): each folds the partition numbers of its own (a
   loan's messages all sit in one) with its own consumer and connection, and writes and
   commits its loans' history and summaries. A customer's loans may sit in any partition, so
   each returns its exposure totals per round, and this process writes their sum
   (`replay.ExposureSum`). The shadow tables are the rebuild's alone until the swap, so
   several writers change nothing of the above.
3. **Swap**, in one transaction: lock the live worker's position rows (`FOR UPDATE`: its next
   commit waits), fold the last increment up to exactly those positions (fold processes
   commit their part before the swap goes on), lock the views bound to the tables and the
   tables themselves (`ACCESS EXCLUSIVE`: readers wait, they do not fail), rename the live
   tables and their indexes away, move the shadow tables in under the live names with the
   live tables' grants, re-create the analysts' views (`analysts.recreate_views`), and drop
   the replaced tables. At the commit, the new tables
   reflect the same Kafka positions as the tables they replace.

Guarantee: a READ COMMITTED statement (PostgreSQL's default) sees either the old tables or the
new ones, complete — never a missing or empty table; a statement that arrives during the swap
waits for it. Limits: a REPEATABLE READ/SERIALIZABLE transaction that began before the swap and
first reads a swapped table after it sees the new table through its old snapshot (only the
rows committed before that snapshot, maybe none); time-dependent outcomes follow the records' Kafka
timestamps (see `replay`), so an event that the live worker parked and later declared dead by
`LENDSTREAM_PARK_DEADLINE`, or retried on wall-clock backoff, may fold differently; messages
already deleted by topic retention cannot be rebuilt: the rebuild refuses (`TruncatedInput`)
when an input partition no longer starts at offset 0, unless told `--from-retained` (the tables
then reflect only what is retained; a partition retention emptied is not waited for). A
rebuild that makes no progress for `LENDSTREAM_REBUILD_STALL_TIMEOUT` fails
(`RebuildStalled`). A failed rebuild leaves the live
tables as they were; the shadow schema is dropped at the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as MPConnection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from lendstream.analysts import recreate_views
from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Message, Policy
from lendstream.gc_tuning import tune_gc
from lendstream.kafka import group_less_consumer
from lendstream.projections.loans import (
    EXPOSURE_COLUMNS,
    HISTORY_COLUMNS,
    LOAN_COLUMNS,
    PROJECTION,
    close_versions_sql,
    columns,
)
from lendstream.projections.replay import (
    REBUILT_TABLES,
    SPECS,
    Close,
    ExposureRow,
    ExposureSum,
    Fold,
    HistoryRow,
    Merge,
    RoundEnd,
    ShadowRows,
    progress_line,
    to_message,
)
from lendstream.security import kafka_client_options
from lendstream.settings import Settings

BATCH = 5000
#: The swap starts once the live worker is at most this many messages ahead of the rebuild.
SWAP_GAP = 2000
FETCH_TIMEOUT_MS = 200
#: A fold process's silence is a stall only this much after its own stall deadline (which it
#: reports itself, with the partitions it waits for).
SILENCE_MARGIN_SECONDS = 30.0


class RebuildStalled(RuntimeError):
    """The rebuild made no progress: for `LENDSTREAM_REBUILD_STALL_TIMEOUT` the broker returned
    none of the messages it still needed, or, in the swap round, a fold process reported
    nothing for `SILENCE_MARGIN_SECONDS` longer."""


class TruncatedInput(RuntimeError):
    """Topic retention deleted the start of an input partition: a rebuild from what is retained
    would replace complete tables with partial ones."""


@dataclass
class Report:
    events: int
    seconds: float
    positions: dict[tuple[str, int], int]
    tables: tuple[str, ...] = REBUILT_TABLES

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    """Counts folded messages; `every_second` prints the progress line through `say`."""

    say: Callable[[str], None]
    total: int = 0
    done: int = 0
    phase: str = "fold"
    started: float = field(default_factory=time.monotonic)

    def step(self, count: int) -> None:
        self.done += count

    def show(self) -> None:
        self.say(progress_line(self.done, self.total, time.monotonic() - self.started, self.phase))

    async def every_second(self) -> None:
        """Print the progress line every second until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            self.show()


class Source:
    """The loan processor's input partitions, read from the start with a group-less consumer;
    messages are released (through `Merge`) only up to given target offsets."""

    def __init__(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], stall_timeout: float
    ) -> None:
        self.consumer = consumer
        self.tps = tps
        self.stall_timeout = stall_timeout
        self.merge = Merge()

    @classmethod
    async def from_start(
        cls, consumer: AIOKafkaConsumer, tps: list[TopicPartition], stall_timeout: float,
        from_retained: bool = False,
    ) -> Source:  # fmt: skip
        """`tps` assigned to `consumer` (whose metadata is loaded) and read from their start.
        Raises `TruncatedInput` if retention deleted the start of one, unless `from_retained`:
        then it is read from its first retained offset (what came before counts as done, so a
        partition that retention emptied is not waited for)."""
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        if not from_retained:
            refuse_truncated(firsts)
        await consumer.seek_to_beginning(*tps)
        source = cls(consumer, tps, stall_timeout)
        source.merge.done.update({tp: first - 1 for tp, first in firsts.items() if first > 0})
        return source

    async def read_to(
        self, targets: Mapping[TopicPartition, int], batch: int = BATCH
    ) -> AsyncIterator[list[Message]]:
        """Yield lists of messages, in merge order, until every partition reached its
        (inclusive) target offset. Raises `RebuildStalled` when no fetch returns a message for
        `stall_timeout` seconds before that."""
        pending: list[Message] = []
        last_records = time.monotonic()
        while not self.merge.complete(targets):
            self._pause_beyond(targets)
            fetched = await self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=batch)
            if any(fetched.values()):
                last_records = time.monotonic()
            elif time.monotonic() - last_records > self.stall_timeout:
                raise RebuildStalled(self._stalled(targets))
            for tp, records in fetched.items():
                self.merge.add(tp, [to_message(r) for r in records])
            pending.extend(self.merge.release(targets))
            while len(pending) >= batch:
                yield pending[:batch]
                pending = pending[batch:]
        if pending:
            yield pending

    def _stalled(self, targets: Mapping[TopicPartition, int]) -> str:
        waiting = []
        for tp in self.tps:
            fetched = self._fetched_to(tp)
            if fetched < targets.get(tp, -1):
                waiting.append(f"{tp.topic}[{tp.partition}] read to offset {fetched}, "
                               f"needs {targets[tp]}")  # fmt: skip
        return (
            f"no messages from the broker for {self.stall_timeout:g} s "
            f"(LENDSTREAM_REBUILD_STALL_TIMEOUT): {'; '.join(waiting)}. The live worker's "
            "positions lie past what the broker returns: was a topic deleted and recreated, or "
            "is a partition's leader unreachable?"
        )

    def _fetched_to(self, tp: TopicPartition) -> int:
        """The last offset of `tp` fetched: buffered, or already released."""
        done = self.merge.done.get(tp, -1)
        buffer = self.merge.buffers.get(tp)
        return max(buffer[-1].position.offset, done) if buffer else done

    def _pause_beyond(self, targets: Mapping[TopicPartition, int]) -> None:
        """Stop fetching partitions whose buffer already reaches their target."""
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        for tp in self.tps:
            reached = self._fetched_to(tp) >= targets.get(tp, -1)
            (pause if reached else resume).append(tp)
        self.consumer.pause(*pause)
        self.consumer.resume(*resume)


class Folder:
    """Folds some of the input partitions into the shadow tables: the history and summaries of
    their loans (a loan's messages all sit in one partition number). A customer's loans may sit
    in any partition, so a round returns this folder's exposure totals of the customers its
    loans touched, for `ExposureSum`, instead of writing them."""

    def __init__(self, settings: Settings, source: Source, step: Callable[[int], None]) -> None:
        self.source = source
        self.step = step
        policy = Policy(backoff=settings.retry_backoff, park_deadline=settings.park_deadline)
        self.fold = Fold(evolve, policy)
        self.rows = ShadowRows()
        self.writer = ShadowWriter(settings.pg_schema, shadow_schema(settings.pg_schema))

    async def round(
        self, conn: asyncpg.Connection, targets: Mapping[TopicPartition, int]
    ) -> list[ExposureRow]:
        async for messages in self.source.read_to(targets):
            history, closes = self.rows.add(self.fold.apply(messages))
            await self.writer.write_batch(conn, history, closes)
            self.step(len(messages))
        end = self.rows.end_round()
        await self.writer.write_round(conn, RoundEnd(end.history, end.summaries, []))
        return end.exposures


class Folds(Protocol):
    """The folders of a rebuild: started on the input partitions, then run round by round."""

    async def start(self, tps: list[TopicPartition]) -> None: ...

    async def round(
        self, conn: asyncpg.Connection, targets: Mapping[TopicPartition, int], swap: bool = False
    ) -> list[list[ExposureRow]]: ...

    @property
    def done(self) -> Mapping[TopicPartition, int]: ...

    async def stop(self, kill: bool = False) -> None: ...


class LocalFolds:
    """One `Folder` over every partition, in the rebuild's process, with its consumer."""

    def __init__(self, rebuild: Rebuild, consumer: AIOKafkaConsumer) -> None:
        self.rebuild = rebuild
        self.consumer = consumer
        self.folder: Folder | None = None

    async def start(self, tps: list[TopicPartition]) -> None:
        rebuild = self.rebuild
        source = await Source.from_start(
            self.consumer, tps, rebuild.settings.rebuild_stall_timeout, rebuild.from_retained
        )
        self.folder = Folder(rebuild.settings, source, rebuild.progress.step)

    async def round(
        self, conn: asyncpg.Connection, targets: Mapping[TopicPartition, int], swap: bool = False
    ) -> list[list[ExposureRow]]:
        assert self.folder is not None
        return [await self.folder.round(conn, targets)]

    @property
    def done(self) -> Mapping[TopicPartition, int]:
        return self.folder.source.merge.done if self.folder is not None else {}

    async def stop(self, kill: bool = False) -> None:
        pass


class ProcessFolds:
    """Child processes (spawned), at most `workers`, each a `Folder` over a share of the
    partition numbers (the i-th of every `count`), with its own consumer and PostgreSQL
    connection: the fold, the rebuild's bottleneck, runs on several cores. Each child writes
    and commits its own rows; a failed or dead child fails the rebuild (its traceback in the
    error), and then every child is killed at once."""

    def __init__(self, rebuild: Rebuild, bootstrap: list[str], workers: int) -> None:
        self.rebuild = rebuild
        self.bootstrap = bootstrap
        self.workers = workers
        self.children: list[tuple[BaseProcess, MPConnection]] = []
        self._done: dict[TopicPartition, int] = {}
        # Pipe reads and joins block a thread each: never queue them behind each other.
        self.threads = ThreadPoolExecutor(2 * workers + 1, thread_name_prefix="rebuild-fold")

    async def start(self, tps: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in tps})
        count = min(self.workers, len(numbers))
        context = multiprocessing.get_context("spawn")  # no fork of a running event loop
        rebuild = self.rebuild
        for index in range(count):
            mine = set(numbers[index::count])
            ours, theirs = context.Pipe()
            args = (rebuild.settings, rebuild.dsn, self.bootstrap,
                    [tp for tp in tps if tp.partition in mine], theirs,
                    rebuild.from_retained)  # fmt: skip
            child = context.Process(target=fold_process, args=args, daemon=True,
                                    name=f"rebuild-fold-{index}")  # fmt: skip
            try:
                child.start()
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self.children.append((child, ours))
        await self._all("ready")

    async def round(
        self, conn: asyncpg.Connection, targets: Mapping[TopicPartition, int], swap: bool = False
    ) -> list[list[ExposureRow]]:
        """One round in every child. In the swap round (the live worker's position locks held,
        a small increment to fold) a child that reports nothing for the stall timeout plus
        `SILENCE_MARGIN_SECONDS` fails the rebuild: a hung child must not hold the locks. In
        other rounds a child may be silent while it writes a round's end (a first round's
        COPY of every loan can take minutes); its own stall timeout covers its broker."""
        for child, pipe in self.children:
            try:
                pipe.send(("round", dict(targets)))
            except OSError:  # it died between rounds
                raise _exited(child) from None
        silence = self.rebuild.settings.rebuild_stall_timeout + SILENCE_MARGIN_SECONDS
        replies = await self._all("done", silence if swap else None)
        for _, done in replies:
            self._done.update(done)
        return [exposures for exposures, _ in replies]

    @property
    def done(self) -> Mapping[TopicPartition, int]:
        return self._done

    async def _all(self, expected: str, silence: float | None = None) -> list[Any]:
        """Every child's `expected` reply; the first failure is raised at once."""
        tasks = [
            asyncio.ensure_future(self._receive(n, expected, silence))
            for n in range(len(self.children))
        ]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # the others, after a failure (their threads end with the child)

    async def _receive(self, index: int, expected: str, silence: float | None = None) -> Any:
        """Wait for child `index`'s `expected` reply, counting its progress on the way; with
        `silence`, raise `RebuildStalled` if it sends nothing for that many seconds."""
        child, pipe = self.children[index]
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await loop.run_in_executor(self.threads, _receive_within, pipe, silence)
            except (EOFError, OSError):  # it died: the pipe is closed or reset
                raise _exited(child) from None
            if reply is None:
                raise RebuildStalled(f"{child.name} (pid {child.pid}) reported nothing for "
                                     f"{silence:g} s")  # fmt: skip
            kind, *body = reply
            if kind == "step":
                self.rebuild.progress.step(body[0])
            elif kind == "failed":  # a known failure, raised again here as itself
                raise KNOWN_FAILURES[body[0]](f"{child.name}: {body[1]}")
            elif kind == "error":
                raise RuntimeError(f"{child.name} failed:\n{body[0]}")
            elif kind == expected:
                return body[0] if len(body) == 1 else tuple(body)

    async def stop(self, kill: bool = False) -> None:
        """Stop every child: ask, and kill what has not stopped after `STOP_SECONDS`; with
        `kill` (the rebuild failed: a child may be mid-round), kill at once."""
        for child, pipe in self.children:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
            if kill and child.is_alive():
                child.kill()
        loop = asyncio.get_running_loop()
        joins = [loop.run_in_executor(self.threads, child.join, STOP_SECONDS)
                 for child, _ in self.children]  # fmt: skip
        await asyncio.gather(*joins)
        for child, pipe in self.children:
            if child.is_alive():
                child.kill()
                await loop.run_in_executor(self.threads, child.join)
            pipe.close()
        self.children = []
        self.threads.shutdown(wait=False, cancel_futures=True)


#: How long a fold process may take to stop before it is killed.
STOP_SECONDS = 10.0


def _receive_within(pipe: MPConnection, seconds: float | None) -> Any:
    """The next message on `pipe`, or None if none comes within `seconds` (None: no limit)."""
    return pipe.recv() if pipe.poll(seconds) else None


def _exited(child: BaseProcess) -> RuntimeError:
    return RuntimeError(f"{child.name} exited ({child.exitcode})")


#: The errors a fold process reports by name (`("failed", name, message)`), raised again in
#: the rebuild's process as themselves: the CLI shows them in one line.
KNOWN_FAILURES: dict[str, type[RuntimeError]] = {
    "RebuildStalled": RebuildStalled,
    "TruncatedInput": TruncatedInput,
}


def fold_process(
    settings: Settings, dsn: str, bootstrap: list[str], tps: list[TopicPartition],
    pipe: MPConnection, from_retained: bool = False,
) -> None:  # fmt: skip
    """A `ProcessFolds` child: folds the input partitions `tps` on the commands that arrive on
    `pipe` (`("round", targets)`, `("stop",)`), replying `("ready", None)`, then `("step", n)`
    per batch and `("done", exposures, positions)` per round, or `("failed", name, message)`
    (one of `KNOWN_FAILURES`) or `("error", traceback)`. Its Kafka client options are
    `kafka_client_options(settings)` (an SSL context cannot be sent to a process)."""
    tune_gc()
    try:
        asyncio.run(_fold_partitions(settings, dsn, bootstrap, tps, pipe, from_retained))
    except (RebuildStalled, TruncatedInput) as known:
        with contextlib.suppress(OSError):
            pipe.send(("failed", type(known).__name__, str(known)))
    except BaseException:
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))


async def _fold_partitions(
    settings: Settings, dsn: str, bootstrap: list[str], tps: list[TopicPartition],
    pipe: MPConnection, from_retained: bool,
) -> None:  # fmt: skip
    consumer = group_less_consumer(bootstrap, kafka_client_options(settings))
    await consumer.start()
    conn: asyncpg.Connection | None = None
    try:
        conn = await asyncpg.connect(dsn)
        await consumer.topics()  # loads the cluster metadata
        source = await Source.from_start(
            consumer, tps, settings.rebuild_stall_timeout, from_retained
        )
        folder = Folder(settings, source, lambda n: pipe.send(("step", n)))
        pipe.send(("ready", None))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command[0] == "stop":
                return
            targets = {tp: end for tp, end in command[1].items() if tp in tps}
            exposures = await folder.round(conn, targets)
            pipe.send(("done", exposures, dict(folder.source.merge.done)))
    finally:
        if conn is not None:
            await conn.close()
        await consumer.stop()


def shadow_schema(schema: str) -> str:
    """The schema a rebuild of `schema`'s tables builds its shadow tables in."""
    return f"{schema}__rebuild"


class Rebuild:
    """One rebuild of the loan projection in `schema`."""

    def __init__(
        self, settings: Settings, dsn: str, say: Callable[[str], None], from_retained: bool = False
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.from_retained = from_retained  # rebuild even if retention deleted records
        self.schema = settings.pg_schema
        self.shadow = shadow_schema(self.schema)
        self.progress = Progress(say)
        self.writer = ShadowWriter(self.schema, self.shadow)  # the schema, indexes, exposures
        self.exposures = ExposureSum()

    async def run(self, consumer: AIOKafkaConsumer, bootstrap: list[str]) -> Report:
        """Rebuild, folding in this process with `consumer`, or, with
        `LENDSTREAM_REBUILD_WORKERS` > 1, in that many child processes on `bootstrap`."""
        conn = await asyncpg.connect(self.dsn)
        ticker = asyncio.create_task(self.progress.every_second())
        workers = self.settings.rebuild_workers
        folds: Folds = (
            ProcessFolds(self, bootstrap, workers) if workers > 1 else LocalFolds(self, consumer)
        )
        failed = True
        try:
            await self.writer.create(conn)
            await consumer.topics()  # loads the cluster metadata
            tps = partitions_of(consumer)
            await folds.start(tps)  # refuses truncated input (`Source.from_start`)
            targets = await self.live_targets(conn, tps)
            self.progress.total = _count(targets, {})
            await self.fold_to(conn, folds, targets)
            await self.writer.build_indexes(conn)
            self.progress.phase = "catch-up"
            while True:
                newer = await self.live_targets(conn, tps)
                gap = _count(newer, folds.done)
                if gap <= SWAP_GAP:
                    break
                self.progress.total += gap
                await self.fold_to(conn, folds, newer)
            self.progress.phase = "swap"
            positions = await self.swap(conn, folds, tps)
            self.progress.show()
            failed = False
            return Report(self.progress.done, time.monotonic() - self.progress.started, positions)
        finally:
            ticker.cancel()
            await folds.stop(kill=failed)
            await conn.close()

    async def live_targets(
        self, conn: asyncpg.Connection, tps: list[TopicPartition], lock: bool = False
    ) -> dict[TopicPartition, int]:
        """The live worker's stored positions (last offset written) for every input partition;
        with `lock`, under its position-row locks (its next commit waits for ours)."""
        rows = await conn.fetch(
            f'SELECT topic, partition, "offset" FROM "{self.schema}".projection_positions '
            "WHERE projection = $1 ORDER BY topic, partition" + (" FOR UPDATE" if lock else ""),
            PROJECTION,
        )
        stored = {TopicPartition(r["topic"], r["partition"]): r["offset"] for r in rows}
        return {tp: stored.get(tp, -1) for tp in tps}

    async def fold_to(
        self, conn: asyncpg.Connection, folds: Folds, targets: Mapping[TopicPartition, int],
        swap: bool = False,
    ) -> None:  # fmt: skip
        """One round: fold up to `targets`, writing as the module doc says (the folders write
        history and summaries; the exposures, which span partitions, are written here)."""
        exposures = self.exposures.add(await folds.round(conn, targets, swap))
        await self.writer.write_round(conn, RoundEnd([], [], exposures))

    async def swap(
        self, conn: asyncpg.Connection, folds: Folds, tps: list[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        async with conn.transaction():
            targets = await self.live_targets(conn, tps, lock=True)
            self.progress.total += _count(targets, folds.done)
            await self.fold_to(conn, folds, targets, swap=True)
            await self.swap_tables(conn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{self.shadow}" CASCADE')
        return {(tp.topic, tp.partition): offset for tp, offset in targets.items()}

    async def swap_tables(self, conn: asyncpg.Connection) -> None:
        """Inside the swap transaction: replace the live tables by the shadow ones."""
        live = f'"{self.schema}"'
        views = await dependent_views(conn, self.schema, REBUILT_TABLES)
        locked = [f'{live}."{v}"' for v in views] + [f"{live}.{t}" for t in REBUILT_TABLES]
        await conn.execute(f"LOCK TABLE {', '.join(locked)} IN ACCESS EXCLUSIVE MODE")
        for table in REBUILT_TABLES:
            grants = await table_grants(conn, self.schema, table)
            await rename_with_indexes(conn, self.schema, table, f"{table}__replaced")
            await conn.execute(f'ALTER TABLE "{self.shadow}".{table} SET SCHEMA {live}')
            for statement in grants:
                await conn.execute(statement.replace("{table}", f"{live}.{table}"))
        await recreate_views(conn, self.schema)
        for table in REBUILT_TABLES:
            await conn.execute(f"DROP TABLE {live}.{table}__replaced")


class ShadowWriter:
    """The shadow tables of the tables of schema `live`, in schema `shadow`, written in bulk
    (see the module doc, "Fold")."""

    def __init__(self, live: str, shadow: str) -> None:
        self.live = live
        self.shadow = shadow
        s = f'"{shadow}"'
        self.first_round = True  # the tables are still empty (and without indexes)
        self.sql_close = close_versions_sql(shadow)
        self.sql_drop_summaries = f"DELETE FROM {s}.loan_summary WHERE loan_id = ANY($1::text[])"
        self.sql_drop_exposures = (
            f"DELETE FROM {s}.customer_exposure e "
            "USING unnest($1::text[], $2::text[]) AS x(customer_id, currency) "
            "WHERE e.customer_id = x.customer_id AND e.currency = x.currency"
        )

    async def create(self, conn: asyncpg.Connection) -> None:
        """Empty copies of the live tables without their indexes (`build_indexes` adds them
        after the first round); drops what a failed rebuild left."""
        live, shadow = f'"{self.live}"', f'"{self.shadow}"'
        async with conn.transaction():  # all or nothing: no shadow schema without its tables
            await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE; CREATE SCHEMA {shadow}")
            for table in REBUILT_TABLES:
                like = f"LIKE {live}.{table} INCLUDING ALL EXCLUDING INDEXES"
                await conn.execute(f"CREATE TABLE {shadow}.{table} ({like})")

    async def write_batch(
        self, conn: asyncpg.Connection, history: list[HistoryRow], closes: list[Close]
    ) -> None:
        if history:
            await self._copy(conn, "loan_history", HISTORY_COLUMNS, history)
        if closes:
            await conn.execute(self.sql_close, *columns(closes))

    async def write_round(self, conn: asyncpg.Connection, end: RoundEnd) -> None:
        async with conn.transaction():
            if end.history:
                await self._copy(conn, "loan_history", HISTORY_COLUMNS, end.history)
            if end.summaries and not self.first_round:
                await conn.execute(self.sql_drop_summaries, [row[0] for row in end.summaries])
            if end.summaries:
                await self._copy(conn, "loan_summary", LOAN_COLUMNS, end.summaries)
            if end.exposures and not self.first_round:
                customers, currencies = [e[0] for e in end.exposures], [e[1] for e in end.exposures]
                await conn.execute(self.sql_drop_exposures, customers, currencies)
            if end.exposures:
                now = await conn.fetchval("SELECT now()")  # as the live writer's `now()`
                rows = [(*e, now) for e in end.exposures]
                await self._copy(conn, "customer_exposure", EXPOSURE_COLUMNS, rows)
        self.first_round = False

    async def _copy(
        self, conn: asyncpg.Connection, table: str, columns: str, rows: list[tuple[Any, ...]]
    ) -> None:
        await conn.copy_records_to_table(
            table, records=rows, columns=columns.split(", "), schema_name=self.shadow
        )

    async def build_indexes(self, conn: asyncpg.Connection) -> None:
        """Give the shadow tables the live tables' indexes and the constraints they back
        (primary keys), under the live names: after the swap the tables are defined as the
        live ones were, index names included (`LIKE … INCLUDING INDEXES` would name them
        after their columns)."""
        rows = await conn.fetch(
            "SELECT t.relname AS table_name, "
            "CASE WHEN k.oid IS NOT NULL THEN format('%I', k.conname) END AS conname, "
            "pg_get_constraintdef(k.oid) AS condef, "
            "pg_get_indexdef(x.indexrelid) AS indexdef, format('%I.%I', n.nspname, t.relname) "
            "AS live_name, format('%I.%I', $3::text, t.relname) AS shadow_name "
            "FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "LEFT JOIN pg_constraint k ON k.conindid = x.indexrelid AND k.conrelid = x.indrelid "
            "AND k.contype IN ('p', 'u', 'x') "
            "WHERE n.nspname = $1 AND t.relname = ANY($2::text[]) ORDER BY 1, x.indexrelid",
            self.live,
            list(REBUILT_TABLES),
            self.shadow,
        )
        async with conn.transaction():
            for row in rows:
                if row["conname"] is not None:
                    await conn.execute(
                        f"ALTER TABLE {row['shadow_name']} ADD CONSTRAINT {row['conname']} "
                        + row["condef"]
                    )
                    continue
                on_live, on_shadow = f" ON {row['live_name']} ", f" ON {row['shadow_name']} "
                if on_live not in row["indexdef"]:
                    raise RuntimeError(f"unexpected index definition: {row['indexdef']}")
                await conn.execute(row["indexdef"].replace(on_live, on_shadow, 1))
        for table in REBUILT_TABLES:  # bulk-loaded: plan the analysts' queries from day one
            await conn.execute(f'ANALYZE "{self.shadow}".{table}')


def partitions_of(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    """Every partition of the loan processor's input topics (as the broker's metadata has them)."""
    tps = []
    for topic in SPECS:
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            tps.append(TopicPartition(topic, partition))
    return tps


def refuse_truncated(first_offsets: Mapping[TopicPartition, int]) -> None:
    """Raise `TruncatedInput` if any input partition no longer starts at offset 0."""
    truncated = [f"{tp.topic}[{tp.partition}] starts at offset {first:,}"
                 for tp, first in sorted(first_offsets.items()) if first > 0]  # fmt: skip
    if truncated:
        raise TruncatedInput(
            "topic retention deleted the start of the input: " + "; ".join(truncated) + ". "
            "A rebuild would replace the tables with ones built from the retained messages only; "
            "`lendstream projections rebuild --from-retained` does that knowingly"
        )


def _count(targets: Mapping[TopicPartition, int], done: Mapping[TopicPartition, int]) -> int:
    """Messages between `done` and `targets` (both inclusive last offsets)."""
    return sum(max(end - done.get(tp, -1), 0) for tp, end in targets.items())


async def dependent_views(
    conn: asyncpg.Connection, schema: str, tables: tuple[str, ...]
) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT view_name FROM information_schema.view_table_usage "
        "WHERE table_schema = $1 AND table_name = ANY($2::text[]) ORDER BY view_name",
        schema,
        list(tables),
    )
    return [r["view_name"] for r in rows]


async def table_grants(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    """GRANT statements (with a `{table}` placeholder) re-creating the table's privileges for
    roles other than its owner."""
    rows = await conn.fetch(
        "SELECT a.privilege_type, a.grantee FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = $1::regclass AND a.grantee <> c.relowner",
        f'"{schema}".{table}',
    )
    statements = []
    for r in rows:
        role = "PUBLIC" if r["grantee"] == 0 else await _role_name(conn, r["grantee"])
        statements.append(f"GRANT {r['privilege_type']} ON {{table}} TO {role}")
    return statements


async def _role_name(conn: asyncpg.Connection, oid: int) -> str:
    return str(await conn.fetchval("SELECT quote_ident(pg_get_userbyid($1))", oid))


async def rename_with_indexes(conn: asyncpg.Connection, schema: str, table: str, to: str) -> None:
    """Rename a table and its indexes (`<table>…` -> `<to>…`), so that a table moved in under
    the old name can bring indexes with the old names."""
    indexes = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
        schema,
        table,
    )
    await conn.execute(f'ALTER TABLE "{schema}".{table} RENAME TO {to}')
    for row in indexes:
        name = row["indexname"]
        new = to + name[len(table) :] if name.startswith(table) else f"{name}__replaced"
        await conn.execute(f'ALTER INDEX "{schema}"."{name}" RENAME TO "{new}"')


async def rebuild(
    settings: Settings, dsn: str, bootstrap: list[str], client_options: Mapping[str, object],
    say: Callable[[str], None], from_retained: bool = False,
) -> Report:  # fmt: skip
    """Rebuild the loan projection's tables in `settings.pg_schema` (see the module doc).
    `client_options` are this process's; fold processes use `kafka_client_options(settings)`
    (an SSL context cannot be sent to another process). Raises `TruncatedInput` (unless
    `from_retained`) if retention deleted the start of an input partition, and
    `RebuildStalled` if it stops making progress; either leaves the live tables as they were."""
    consumer = group_less_consumer(bootstrap, client_options)
    await consumer.start()
    try:
        return await Rebuild(settings, dsn, say, from_retained).run(consumer, bootstrap)
    finally:
        await consumer.stop()


def run_rebuild(settings: Settings, dsn: str, bootstrap: list[str],
                client_options: Mapping[str, object], say: Callable[[str], None],
                from_retained: bool = False) -> Report:  # fmt: skip
    return asyncio.run(rebuild(settings, dsn, bootstrap, client_options, say, from_retained))
