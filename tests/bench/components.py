"""CPU cost per event of the pure parts of the loan processor's batch, in-process: no broker,
no Faust. It replays what `LoanProcessor.process` (`agents/loans.py`) does to a batch, phase by
phase, on simulated traffic, so the profile's percentages can be read as microseconds.

The phases call the worker's own code: `to_message` (decode + validate), `LoanProcessor.load`
(table values decoded, here from a dict standing in for the RocksDB table, PostgreSQL having no
newer state), `LoanProcessor.fold` (fold), `LoanProcessor.encode_changed` (table values
encoded), and `rows_for` (projection rows). The processor is built as
`app.create_app` builds it for the benchmark (settings defaults, `payout_saga` off: the
simulated traffic carries its payout events).

With `--postgres` it then writes the batches' `BatchRows` to a fresh schema of an embedded
PostgreSQL with the loan projection's own `apply`, one transaction per batch, timing each
statement (as the client sees it) and the server's CPU; and, for comparison, the `event_log`
rows of the same batches once more through COPY into a temporary table.

    python -m tests.bench.components [--events 100000] [--batch 2000] [--dau 2000] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson

from lendstream.agents.batch import to_message
from lendstream.agents.loans import SPECS, LoanProcessor
from lendstream.agents.payouts import Outbox
from lendstream.app import saga_policy
from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Policy
from lendstream.embedded import start_postgres
from lendstream.pg import drop_schema
from lendstream.projections.loans import EVENT_LOG_TYPES, BatchRows, columns, make_apply, rows_for
from lendstream.projections.migrate import migrate
from lendstream.settings import Settings
from lendstream.simulation import Simulation
from tests.bench.measure import cpu_seconds

Raw = tuple[str, bytes, bytes]


def traffic(events: int, dau: int, seed: int = 1) -> list[Raw]:
    return [
        (p.topic, p.key.encode(), orjson.dumps(p.value))
        for p in itertools.islice(Simulation(seed=seed, dau=dau), events)
    ]


class Clock:
    """Seconds spent per phase, summed over batches."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started


#: The phases of `process`, in order (the orjson line is part of the decode line).
PHASES = (
    "orjson.loads only (part of decode)",
    "decode + validate (codec, pydantic)",
    "table values decoded (per key)",
    "fold (handle_message: sequencing + evolve)",
    "table values encoded (per changed key)",
    "projection rows (rows_for)",
)


@dataclass
class Record:
    """The parts of a Kafka record that `to_message` reads."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float
    headers: Any = None


class Event:
    """The parts of a Faust event the processor reads (weak-referenceable, as `as_current`
    needs)."""

    def __init__(self, message: Record) -> None:
        self.message = message


class Table:
    """The `loans` table as `load_states` reads it (no partitions: one process, one dict)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


class NoNewerStates:
    """The writer as `LoanProcessor.load` queries it: PostgreSQL has no newer state."""

    async def fetch(self, sql: str, keys: list[str], seqs: list[int]) -> list[Any]:
        return []


async def _no_send(*args: Any) -> Any:  # pragma: no cover - nothing is sent here
    raise AssertionError("the components benchmark sends nothing")


def processor(table: Table) -> LoanProcessor:
    """A `LoanProcessor` as `app.create_app` builds it for the benchmark (settings defaults,
    `payout_saga` off), on `table`, with nothing behind its I/O."""
    settings = Settings(payout_saga=False, _env_file=None)  # type: ignore[call-arg]
    policy = Policy(backoff=settings.retry_backoff, park_deadline=settings.park_deadline)
    return LoanProcessor(
        cast(Any, table), cast(Any, NoNewerStates()), cast(Any, None), cast(Any, None),
        "components", evolve, policy, Outbox(_no_send), saga_policy(settings, policy),
    )  # fmt: skip


def records(raw: list[Raw]) -> list[Event]:
    """`raw` as consumed records of partition 0 of each topic (offsets from 0)."""
    offsets: dict[str, int] = {}
    events = []
    now = time.time()
    for topic, key, value in raw:
        offsets[topic] = offset = offsets.get(topic, -1) + 1
        events.append(Event(Record(topic, 0, offset, key, value, now)))
    return events


def run(raw: list[Raw], batch: int) -> tuple[dict[str, float], list[BatchRows]]:
    """Seconds per phase for all of `raw`, in batches as the agent forms them, and what each
    batch would write."""
    clock = Clock()
    table = Table()
    loans = processor(table)
    events = records(raw)

    async def batches() -> list[BatchRows]:
        return [
            await process(loans, table, events[start : start + batch], clock)
            for start in range(0, len(events), batch)
        ]

    payloads = asyncio.run(batches())
    return clock.spent, payloads


async def process(
    loans: LoanProcessor, table: Table, events: list[Event], clock: Clock
) -> BatchRows:
    """One batch, as `LoanProcessor.process` does it, minus Kafka, Faust and PostgreSQL."""
    now = datetime.now(UTC)
    with clock.phase(PHASES[0]):
        for event in events:
            orjson.loads(event.message.value)
    with clock.phase(PHASES[1]):
        messages = [to_message(cast(Any, event), SPECS) for event in events]
    last_event = {m.key: event for m, event in zip(messages, events, strict=True)}
    with clock.phase(PHASES[2]):
        loaded, stale_in_table = await loans.load(cast(Any, last_event))
    with clock.phase(PHASES[3]):
        folded, outcomes, _commands = await loans.fold(loaded, messages, now)
    with clock.phase(PHASES[4]):
        encoded, changed, saga_rows = await loans.encode_changed(
            loaded, folded, stale_in_table, cast(Any, last_event)
        )
    with clock.phase(PHASES[5]):
        rows = rows_for(outcomes, now)
    for key, value in encoded.items():  # the table write (`TableWriter`), not timed here
        table.data[key.encode()] = value
    return BatchRows(rows, changed, saga_rows)


_VERB = re.compile(r"^\s*(\w+)")
_TABLE = re.compile(r'"[^"]+"\.(\w+)')


class TimedConnection:
    """An asyncpg connection whose statements are timed by kind (`INSERT event_log`...)."""

    def __init__(self, conn: asyncpg.Connection, clock: Clock) -> None:
        self.conn, self.clock = conn, clock

    def _kind(self, sql: str, many: bool) -> str:
        verb, table = _VERB.match(sql), _TABLE.search(sql)
        kind = f"{verb.group(1).upper() if verb else '?'} {table.group(1) if table else '?'}"
        return kind + (" (executemany)" if many else "")

    async def execute(self, sql: str, *args: Any) -> Any:
        with self.clock.phase(self._kind(sql, False)):
            return await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, args: Any) -> Any:
        with self.clock.phase(self._kind(sql, True)):
            return await self.conn.executemany(sql, args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        with self.clock.phase(self._kind(sql, False)):
            return await self.conn.fetch(sql, *args)


async def write_to_postgres(
    dsn: str, payloads: Sequence[BatchRows], server_pid: int, schema: str = "components"
) -> dict[str, float]:
    """Seconds per statement kind for writing every batch with the projection's `apply`, the
    server's CPU seconds, and the `event_log` rows once more by COPY (for comparison). `schema`
    is created, and dropped at the end."""
    clock = Clock()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, schema)
        apply = make_apply(schema)
        timed = TimedConnection(conn, clock)
        cpu_before = cpu_seconds(server_pid, with_children=True)
        with clock.phase("all statements, one transaction per batch"):
            for payload in payloads:
                async with conn.transaction():
                    await apply(timed, [payload])
        clock.spent["server CPU (PostgreSQL processes)"] = (
            cpu_seconds(server_pid, with_children=True) - cpu_before
        )
        await copy_event_log(conn, schema, payloads, clock)
    finally:
        await conn.close()
        await drop_schema(dsn, schema)
    return clock.spent


EVENT_LOG_COLUMNS = ("event_id", "topic", "partition", "offset", "key", "type", "schema_version",
                     "occurred_at", "recorded_at", "loan_id", "correlation_id", "causation_id",
                     "data")  # fmt: skip


async def copy_event_log(
    conn: asyncpg.Connection, schema: str, payloads: Sequence[BatchRows], clock: Clock
) -> None:
    """The same `event_log` rows (new ids) written two other ways, one statement per batch:
    COPY into a temporary table then INSERT ... SELECT, and INSERT ... SELECT FROM unnest (the
    projection's way on 2026-11-24, between `executemany` and one JSON parameter)."""
    quoted = ", ".join(f'"{c}"' for c in EVENT_LOG_COLUMNS)
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(EVENT_LOG_TYPES, 1))
    unnest_sql = (
        f'INSERT INTO "{schema}".event_log ({quoted}) SELECT * FROM unnest({arrays}) '
        "ON CONFLICT DO NOTHING"
    )
    for payload in payloads:
        rows = payload.rows.event_log
        if not rows:
            continue
        copied = [(f"copy-{r[0]}", *r[1:]) for r in rows]
        with clock.phase("event_log by COPY + INSERT SELECT (alternative)"):
            async with conn.transaction():
                await conn.execute(
                    f'CREATE TEMP TABLE IF NOT EXISTS el (LIKE "{schema}".event_log) '
                    "ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table("el", records=copied, columns=EVENT_LOG_COLUMNS)
                await conn.execute(
                    f'INSERT INTO "{schema}".event_log SELECT * FROM el ON CONFLICT DO NOTHING'
                )
        arrays = columns([(f"unnest-{r[0]}", *r[1:]) for r in rows])
        with clock.phase("event_log by unnest arrays (alternative)"):
            async with conn.transaction():
                await conn.execute(unnest_sql, *arrays)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.components", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--dau", type=int, default=2_000)
    p.add_argument("--postgres", action="store_true", help="also time the PostgreSQL writes")
    args = p.parse_args(argv)
    raw = traffic(args.events, args.dau)
    spent, payloads = run(raw, args.batch)
    total = sum(v for k, v in spent.items() if not k.startswith("orjson"))
    print(f"{args.events:,} events, batches of {args.batch:,}, dau {args.dau:,}")
    _print(spent | {"all of the above (without the orjson line)": total}, len(raw))
    if args.postgres:
        with tempfile.TemporaryDirectory(prefix="components-") as root:
            pg = start_postgres(Path(root) / "pg", remove_on_stop=True)
            try:
                _print(asyncio.run(write_to_postgres(pg.dsn, payloads, pg.pid)), len(raw))
            finally:
                pg.stop()


def _print(spent: dict[str, float], events: int) -> None:
    print(f"\n{'phase':<52} {'us/event':>9} {'events/s alone':>15}")
    for phase, seconds in spent.items():
        per_event = seconds / events
        print(f"{phase:<52} {per_event * 1e6:9.1f} {1 / max(per_event, 1e-12):15,.0f}")


if __name__ == "__main__":
    main()
