"""The loan projection: outcomes of the loan processor -> `loan_summary`, `loan_history`,
`customer_exposure`, `event_log`, `dead_letters`, `ledger_entries`, `daily_payouts` and
`saga_instances` rows.

`rows_for` turns outcomes into row tuples without I/O; `apply` runs the statements inside the
writer's transaction.

Every statement is idempotent by *content*, not by Kafka position: after a crash the messages
of several partitions are redelivered in another interleaving, so the same message can have
other effects the second time (an event that was parked may now apply at once). So: events are
logged once by `event_id`; history rows are keyed by (loan, version); a summary only moves to a
higher version; exposure changes by the difference between the summary being written and the
one stored (read under a row lock), which is exact however often a batch is replayed and when
several workers touch one customer (daily payouts count a loan when its stored summary first
moves to paid out, the same way); ledger entries are keyed by the event's id; a saga row only
moves to a higher state `seq`; and a dead letter's status never moves back from a final state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from lendstream.domain.loans import ACTIVE, DISBURSED, Loan
from lendstream.domain.sequencing import (
    Applied,
    Dead,
    Discarded,
    Duplicate,
    Message,
    Outcome,
    Parked,
    Pending,
)
from lendstream.sagas.fanout import LedgerEntry, ledger_entries
from lendstream.sagas.payout import PayoutSaga
from lendstream.topics.codec import encode_event, storable
from lendstream.topics.envelope import Event

PROJECTION = "loans"

LOAN_COLUMNS = (
    "loan_id, customer_id, partner_id, currency, status, term_months, applied_amount_cents, "
    "approved_amount_cents, interest_rate_bps, total_due_cents, repaid_cents, outstanding_cents, "
    "applied_at, approved_at, paid_out_at, settled_at, closed_reason, version, updated_at"
)
#: Columns of a `history_row`, in order, and their types.
HISTORY_COLUMNS = LOAN_COLUMNS + ", valid_from, valid_to"
HISTORY_TYPES = (
    "text", "text", "text", "text", "text", "int", "bigint", "bigint", "int", "bigint", "bigint",
    "bigint", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "text", "int",
    "timestamptz", "timestamptz", "timestamptz",
)  # fmt: skip
#: Types of an `event_log_row`'s columns, in order.
EVENT_LOG_TYPES = (
    "text", "text", "int", "bigint", "text", "text", "int", "timestamptz", "timestamptz", "text",
    "text", "text", "jsonb",
)  # fmt: skip
#: Types of a `ledger_row`'s columns, in order.
LEDGER_TYPES = ("text", "text", "text", "text", "text", "bigint", "text", "timestamptz")
#: Columns of a `customer_exposure` row, in order.
EXPOSURE_COLUMNS = "customer_id, currency, active_loans, outstanding_cents, updated_at"


def loan_row(loan: Loan) -> tuple[Any, ...]:
    return (
        loan.loan_id,
        loan.customer_id,
        loan.partner_id,
        loan.currency,
        str(loan.status),
        loan.term_months,
        loan.applied_amount_cents,
        loan.approved_amount_cents,
        loan.interest_rate_bps,
        loan.total_due_cents,
        loan.repaid_cents,
        loan.outstanding_cents,
        loan.applied_at,
        loan.approved_at,
        loan.paid_out_at,
        loan.settled_at,
        loan.closed_reason,
        loan.version,
        loan.updated_at,
    )


def exposure(loan: Loan | None) -> tuple[int, int]:
    """A loan's contribution to its customer's exposure: (active loans, outstanding cents)."""
    if loan is None or loan.status not in ACTIVE:
        return 0, 0
    return 1, loan.outstanding_cents


@dataclass
class LoanRows:
    event_log: list[tuple[Any, ...]] = field(default_factory=list)
    versions: list[Loan] = field(default_factory=list)
    applied_ids: list[str] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    discarded: list[tuple[str, str]] = field(default_factory=list)  # (dead letter id, reason)
    ledger: list[LedgerEntry] = field(default_factory=list)
    count_payouts: bool = True  # add new payouts to `daily_payouts` (False: leave it alone)

    @property
    def summaries(self) -> list[Loan]:
        """The newest version of each loan in the batch."""
        latest: dict[str, Loan] = {}
        for loan in self.versions:
            latest[loan.loan_id] = loan
        return list(latest.values())


def event_log_row(event: Event, outcome: Applied[Loan], recorded_at: datetime) -> tuple[Any, ...]:
    pos = outcome.position
    data = event.data.model_dump_json()  # type: ignore[attr-defined]  # each event type has data
    return (
        event.event_id, pos.topic, pos.partition, pos.offset, event.key, event.type,
        event.schema_version, event.occurred_at, recorded_at, getattr(event, "loan_id", None),
        event.correlation_id, event.causation_id, data,
    )  # fmt: skip


#: Columns of a `dead_letters` row as `dead_letter_row` builds it, in order.
DEAD_LETTER_COLUMNS = (
    "id", "topic", "partition", "offset", "key", "event_id", "value", "headers", "error_class",
    "error", "status", "first_seen_at", "last_attempt_at", "attempts", "next_attempt_at",
    "replayed_value",
)  # fmt: skip


def dead_letter_row(
    pending: Pending,
    status: str,
    message: Message | None,
    now: datetime,
    replayed: Event | None = None,
) -> tuple[Any, ...]:
    pos = pending.position
    headers = (
        {storable(k): storable(v.decode("utf-8", "replace")) for k, v in message.headers}
        if message
        else {}
    )
    key = message.key if message else (pending.event.key if pending.event else None)
    return (
        pending.id, pos.topic, pos.partition, pos.offset, key, pending.event_id,
        message.raw if message else None, orjson.dumps(headers).decode(), pending.error_class,
        pending.error, status, pending.since, now, pending.attempts, pending.retry_at,
        encode_event(replayed) if replayed is not None else None,
    )  # fmt: skip


def _released_row(outcome: Applied[Loan] | Duplicate, now: datetime) -> tuple[Any, ...]:
    """The dead-letter row of a queued message that has now been applied (or was a duplicate)."""
    released = outcome.released
    assert released is not None
    released = replace(released, attempts=released.attempts + 1)  # the one that succeeded
    if released.replayed:
        return dead_letter_row(released, "replayed", None, now, outcome.event)
    return dead_letter_row(released, "released", None, now)


def new_version(outcome: Applied[Loan]) -> Loan | None:
    """The loan version an applied event makes (None: the event left the row as it was)."""
    before, after = outcome.before, outcome.after
    return after if before is None or after.version != before.version else None


def rows_for(
    outcomes: Sequence[Outcome[Loan]], now: datetime, into: LoanRows | None = None
) -> LoanRows:
    """Rows for a batch of outcomes, in order, added to `into` (new rows if None): a batch
    may be turned into rows piece by piece (no I/O)."""
    rows = LoanRows() if into is None else into
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            rows.event_log.append(event_log_row(outcome.event, outcome, now))
            rows.applied_ids.append(outcome.event.event_id)
            version = new_version(outcome)
            if version is not None:
                rows.versions.append(version)
            rows.ledger.extend(ledger_entries(outcome.event, outcome.before, outcome.after))
        if isinstance(outcome, Applied | Duplicate) and outcome.released is not None:
            rows.dead_letters.append(_released_row(outcome, now))
        elif isinstance(outcome, Parked | Dead):
            status = "dead" if isinstance(outcome, Dead) else "parked"
            rows.dead_letters.append(dead_letter_row(outcome.pending, status, outcome.message, now))
        elif isinstance(outcome, Discarded):
            rows.discarded.append((outcome.dead_letter_id, outcome.reason))
    return rows


#: Larger values are left out of `dead-letters` records (the read model keeps them whole).
MAX_RECORD_VALUE_BYTES = 64 * 1024


def history_row(loan: Loan, valid_to: datetime | None) -> tuple[Any, ...]:
    """The `loan_history` row of a version: valid from its `updated_at` until `valid_to` (None:
    the current version)."""
    return (*loan_row(loan), loan.updated_at, valid_to)


def superseded(loan: Loan) -> tuple[str, int]:
    """The (loan, version) that version `loan` closes, at its `updated_at`: the one before it."""
    return loan.loan_id, loan.version - 1


def history_rows(
    versions: Sequence[Loan],
) -> tuple[list[tuple[Any, ...]], list[tuple[str, int, datetime]]]:
    """The `loan_history` rows of a batch's versions, each closed (`valid_to`) where the batch
    holds the next version of its loan, and the (loan, version, valid_to) of the stored
    versions the batch supersedes: only those need an `UPDATE` (pure). One row per (loan,
    version), the last given, in (loan, version) order: they are upserted by one statement,
    which may touch a row once, and takes its row locks in that order."""
    unique = {(v.loan_id, v.version): v for v in versions}
    versions = [unique[key] for key in sorted(unique)]
    next_from = {superseded(v): v.updated_at for v in versions}
    present = {(v.loan_id, v.version) for v in versions}
    rows = [history_row(v, next_from.get((v.loan_id, v.version))) for v in versions]
    to_close = [
        (*superseded(v), v.updated_at)
        for v in versions
        if v.version > 1 and superseded(v) not in present
    ]
    return rows, to_close


def ledger_row(e: LedgerEntry) -> tuple[Any, ...]:
    """The `ledger_entries` row of `e` (`dataclasses.astuple` deep-copies every field: ~8% of
    the worker's CPU in the benchmark)."""
    return (e.entry_id, e.event_id, e.loan_id, e.account, e.direction, e.amount_cents,
            e.currency, e.booked_at)  # fmt: skip


def dead_letter_records(rows: LoanRows) -> list[tuple[str | None, dict[str, Any]]]:
    """What a batch changed in `dead_letters`, as (key, JSON-ready record) for the
    `dead-letters` topic; a discard is a record with just the id, status and reason (pure)."""
    records: list[tuple[str | None, dict[str, Any]]] = []
    for row in rows.dead_letters:
        record = dict(zip(DEAD_LETTER_COLUMNS, row, strict=True))
        for name in ("value", "replayed_value"):
            raw = record[name]
            if raw is not None and len(raw) > MAX_RECORD_VALUE_BYTES:
                record[f"{name}_bytes"], raw = len(raw), None  # the full value is in PostgreSQL
            record[name] = raw.decode("utf-8", "replace") if raw is not None else None
        record["headers"] = orjson.loads(record["headers"])
        records.append((record["key"], record))
    for dead_letter_id, reason in rows.discarded:
        records.append((None, {"id": dead_letter_id, "status": "discarded", "reason": reason}))
    return records


#: A stored `loan_summary` as the writer reads it back under its row lock:
#: (version, status, outstanding, customer, currency).
StoredSummary = tuple[int, str, int, str, str]


def stored_summary(loan: Loan) -> StoredSummary:
    """What the `loan_summary` row written from `loan` reads back as (`sql_lock_summaries`)."""
    return loan.version, str(loan.status), loan.outstanding_cents, loan.customer_id, loan.currency


def exposure_deltas(
    summaries: Sequence[Loan], stored: dict[str, StoredSummary]
) -> tuple[list[Loan], dict[tuple[str, str], list[int]]]:
    """The summaries that move a loan forward, and the exposure change they make (pure).

    `stored` maps loan_id to the stored (version, status, outstanding, customer, currency).
    """
    newer: list[Loan] = []
    deltas: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for loan in summaries:
        old = stored.get(loan.loan_id)
        if old is not None and old[0] >= loan.version:
            continue
        newer.append(loan)
        active, outstanding = exposure(loan)
        delta = deltas[(loan.customer_id, loan.currency)]
        delta[0] += active
        delta[1] += outstanding
        if old is not None and old[1] in ACTIVE:
            old_delta = deltas[(old[3], old[4])]
            old_delta[0] -= 1
            old_delta[1] -= old[2]
    return newer, dict(deltas)


def payout_deltas(
    summaries: Sequence[Loan], stored: dict[str, StoredSummary]
) -> dict[tuple[Any, str, str], list[int]]:
    """`daily_payouts` increments, (day, partner, currency) -> [payouts, amount], of the
    summaries (those that move a loan forward) whose loan was not paid out as stored (pure)."""
    deltas: dict[tuple[Any, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for loan in summaries:
        old = stored.get(loan.loan_id)
        if loan.paid_out_at is None or (old is not None and old[1] in DISBURSED):
            continue
        delta = deltas[(loan.paid_out_at.astimezone(UTC).date(), loan.partner_id, loan.currency)]
        delta[0] += 1
        delta[1] += loan.approved_amount_cents or 0
    return dict(deltas)


def saga_row(saga: PayoutSaga, state_seq: int) -> tuple[Any, ...]:
    return (
        saga.saga_id, saga.saga_type, saga.loan_id, saga.status, saga.step, saga.attempts,
        saga.started_at, saga.updated_at, saga.deadline_at, saga.last_error, state_seq,
        saga.partner_id, saga.amount_cents, saga.currency,
    )  # fmt: skip


@dataclass(frozen=True)
class StateRow:
    """One loan a batch changed: its new state, and its timer (None: nothing due)."""

    loan_id: str
    seq: int
    state: bytes
    partition: int
    due_at: datetime | None


@dataclass(frozen=True)
class BatchRows:
    """Everything a batch of the loan processor writes, in one transaction."""

    rows: LoanRows
    states: list[StateRow]
    sagas: list[tuple[Any, ...]] = field(default_factory=list)  # `saga_row`s


def make_apply(schema: str) -> Any:
    """The writer's `apply` for this projection, bound to `schema`."""
    s = f'"{schema}"'
    summary_updates = ", ".join(
        f"{c} = excluded.{c}" for c in LOAN_COLUMNS.split(", ") if c != "loan_id"
    )
    n = len(LOAN_COLUMNS.split(", "))

    # A batch's rows go in as one statement per table (not `executemany`, one execution per
    # row), and as one JSON parameter: an array of row arrays (`json_rows`, `from_json`). Per
    # event, against arrays per column (`unnest`), this costs the worker 1-2 µs of CPU instead
    # of 6.5-11.5 (asyncpg's array encoder checks every element against `Iterable`) and the
    # server 1-4 µs more (docs/performance.md). Rows that conflict, also with each other, are
    # skipped. An upsert's rows (history, summaries, exposures) have distinct keys (a statement
    # may update a row once) and are in key order, the order its row locks are taken in
    # (`jsonb_array_elements` keeps the array's order). `event_log` and `ledger_entries` rows
    # are in batch order: they only conflict with a redelivered copy of the same batch.
    sql_event_log = (
        f'INSERT INTO {s}.event_log (event_id, topic, partition, "offset", key, type, '
        "schema_version, occurred_at, recorded_at, loan_id, correlation_id, causation_id, data) "
        f"{from_json(EVENT_LOG_TYPES)} ON CONFLICT DO NOTHING"
    )
    sql_summary = (
        f"INSERT INTO {s}.loan_summary ({LOAN_COLUMNS}) {from_json(HISTORY_TYPES[:n])} "
        f"ON CONFLICT (loan_id) DO UPDATE SET {summary_updates} "
        "WHERE loan_summary.version < excluded.version"
    )
    # A version superseded inside the batch is inserted closed; a redelivered batch with other
    # boundaries may close a version it inserted open before.
    sql_history = (
        f"INSERT INTO {s}.loan_history AS h ({HISTORY_COLUMNS}) {from_json(HISTORY_TYPES)} "
        "ON CONFLICT (loan_id, version) DO UPDATE SET valid_to = excluded.valid_to "
        "WHERE h.valid_to IS NULL AND excluded.valid_to IS NOT NULL"
    )
    sql_close_version = close_versions_sql(schema)
    sql_exposure = (
        f"INSERT INTO {s}.customer_exposure AS e ({EXPOSURE_COLUMNS}) "
        f"SELECT x.*, now() FROM ({from_json(('text', 'text', 'int', 'bigint'))}) AS x "
        "ON CONFLICT (customer_id, currency) DO UPDATE SET "
        "active_loans = e.active_loans + excluded.active_loans, "
        "outstanding_cents = e.outstanding_cents + excluded.outstanding_cents, updated_at = now()"
    )
    sql_dead_letter = (
        f'INSERT INTO {s}.dead_letters AS d (id, topic, partition, "offset", key, event_id, '
        "value, headers, error_class, error, status, first_seen_at, last_attempt_at, attempts, "
        "next_attempt_at, replayed_value) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10,$11,$12,$13,$14,$15,$16) "
        "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
        "error_class = excluded.error_class, error = excluded.error, "
        "attempts = greatest(d.attempts, excluded.attempts), "
        "last_attempt_at = excluded.last_attempt_at, next_attempt_at = excluded.next_attempt_at, "
        "replayed_value = coalesce(excluded.replayed_value, d.replayed_value) "
        "WHERE d.status IN ('parked', 'dead')"
    )
    sql_discard = (
        f"UPDATE {s}.dead_letters SET status = 'discarded', reason = $2, next_attempt_at = NULL, "
        "last_attempt_at = now() WHERE id = $1 AND status IN ('parked', 'dead')"
    )
    sql_release_applied = (
        f"UPDATE {s}.dead_letters SET status = 'released', last_attempt_at = now() "
        "WHERE event_id = ANY($1::text[]) AND status = 'parked'"
    )
    sql_lock_summaries = (
        f"SELECT loan_id, version, status, outstanding_cents, customer_id, currency "
        f"FROM {s}.loan_summary WHERE loan_id = ANY($1::text[]) ORDER BY loan_id FOR UPDATE"
    )

    sql_ledger = (
        f"INSERT INTO {s}.ledger_entries (entry_id, event_id, loan_id, account, direction, "
        f"amount_cents, currency, booked_at) {from_json(LEDGER_TYPES)} ON CONFLICT DO NOTHING"
    )
    sql_daily_payouts = (
        f"INSERT INTO {s}.daily_payouts AS d (day, partner_id, currency, payouts, amount_cents) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (day, partner_id, currency) DO UPDATE SET "
        "payouts = d.payouts + excluded.payouts, amount_cents = d.amount_cents + excluded.amount_cents"
    )
    sql_saga = (
        f"INSERT INTO {s}.saga_instances AS g (saga_id, saga_type, loan_id, status, step, attempts, "
        "started_at, updated_at, deadline_at, last_error, state_seq, partner_id, amount_cents, "
        "currency) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) "
        "ON CONFLICT (saga_id) DO UPDATE SET status = excluded.status, step = excluded.step, "
        "attempts = excluded.attempts, updated_at = excluded.updated_at, "
        "deadline_at = excluded.deadline_at, last_error = excluded.last_error, "
        "state_seq = excluded.state_seq WHERE g.state_seq < excluded.state_seq"
    )
    sql_state = (
        f"INSERT INTO {s}.loan_state AS l (loan_id, seq, state) "
        "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) "
        "ON CONFLICT (loan_id) DO UPDATE SET seq = excluded.seq, state = excluded.state, "
        "updated_at = now() WHERE l.seq < excluded.seq"
    )
    sql_set_timers = (
        f"INSERT INTO {s}.loan_timers AS t (loan_id, partition, due_at) "
        "SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) "
        "ON CONFLICT (loan_id) DO UPDATE SET partition = excluded.partition, due_at = excluded.due_at"
    )
    sql_clear_timers = f"DELETE FROM {s}.loan_timers WHERE loan_id = ANY($1::text[])"

    async def apply_states(conn: asyncpg.Connection, states: Sequence[StateRow]) -> None:
        if not states:
            return
        ordered = sorted(states, key=lambda r: r.loan_id)
        await conn.execute(
            sql_state, [r.loan_id for r in ordered], [r.seq for r in ordered],
            [r.state for r in ordered],
        )  # fmt: skip
        timed = [r for r in ordered if r.due_at is not None]
        untimed = [r.loan_id for r in ordered if r.due_at is None]
        if untimed:
            await conn.execute(sql_clear_timers, untimed)
        if timed:
            await conn.execute(
                sql_set_timers, [r.loan_id for r in timed], [r.partition for r in timed],
                [r.due_at for r in timed],
            )  # fmt: skip

    async def apply(conn: asyncpg.Connection, payloads: Sequence[BatchRows]) -> None:
        for batch in payloads:
            await apply_states(conn, batch.states)
            await apply_rows(conn, batch.rows)
            if batch.sagas:
                await conn.executemany(sql_saga, sorted(batch.sagas))

    async def apply_rows(conn: asyncpg.Connection, rows: LoanRows) -> None:
        if rows.event_log:
            await conn.execute(sql_event_log, json_rows(event_log_json(rows.event_log)))
        if rows.versions:
            history, to_close = history_rows(rows.versions)
            await conn.execute(sql_history, json_rows(history))
            if to_close:
                await conn.execute(sql_close_version, *columns(to_close))
            summaries = sorted(rows.summaries, key=lambda loan: loan.loan_id)
            stored = {
                r["loan_id"]: (r["version"], r["status"], r["outstanding_cents"],
                               r["customer_id"], r["currency"])
                for r in await conn.fetch(sql_lock_summaries, [v.loan_id for v in summaries])
            }  # fmt: skip
            newer, deltas = exposure_deltas(summaries, stored)
            if newer:
                await conn.execute(sql_summary, json_rows([loan_row(v) for v in newer]))
            if deltas:
                exposures = [(c, cur, a, o) for (c, cur), (a, o) in sorted(deltas.items())]
                await conn.execute(sql_exposure, json_rows(exposures))
            payouts = payout_deltas(newer, stored) if rows.count_payouts else {}
            if payouts:
                await conn.executemany(
                    sql_daily_payouts,
                    [(*k, n, amount) for k, (n, amount) in sorted(payouts.items())],
                )
        if rows.ledger:
            await conn.execute(sql_ledger, json_rows([ledger_row(e) for e in rows.ledger]))
        if rows.dead_letters:
            await conn.executemany(sql_dead_letter, rows.dead_letters)
        if rows.applied_ids:
            # Planned for its ids each time: a generic plan cached while `dead_letters` was
            # nearly empty scans the whole table, comparing every row with every id (600 ms
            # per batch of 2,000 ids at 40,000 rows, instead of 12 ms; docs/performance.md).
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            await conn.execute(sql_release_applied, rows.applied_ids)
        if rows.discarded:
            await conn.executemany(sql_discard, rows.discarded)

    return apply


def close_versions_sql(schema: str) -> str:
    """Close open `loan_history` versions: $1 loan ids, $2 versions, $3 their `valid_to` (the
    rows of `history_rows`' second list, as `columns`)."""
    return (
        f'UPDATE "{schema}".loan_history h SET valid_to = c.valid_to '
        "FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS c(loan_id, version, valid_to) "
        "WHERE h.loan_id = c.loan_id AND h.version = c.version AND h.valid_to IS NULL"
    )


def columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays of an `unnest` insert (pure)."""
    return [list(column) for column in zip(*rows, strict=True)]


def json_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as one JSON array of arrays: the parameter of a `from_json` select (pure).

    Strings, ints and None go as they are, datetimes as RFC 3339 (every domain time is aware;
    a naive one would be taken as UTC), an `orjson.Fragment` as the JSON it holds. What a
    column cannot hold fails the commit, as it did with arrays; the codec keeps it out: a NUL
    character (`topics.codec.NUL_REASON`) or an instant outside years 1-9999 in UTC
    (`topics.envelope`) makes an event invalid, a dead letter."""
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


def from_json(types: Sequence[str]) -> str:
    """`SELECT` the rows of JSON parameter $1 (`json_rows`) as columns of `types`, in order: a
    `jsonb` column is taken as the JSON it holds, any other is cast from its text."""
    picks = ", ".join(
        f"r->{i}" if t == "jsonb" else f"r->>{i}" if t == "text" else f"(r->>{i})::{t}"
        for i, t in enumerate(types)
    )
    return f"SELECT {picks} FROM jsonb_array_elements($1::text::jsonb) AS r"


def event_log_json(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`event_log` rows whose `data` (last, a JSON text) goes into `json_rows` as JSON, not
    as a string to parse twice (pure)."""
    return [(*row[:-1], orjson.Fragment(row[-1])) for row in rows]


def newer_states_sql(schema: str) -> str:
    """Stored states newer than the given ones: $1 loan ids, $2 their seqs.

    (Preferring the stored copy whenever the two differed at an equal seq made the crash test
    worse, which says the two copies can fork — see the note in `agents/loans.py`.)
    """
    return (
        f'SELECT l.loan_id, l.state FROM "{schema}".loan_state l '
        "JOIN unnest($1::text[], $2::bigint[]) AS t(loan_id, seq) ON l.loan_id = t.loan_id "
        "WHERE l.seq > t.seq"
    )


def due_timers_sql(schema: str) -> str:
    """Loans of the given partitions ($1) whose timer is due at $2, oldest first, at most $3."""
    return (
        f'SELECT loan_id, partition, due_at FROM "{schema}".loan_timers '
        "WHERE partition = ANY($1::int[]) AND due_at <= $2 ORDER BY due_at LIMIT $3"
    )
