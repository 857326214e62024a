"""The loan processor: consumes the co-partitioned loan-keyed topics and `loan-control` in
batches.

Per batch: check that no message was skipped; load each loan's state (and payout saga) from
the `loans` table, taking PostgreSQL's copy instead where it is newer; fold each message into
its loan's state and saga with the pure logic (`sagas.loans.handle_message`: events, operator
commands, timers, gateway answers); commit all resulting rows, the changed states with their
timers, the saga's records and the customer notifications (an `outbox` row) and the Kafka
positions in one PostgreSQL transaction; then send those records (acknowledged by Kafka), write
each touched loan once to the table, start the saga's gateway calls, publish the batch's
dead-letter changes to `dead-letters`, and let Faust ack. Nothing is sent before the commit: a
batch run again after a crash may decide differently (see `agents.payouts`).

PostgreSQL's copy of the state is written atomically with the read models; the RocksDB table
is the fast path. After a SIGKILL the table can be behind (its changelog loses the writes that
were still in the producer's buffer): each batch takes PostgreSQL's copy of every loan whose
stored `seq` is higher — one small query per batch. Redelivered messages are duplicates for the
state (by `event_id`, or by position while queued) and idempotent for the read models.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
import orjson
from faust.types import EventT

from lendstream.agents.batch import (
    YIELD_EVERY,
    Prepared,
    TableWriter,
    by_partition,
    load_states,
    partition_ends,
    register_batch_agent,
    to_message,
)
from lendstream.agents.contiguity import ContiguityGuard
from lendstream.agents.payouts import GatewayCalls, Outbox
from lendstream.domain.loans import Loan
from lendstream.domain.sequencing import (
    TRANSIENT,
    Applied,
    Dead,
    Duplicate,
    Evolve,
    Keyed,
    Message,
    Outcome,
    Parked,
    Policy,
)
from lendstream.metrics import Metrics
from lendstream.projections.loans import (
    BatchRows,
    LoanRows,
    StateRow,
    dead_letter_records,
    newer_states_sql,
    rows_for,
    saga_row,
)
from lendstream.projections.writer import CheckpointedWriter, Item
from lendstream.sagas import fanout
from lendstream.sagas.loans import handle_message, next_due
from lendstream.sagas.payout import Command, PayoutSaga, SagaPolicy
from lendstream.tables import loans as loans_table
from lendstream.topics import LOAN_PROCESSOR_INPUTS

log = logging.getLogger(__name__)
SPECS = {spec.name: spec for spec in LOAN_PROCESSOR_INPUTS}
#: A loan's state and its payout saga, as the table holds them.
LoanAndSaga = tuple[Keyed[Loan], PayoutSaga | None]


class LoanProcessor:
    def __init__(
        self,
        table: faust.Table,
        writer: CheckpointedWriter[BatchRows],
        guard: ContiguityGuard,
        metrics: Metrics,
        schema: str,
        evolve: Evolve[Loan],
        policy: Policy,
        outbox: Outbox,
        saga_policy: SagaPolicy,
        gateway: GatewayCalls | None = None,
        dead_letters: faust.TopicT | None = None,
    ) -> None:
        self.newer_sql = newer_states_sql(schema)
        self.table = table
        self.writer = writer
        self.guard = guard
        self.metrics = metrics
        self.evolve = evolve
        self.policy = policy
        self.outbox = outbox
        self.saga_policy = saga_policy
        self.gateway = gateway  # None: no saga is started (payout events come from elsewhere)
        self.dead_letters = dead_letters
        self.table_writer = TableWriter(table, outbox.send)
        #: table values of prepared batches not written to the table yet, oldest first
        self.unwritten: deque[dict[str, bytes]] = deque()

    async def process(self, events: list[EventT]) -> None:
        """One batch, whole: `prepare`, then its `finish`."""
        await (await self.prepare(events)).finish()

    async def prepare(self, events: list[EventT]) -> Prepared:
        """Everything of a batch before its PostgreSQL commit: check, decode, load, fold,
        encode, rows, outbox staged. Returns the rest: commit, send the staged records, write
        the table, start the gateway calls, count, publish the dead letters.

        May run while the previous batch's `finish` is in flight (`batch.Pipeline`): the
        table values that batch has not written yet are read from `unwritten`, and the long
        loops yield to the event loop every `YIELD_EVERY` messages so that the commit in flight
        can send its next statement. The `finish`es must run in the order of their batches.
        """
        await self.outbox.send_leftovers(self.writer)
        await self.guard.check(events)
        now = datetime.now(UTC)
        messages = []
        for n, event in enumerate(events, 1):
            messages.append(to_message(event, SPECS))
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        last_event = {m.key: event for m, event in zip(messages, events, strict=True)}
        loaded, stale_in_table = await self.load(last_event)
        await asyncio.sleep(0)
        folded, outcomes, commands = await self.fold(loaded, messages, now)
        encoded, changed, saga_rows = await self.encode_changed(
            loaded, folded, stale_in_table, last_event
        )
        rows = LoanRows()
        for start in range(0, len(outcomes), YIELD_EVERY):
            await asyncio.sleep(0)
            rows_for(outcomes[start : start + YIELD_EVERY], now, into=rows)
        calls = self.outbox.add_commands(commands)
        for note in notifications(outcomes):
            self.outbox.add_notification(note)
        staged = self.outbox.stage()
        batch = Item(messages[0].position, BatchRows(rows, changed, saga_rows))
        timestamps, ends = [m.timestamp for m in messages], partition_ends(events)
        table_values, counts = by_partition(encoded, last_event), tally(outcomes)
        self.unwritten.append(encoded)
        # `finish` keeps only what it writes: the outcomes and decoded events of a batch
        # whose commit is in flight are not kept alive while the next one is prepared.

        async def finish() -> None:
            try:
                await self.writer.commit([batch], ends, timestamps, staged)
                await self.outbox.send_committed(staged, self.writer)
                await self.table_writer.write(table_values)
                if self.unwritten[0] is not encoded:
                    raise RuntimeError("batches finished out of order")
            finally:
                # Written, or never to be (cancelled: the table or PostgreSQL has the truth,
                # and `load` takes the newer of the two).
                self.forget(encoded)
            if self.gateway is not None:
                self.gateway.start(calls)
            self.count(counts)
            await self.publish_dead_letters(rows)

        return Prepared(finish, drop=lambda: self.forget(encoded))

    def forget(self, encoded: dict[str, bytes]) -> None:
        """Remove a batch's values from `unwritten` (once written, or never to be)."""
        for n, values in enumerate(self.unwritten):
            if values is encoded:
                del self.unwritten[n]
                return

    async def fold(
        self, loaded: dict[str, LoanAndSaga], messages: list[Message], now: datetime
    ) -> tuple[dict[str, LoanAndSaga], list[Outcome[Loan]], list[tuple[int, Command]]]:
        """Fold `messages` in order into the `loaded` states and sagas: each key's new state
        and saga, the outcomes, and the saga commands with their partition. Pure but for
        yielding to the event loop every `YIELD_EVERY` messages (see `prepare`)."""
        folded = dict(loaded)
        outcomes: list[Outcome[Loan]] = []
        commands: list[tuple[int, Command]] = []
        for n, message in enumerate(messages, 1):
            keyed, saga = folded[message.key]
            keyed, saga, more, saga_commands = handle_message(
                keyed, saga, message, self.evolve, now, self.policy,
                self.saga_policy, saga_enabled=self.gateway is not None,
            )  # fmt: skip
            folded[message.key] = (keyed, saga)
            outcomes.extend(more)
            commands.extend((message.position.partition, c) for c in saga_commands)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return folded, outcomes, commands

    async def encode_changed(
        self,
        loaded: dict[str, LoanAndSaga],
        folded: dict[str, LoanAndSaga],
        stale_in_table: set[str],
        last_event: dict[str, EventT],
    ) -> tuple[dict[str, bytes], list[StateRow], list[tuple[Any, ...]]]:
        """The table values to write (changed keys, with `seq` + 1, and keys taken from
        PostgreSQL), the changed keys' `loan_state` rows and the changed sagas' rows. Pure but
        for yielding every `YIELD_EVERY` keys (see `prepare`)."""
        encoded: dict[str, bytes] = {}
        changed: list[StateRow] = []
        saga_rows: list[tuple[Any, ...]] = []
        for n, (key, (keyed, saga)) in enumerate(folded.items(), 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            old_keyed, old_saga = loaded[key]
            is_changed = keyed != old_keyed or saga != old_saga
            if is_changed:
                keyed = replace(keyed, seq=old_keyed.seq + 1)
            if is_changed or key in stale_in_table:
                encoded[key] = loans_table.encode(keyed, saga)  # PostgreSQL and table
            if is_changed:
                partition = last_event[key].message.partition
                due = next_due(keyed, saga, self.policy)
                changed.append(StateRow(key, keyed.seq, encoded[key], partition, due))
                if saga is not None and saga != old_saga:
                    saga_rows.append(saga_row(saga, keyed.seq))
        return encoded, changed, saga_rows

    async def load(
        self, events_by_key: dict[str, EventT]
    ) -> tuple[dict[str, LoanAndSaga], set[str]]:
        """Each key's state and saga: the table's, or PostgreSQL's where that one is newer; and
        the keys taken from PostgreSQL (their table value is written back even if unchanged)."""
        states, stale_in_table = await load_states(
            self.table, events_by_key, lambda _key, raw: loans_table.decode_with_saga(raw),
            lambda state: state[0].seq, partial(self.writer.fetch, self.newer_sql), "loan_id",
            self.unwritten,
        )  # fmt: skip
        if stale_in_table:
            log.warning(
                "%d loan states were behind in the table; took PostgreSQL's", len(stale_in_table)
            )
        return states, stale_in_table

    async def publish_dead_letters(self, rows: LoanRows) -> None:
        """Every dead-letter change of the batch, on `dead-letters` (at least once; a consumer
        dedupes by (id, status))."""
        if self.dead_letters is None:
            return
        for key, record in dead_letter_records(rows):
            value = orjson.dumps(record, default=str)
            await self.dead_letters.send(key=key.encode() if key else None, value=value)

    def count(self, counts: Counter[tuple[str, str, str]]) -> None:
        """Add a batch's `tally` to `lendstream_events_total`."""
        for labels, n in counts.items():
            self.metrics.events.labels(*labels).inc(n)


def tally(outcomes: list[Outcome[Loan]]) -> Counter[tuple[str, str, str]]:
    """The batch's outcomes as `lendstream_events_total` labels (topic, type, outcome) -> count
    (pure; counted once the batch is committed)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for outcome in outcomes:
        if isinstance(outcome, Applied | Duplicate):
            event, name = outcome.event, type(outcome).__name__.lower()
            counts[(outcome.position.topic, event.type, name)] += 1
        elif isinstance(outcome, Parked | Dead):
            pending = outcome.pending
            kind = pending.event.type if pending.event else "invalid"
            status = "dead" if isinstance(outcome, Dead) else "parked"
            if status == "parked" and pending.error_class == TRANSIENT:
                status = "retried"
            counts[(pending.position.topic, kind, status)] += 1
    return counts


def notifications(outcomes: list[Outcome[Loan]]) -> list[fanout.Notification]:
    """The customer messages of a batch's applied events (contract §5.4)."""
    found = []
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            note = fanout.notification(outcome.event, outcome.before, outcome.after)
            if note is not None:
                found.append(note)
    return found


def register(app: faust.App, topic: faust.TopicT, processor: LoanProcessor, batch_max: int,
             batch_within: float, ready: asyncio.Event, pipelined: bool = True) -> None:  # fmt: skip
    """Declare the `loan-processor` agent on `app` (`pipelined`: the next batch is prepared
    while the previous one commits)."""
    register_batch_agent(
        app, topic, "loan-processor", processor.process, batch_max, batch_within, ready,
        prepare=processor.prepare if pipelined else None,
    )  # fmt: skip
