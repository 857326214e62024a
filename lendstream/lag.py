"""Consumer lag per group/topic/partition, in messages and in seconds (contract §7).

One code path serves `lendstream lag` (no worker needed) and the worker's `/metrics`
(`lendstream.observability`):

- **end**: the partition's high watermark, from a Fetch response (`kafka.high_watermarks`),
  never from ListOffsets, which is wrong on the embedded broker after a batched produce. No
  broker-specific path: on Apache Kafka the two agree.
- **committed**: the group's committed offset in Kafka (the next offset it will read), asked with
  explicit partitions (the embedded broker rejects a group-wide OffsetFetch).
- **processed**: for the worker's own group, the next offset after what a projection durably
  wrote to PostgreSQL (`projection_positions`; the lowest over projections that track a
  partition). Faust commits to Kafka only every few seconds, after PostgreSQL, so the Kafka
  commit trails the truth by up to a commit interval; PostgreSQL is what "reflected in the read
  models" means, and what a restarted worker effectively resumes from (older messages are
  skipped as already written).
- **position** = the later of `committed` and `processed`. **lag** = `end - position`
  messages. **lag seconds** = the age (now - record timestamp) of the record at `position`, the
  oldest unprocessed message, read by fetching it. The timestamp is the topic's: CreateTime
  (producer clock) by default, LogAppendTime (broker clock) if the topic is so configured; a
  clock ahead of ours counts as 0.

Edge cases, by design:

- **idle or caught up** (position ≥ end): lag 0 and lag seconds 0, however old the last message.
- **committed offset unknown** (the group never committed on the partition and no projection
  recorded it): the worker reads such a partition from the log start (`auto.offset.reset=
  earliest`), so everything retained is unprocessed: lag = end - first retained offset, lag
  seconds = age of the first retained record; `committed`/`processed` are reported as unknown.
- **position below the log start** (retention deleted unread records): only records that still
  exist count.
- **no record between position and end** (transaction markers only): lag 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from lendstream import kafka
from lendstream.kafka import with_broker
from lendstream.pg import resolve_dsn
from lendstream.security import kafka_client_options
from lendstream.settings import Settings, SettingsError

Positions = Mapping[tuple[str, int], int]


class LagUnavailable(Exception):
    """Kafka (or a topic asked for) cannot be reached; the message is one line."""


@dataclass(frozen=True, slots=True)
class Target:
    """One partition of one group, with what is known of its position."""

    group: str
    topic: str
    partition: int
    committed: int | None = None
    processed: int | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def position(self) -> int | None:
        known = [p for p in (self.committed, self.processed) if p is not None]
        return max(known) if known else None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    processed: int | None
    end: int
    lag: int
    lag_seconds: float

    @property
    def position(self) -> int:
        return self.end - self.lag


def partition_lag(
    target: Target, end: int, head: kafka.RecordHead | None, now: float
) -> PartitionLag:
    """Lag of `target` given its partition's `end` and the first record at or after its
    position (`head`; the first retained record when the position is unknown). Pure."""
    position = target.position
    if head is None or (position is not None and position >= end):
        lag, seconds = 0, 0.0
    else:
        lag = max(end - max(head.offset, position or 0), 0)
        seconds = _age(head.timestamp_ms, now) if lag else 0.0
    return PartitionLag(
        target.group, target.topic, target.partition, target.committed, target.processed,
        end, lag, seconds,
    )  # fmt: skip


def _age(timestamp_ms: int, now: float) -> float:
    if timestamp_ms < 0:
        return math.nan  # a record without a timestamp: the age is unknown
    return max(now - timestamp_ms / 1000.0, 0.0)


async def measure(
    bootstrap: str | list[str],
    targets: Sequence[Target],
    client_options: Mapping[str, Any] | None = None,
) -> list[PartitionLag]:
    """Lag of every target: one high-watermark fetch for all partitions, then one fetch of
    the oldest unprocessed record of each lagging partition. `client_options`: TLS/SASL
    (`lendstream.security.kafka_client_options`)."""
    tps = list(dict.fromkeys(t.tp for t in targets))
    lower: dict[TopicPartition, int] = {}
    for t in targets:
        if t.position is not None:
            lower[t.tp] = min(lower.get(t.tp, t.position), t.position)
    ends = await kafka.high_watermarks(bootstrap, tps, lower, client_options=client_options)
    wanted = [
        (t.tp, t.position or 0) for t in targets if t.position is None or t.position < ends[t.tp]
    ]
    heads = await _heads(bootstrap, wanted, client_options)
    now = time.time()
    return [partition_lag(t, ends[t.tp], heads.get((t.tp, t.position or 0)), now) for t in targets]


async def _heads(
    bootstrap: str | list[str],
    wanted: Iterable[tuple[TopicPartition, int]],
    client_options: Mapping[str, Any] | None,
) -> dict[tuple[TopicPartition, int], kafka.RecordHead | None]:
    """First records at (partition, offset) pairs; a partition asked at two offsets (two
    groups) takes one fetch session per offset."""
    rounds: list[dict[TopicPartition, int]] = []
    for tp, offset in dict.fromkeys(wanted):
        free = next((r for r in rounds if tp not in r), None)
        if free is None:
            rounds.append(free := {})
        free[tp] = offset
    found: dict[tuple[TopicPartition, int], kafka.RecordHead | None] = {}
    for offsets in rounds:
        heads = await kafka.first_records_from(bootstrap, offsets, client_options=client_options)
        for tp, head in heads.items():
            found[(tp, offsets[tp])] = head
    return found


async def group_targets(
    admin: AIOKafkaAdminClient,
    group: str,
    topics: Iterable[str],
    processed: Positions | None = None,
) -> list[Target]:
    """Every partition of `topics` for `group`, with its committed offset (explicit
    partitions: the embedded broker needs them) and its processed position, if known."""
    names = sorted(set(topics))
    if not names:
        return []
    tps = [
        TopicPartition(meta["topic"], part["partition"])
        for meta in await admin.describe_topics(names)
        for part in meta["partitions"]
    ]
    committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    processed = processed or {}
    return [
        Target(
            group, tp.topic, tp.partition,
            committed=_known(committed.get(tp)),
            processed=processed[(tp.topic, tp.partition)] + 1
            if (tp.topic, tp.partition) in processed else None,
        )
        for tp in sorted(tps)
    ]  # fmt: skip


def _known(meta: object) -> int | None:
    offset = getattr(meta, "offset", -1)
    return int(offset) if offset is not None and offset >= 0 else None


async def projection_positions(dsn: str, schema: str) -> dict[tuple[str, int], int]:
    """`read_positions` over a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await read_positions(conn, schema)
    finally:
        await conn.close()


async def read_positions(
    conn: asyncpg.Connection | asyncpg.Pool, schema: str
) -> dict[tuple[str, int], int]:
    """The last offset the projections durably wrote, per (topic, partition): the lowest over
    the projections tracking a partition (a message counts as processed once every projection
    has it). Empty when the schema has no positions table yet."""
    exists = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".projection_positions')
    if not exists:
        return {}
    rows = await conn.fetch(
        f'SELECT topic, partition, min("offset") AS "offset" '
        f'FROM "{schema}".projection_positions GROUP BY topic, partition'
    )
    return {(r["topic"], r["partition"]): int(r["offset"]) for r in rows}


async def collect_lag(
    settings: Settings,
    groups: Sequence[str],
    processed: Mapping[str, Positions] | None = None,
    topics: Sequence[str] = (),
) -> list[PartitionLag]:
    """Lag of each group on every topic it committed on, has processed positions for, or is
    named in `topics`. Needs no worker. Raises `LagUnavailable` (one line) when Kafka does not
    answer or a named topic does not exist."""
    bootstrap = settings.bootstrap_servers
    options = kafka_client_options(settings)
    try:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=10_000, **options
        )
        await admin.start()
    except (KafkaError, OSError) as exc:
        raise LagUnavailable(f"Kafka unreachable at {settings.kafka}: {exc}") from None
    try:
        existing = {t for t in await admin.list_topics() if not t.startswith("__")}
        missing = sorted(set(topics) - existing)
        if missing:
            raise LagUnavailable(f"no such topic: {', '.join(missing)}")
        targets: list[Target] = []
        for group in groups:
            mine = (processed or {}).get(group, {})
            candidates = await group_targets(admin, group, existing, mine)
            keep = {t.topic for t in candidates if t.position is not None} | set(topics)
            targets += [t for t in candidates if t.topic in keep]
        return await measure(bootstrap, targets, options)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise LagUnavailable(f"Kafka did not answer: {type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


# --- presentation ----------------------------------------------------------------------------

COLUMNS = ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "PROCESSED", "END", "LAG", "LAG_SECONDS")


def format_table(rows: Sequence[PartitionLag]) -> str:
    """A fixed-width table, one line per partition, then one total line per group/topic."""
    if not rows:
        return "no committed offsets or processed positions found for the group(s)"
    lines = [COLUMNS]
    for (group, topic), part in _by_group_topic(rows).items():
        for r in part:
            lines.append((group, topic, str(r.partition), _opt(r.committed), _opt(r.processed),
                          str(r.end), str(r.lag), _seconds(r.lag_seconds)))  # fmt: skip
        if len(part) > 1:
            oldest = max(
                (r.lag_seconds for r in part if not math.isnan(r.lag_seconds)), default=0.0
            )
            lines.append((group, topic, "total", "", "", "", str(sum(r.lag for r in part)),
                          _seconds(oldest)))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5, 6, 7}
    return "\n".join(
        "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in lines
    )  # fmt: skip


def _by_group_topic(rows: Sequence[PartitionLag]) -> dict[tuple[str, str], list[PartitionLag]]:
    grouped: dict[tuple[str, str], list[PartitionLag]] = {}
    for r in sorted(rows, key=lambda r: (r.group, r.topic, r.partition)):
        grouped.setdefault((r.group, r.topic), []).append(r)
    return grouped


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float) -> str:
    return "?" if math.isnan(value) else f"{value:.1f}"


def to_json(rows: Sequence[PartitionLag], at: datetime | None = None) -> str:
    """One JSON object: the time of measurement and one item per partition (NaN → null)."""
    items = []
    for r in sorted(rows, key=lambda r: (r.group, r.topic, r.partition)):
        item = asdict(r)
        item["lag_seconds"] = None if math.isnan(r.lag_seconds) else round(r.lag_seconds, 3)
        items.append(item)
    at = at or datetime.now(UTC)
    return orjson.dumps({"at": at.isoformat(), "partitions": items}).decode()


# --- the command -----------------------------------------------------------------------------


def run_command(
    settings: Settings,
    groups: Sequence[str],
    topics: Sequence[str],
    as_json: bool,
    watch: float | None,
    app_group: str,
) -> int:
    """`lendstream lag`: print once, or every `watch` seconds until interrupted.

    The broker is `LENDSTREAM_KAFKA`, or the one `lendstream dev` runs here. PostgreSQL's
    processed positions are used for `app_group` when there is a database (`LENDSTREAM_PG_DSN`
    or `dev`'s); otherwise (or when PostgreSQL fails) lag is from Kafka commits, and a note on
    stderr says so.
    """
    settings = with_broker(settings)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # not --verbose
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # we report failures once
    while True:
        rows, note = asyncio.run(_measure_for_command(settings, groups, topics, app_group))
        if note:
            print(f"lendstream lag: {note}", file=sys.stderr, flush=True)
        if as_json:
            text = to_json(rows)
        else:
            text = format_table(rows)
            if watch is not None:
                stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                clear = CLEAR if sys.stdout.isatty() else "\n"
                text = f"{clear}{stamp}, every {watch:g}s (Ctrl-C stops)\n{text}"
        print(text, flush=True)
        if watch is None:
            return 0
        time.sleep(watch)


CLEAR = "\x1b[H\x1b[2J"


async def _measure_for_command(
    settings: Settings, groups: Sequence[str], topics: Sequence[str], app_group: str
) -> tuple[list[PartitionLag], str]:
    processed: dict[str, Positions] = {}
    note = ""
    if app_group in groups:
        try:
            dsn = resolve_dsn(settings)
        except SettingsError as exc:
            note = f"PROCESSED unknown ({exc}); lag is from Kafka commits"
        else:
            try:
                processed[app_group] = await projection_positions(dsn, settings.pg_schema)
            except Exception as exc:  # PostgreSQL is optional here: fall back to Kafka, say so
                note = f"PROCESSED unknown: PostgreSQL: {type(exc).__name__}: {exc}"
    return await collect_lag(settings, groups, processed, topics), note
