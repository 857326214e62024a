"""CPU cost per event of the pure parts of the loan processor's batch, in-process: no broker,
no Faust. It replays what `agents/loans.py` does to a batch, phase by phase, on simulated
traffic, so the profile's percentages can be read as microseconds.

With `--postgres` it then writes the batches' outcomes to a fresh schema of an embedded
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
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Message, Position, receive
from lendstream.embedded import start_postgres
from lendstream.pg import drop_schema
from lendstream.projections.loans import StateSnapshot, make_apply, rows_for
from lendstream.projections.migrate import migrate
from lendstream.simulation import Simulation
from lendstream.tables import loans as loans_table
from lendstream.topics import BY_NAME
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


Payload = list[Any]  # what the agent hands the writer for one batch: outcomes, StateSnapshot


def run(raw: list[Raw], batch: int) -> tuple[dict[str, float], list[Payload]]:
    """Seconds per phase for all of `raw`, in batches as the agent forms them, and what each
    batch would write."""
    clock = Clock()
    table: dict[str, bytes] = {}
    offsets: dict[str, int] = {}
    payloads = [
        process(raw[start : start + batch], table, offsets, clock)
        for start in range(0, len(raw), batch)
    ]
    return clock.spent, payloads


def process(
    chunk: list[Raw], table: dict[str, bytes], offsets: dict[str, int], clock: Clock
) -> Payload:
    """One batch, as `LoanProcessor.process` does it, minus Faust and PostgreSQL."""
    now = datetime.now(UTC)
    with clock.phase("orjson.loads only (part of decode)"):
        for _, _, value in chunk:
            orjson.loads(value)
    with clock.phase("decode + validate (codec, pydantic)"):
        messages = [_message(topic, key, value, offsets) for topic, key, value in chunk]
    with clock.phase("table values decoded (per key)"):
        keys = dict.fromkeys(m.key for m in messages)
        loaded = {key: loans_table.decode(table.get(key)) for key in keys}
    states = dict(loaded)
    outcomes: list[Any] = []
    with clock.phase("fold (sequencing.receive + evolve)"):
        for m in messages:
            states[m.key], out = receive(states[m.key], m, evolve, now)
            outcomes.extend(out)
    snapshot = []
    with clock.phase("table values encoded (per changed key)"):
        for key, keyed in states.items():
            if keyed != loaded[key]:
                seq = loaded[key].seq + 1
                table[key] = loans_table.encode(replace(keyed, seq=seq))
                snapshot.append((key, seq, table[key]))
    with clock.phase("projection rows (rows_for)"):
        rows_for(outcomes, now)
    return [outcomes, StateSnapshot(snapshot)]


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


async def write_to_postgres(dsn: str, payloads: list[Payload], server_pid: int) -> dict[str, float]:
    """Seconds per statement kind for writing every batch with the projection's `apply`, the
    server's CPU seconds, and the `event_log` rows once more by COPY (for comparison)."""
    schema = "components"
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
                    await apply(timed, payload)
        clock.spent["server CPU (PostgreSQL processes)"] = (
            cpu_seconds(server_pid, with_children=True) - cpu_before
        )
        await copy_event_log(conn, schema, payloads, clock)
    finally:
        await drop_schema(dsn, schema)
        await conn.close()
    return clock.spent


def _message(topic: str, key: bytes, value: bytes, offsets: dict[str, int]) -> Message:
    offsets[topic] = offsets.get(topic, -1) + 1
    return Message(
        position=Position(topic, 0, offsets[topic]),
        key=key.decode(),
        timestamp=time.time(),
        decoded=BY_NAME[topic].decode(key, value),
        raw=value,
    )


EVENT_LOG_COLUMNS = ("event_id", "topic", "partition", "offset", "key", "type", "schema_version",
                     "occurred_at", "recorded_at", "loan_id", "correlation_id", "causation_id",
                     "data")  # fmt: skip
EVENT_LOG_TYPES = ("text", "text", "int", "bigint", "text", "text", "int", "timestamptz",
                   "timestamptz", "text", "text", "text", "jsonb")  # fmt: skip


async def copy_event_log(
    conn: asyncpg.Connection, schema: str, payloads: list[Payload], clock: Clock
) -> None:
    """The same `event_log` rows (new ids) written two other ways, one statement per batch:
    COPY into a temporary table then INSERT ... SELECT, and INSERT ... SELECT FROM unnest."""
    quoted = ", ".join(f'"{c}"' for c in EVENT_LOG_COLUMNS)
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(EVENT_LOG_TYPES, 1))
    unnest_sql = (
        f'INSERT INTO "{schema}".event_log ({quoted}) SELECT * FROM unnest({arrays}) '
        "ON CONFLICT DO NOTHING"
    )
    now = datetime.now(UTC)
    for payload in payloads:
        rows = rows_for(payload[0], now).event_log
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
        columns = list(zip(*[(f"unnest-{r[0]}", *r[1:]) for r in rows], strict=True))
        with clock.phase("event_log by unnest arrays (alternative)"):
            async with conn.transaction():
                await conn.execute(unnest_sql, *[list(c) for c in columns])


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
