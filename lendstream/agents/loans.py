"""The loan processor: consumes the co-partitioned loan-keyed topics in batches.

Per batch: decode every message (the codec never raises), fold each one into its loan's state
with the pure sequencing logic, commit all resulting rows together with the Kafka positions in
one PostgreSQL transaction, then write each touched loan once to the `loans` table, then let
Faust ack. Crash between any two steps and the redelivered messages produce the same result:
the table dedupes by `event_id`, the projection by Kafka position.
"""

from __future__ import annotations

from datetime import UTC, datetime

import faust
from faust.types import EventT, StreamT

from lendstream.agents.batch import as_current, fail_stop, partition_ends, to_message
from lendstream.domain.loans import Loan, evolve
from lendstream.domain.sequencing import Applied, Dead, Duplicate, Keyed, Outcome, Parked, receive
from lendstream.metrics import Metrics
from lendstream.projections.writer import CheckpointedWriter, Item
from lendstream.tables import loans as loans_table
from lendstream.topics import LOAN_KEYED

SPECS = {spec.name: spec for spec in LOAN_KEYED}
OutcomeBatch = list[Outcome[Loan]]


class LoanProcessor:
    def __init__(
        self, table: faust.Table, writer: CheckpointedWriter[OutcomeBatch], metrics: Metrics
    ) -> None:
        self.table = table
        self.writer = writer
        self.metrics = metrics

    async def process(self, events: list[EventT]) -> None:
        now = datetime.now(UTC)
        states: dict[str, Keyed[Loan]] = {}
        last_event: dict[str, EventT] = {}
        items: list[Item[OutcomeBatch]] = []
        timestamps = []
        for event in events:
            message = to_message(event, SPECS)
            key = message.key
            if key not in states:
                with as_current(event):
                    states[key] = loans_table.decode(self.table.get(key.encode()))
            states[key], outcomes = receive(states[key], message, evolve, now)
            last_event[key] = event
            items.append(Item(message.position, outcomes))
            timestamps.append(message.timestamp)
            self.count(message.position.topic, outcomes)
        await self.writer.commit(items, partition_ends(events), timestamps)
        for key, keyed in states.items():
            with as_current(last_event[key]):
                self.table[key.encode()] = loans_table.encode(keyed)

    def count(self, topic: str, outcomes: OutcomeBatch) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Applied | Duplicate):
                event, name = outcome.event, type(outcome).__name__.lower()
                self.metrics.events.labels(outcome.position.topic, event.type, name).inc()
            elif isinstance(outcome, Parked | Dead):
                kind = outcome.pending.event.type if outcome.pending.event else "invalid"
                status = "dead" if isinstance(outcome, Dead) else "parked"
                self.metrics.events.labels(outcome.pending.position.topic, kind, status).inc()


def register(app: faust.App, topic: faust.TopicT, processor: LoanProcessor, batch_max: int,
             batch_within: float, ready: object) -> None:  # fmt: skip
    """Declare the `loan-processor` agent on `app`."""

    @app.agent(topic, name="loan-processor")
    async def loan_processor(stream: StreamT) -> None:
        await ready.wait()  # type: ignore[attr-defined]
        async for events in stream.take_events(batch_max, within=batch_within):
            try:
                await processor.process(list(events))
            except Exception:
                fail_stop("loan-processor")
