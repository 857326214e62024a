"""Pure parts of `lendstream projections rebuild`: merging the loan processor's input topics
into one order per partition, folding it with the live code, the rows of the rebuilt tables,
and the progress line.

Order: the loan processor consumes `loan-events`, `payout-events`, `payment-events` and
`loan-control` together, and the messages of one loan sit in the same partition number of each.
Across topics the live worker sees them in whatever order the fetches return; the domain is
built to reach the same (causal) state in any interleaving, but an operator's command or a timer
on `loan-control` only makes sense after what it targets. So the rebuild releases, per partition
number, the buffered message with the smallest Kafka timestamp (ties: the topic order of
`LOAN_PROCESSOR_INPUTS`, commands last), never skipping ahead of a partition that may still
deliver an earlier one. Each partition's own order is kept.

Time: the fold's `now` is each message's Kafka timestamp, the closest replayable stand-in for
the processing time the live worker used. Park deadlines, transient retries and the
`parked_at` of a queued event therefore follow record times, not the wall clock of the first run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from lendstream.agents.batch import _headers
from lendstream.domain.loans import Loan
from lendstream.domain.sequencing import (
    DEFAULT_POLICY,
    Applied,
    Evolve,
    Keyed,
    Message,
    Policy,
    Position,
    handle,
)
from lendstream.projections.loans import (
    exposure_deltas,
    history_row,
    loan_row,
    new_version,
    stored_summary,
    superseded,
)
from lendstream.topics import LOAN_PROCESSOR_INPUTS
from lendstream.topics.codec import key_text

SPECS = {spec.name: spec for spec in LOAN_PROCESSOR_INPUTS}
TOPIC_RANK = {spec.name: rank for rank, spec in enumerate(LOAN_PROCESSOR_INPUTS)}

#: `NAME` of `projections rebuild` -> the projection it rebuilds. The loan projection owns the
#: three read-model tables; naming one of them rebuilds all three (they change together).
PROJECTIONS = {
    "loans": "loans",
    "loan_summary": "loans",
    "loan_history": "loans",
    "customer_exposure": "loans",
}
#: The tables a rebuild of the loan projection replaces.
REBUILT_TABLES = ("loan_summary", "loan_history", "customer_exposure")


class UnknownProjection(ValueError):
    """`NAME` is not a projection (or table) that can be rebuilt."""


def projection_named(name: str | None) -> str:
    """The projection `name` (default: `loans`) rebuilds; `UnknownProjection` otherwise."""
    if name is None:
        return "loans"
    try:
        return PROJECTIONS[name]
    except KeyError:
        known = ", ".join(PROJECTIONS)
        raise UnknownProjection(f"unknown projection {name!r} (known: {known})") from None


def to_message(record: ConsumerRecord[bytes, bytes]) -> Message:
    """An aiokafka record as the sequencing code's `Message`, decoded by its topic's codec."""
    raw_key = record.key
    key = key_text(raw_key)
    return Message(
        position=Position(record.topic, record.partition, record.offset),
        key=key,
        timestamp=record.timestamp / 1000.0,
        decoded=SPECS[record.topic].decode(raw_key, record.value),
        raw=record.value,
        headers=_headers(record.headers),
    )


@dataclass
class Merge:
    """Per-partition-number merge of the input topics by Kafka timestamp (see the module doc).

    `add` buffers fetched messages; `release(targets)` returns, in merge order, every message up
    to the (inclusive) target offsets that can be placed for sure, and records it as done.
    """

    done: dict[TopicPartition, int] = field(default_factory=dict)  # last offset released
    buffers: dict[TopicPartition, deque[Message]] = field(default_factory=dict)

    def add(self, tp: TopicPartition, messages: Iterable[Message]) -> None:
        self.buffers.setdefault(tp, deque()).extend(messages)

    def complete(self, targets: Mapping[TopicPartition, int]) -> bool:
        """Whether every partition has been released up to its target."""
        return all(self.done.get(tp, -1) >= end for tp, end in targets.items())

    def release(self, targets: Mapping[TopicPartition, int]) -> list[Message]:
        out: list[Message] = []
        groups: dict[int, list[TopicPartition]] = {}
        for tp in targets:
            groups.setdefault(tp.partition, []).append(tp)
        for group in groups.values():
            out.extend(self._release_group(group, targets))
        return out

    def _release_group(
        self, group: Sequence[TopicPartition], targets: Mapping[TopicPartition, int]
    ) -> Iterable[Message]:
        while True:
            heads: list[tuple[float, int, TopicPartition]] = []
            for tp in group:
                if self.done.get(tp, -1) >= targets[tp]:
                    continue  # this one has nothing more to give up to its target
                buffer = self.buffers.get(tp)
                if not buffer:
                    return  # it may still deliver an earlier message: wait for its fetch
                head = buffer[0]
                heads.append((head.timestamp, TOPIC_RANK[tp.topic], tp))
            if not heads:
                return
            _, _, tp = min(heads)
            message = self.buffers[tp].popleft()
            self.done[tp] = message.position.offset
            yield message


_UNSEEN: Keyed[Loan] = Keyed()


@dataclass
class Fold:
    """The loan processor's fold without I/O: each loan's `Keyed` state in memory."""

    evolve: Evolve[Loan]
    policy: Policy = DEFAULT_POLICY
    states: dict[str, Keyed[Loan]] = field(default_factory=dict)

    def apply(self, messages: Sequence[Message]) -> list[Loan]:
        """Fold `messages` in order; the loan versions they make, in order (`new_version`, as
        the live projection's `rows_for` keeps them): all that the rebuilt tables are made of."""
        versions: list[Loan] = []
        states, evolve, policy = self.states, self.evolve, self.policy
        for message in messages:
            now = datetime.fromtimestamp(message.timestamp, UTC)
            keyed = states.get(message.key, _UNSEEN)
            states[message.key], outcomes = handle(keyed, message, evolve, now, policy)
            for outcome in outcomes:
                if isinstance(outcome, Applied):
                    version = new_version(outcome)
                    if version is not None:
                        versions.append(version)
        return versions


#: A `loan_history` row (`history_row`) and a (loan, version, valid_to) to close.
HistoryRow = tuple[Any, ...]
Close = tuple[str, int, datetime]


@dataclass
class RoundEnd:
    """What the shadow tables get at the end of a round: the history rows of the newest
    version of each loan the round changed (open), those versions as `loan_summary` rows
    (`loan_row`), and the new totals of every (customer, currency) whose exposure they touched,
    as (customer, currency, active loans, outstanding cents)."""

    history: list[HistoryRow]
    summaries: list[tuple[Any, ...]]
    exposures: list[tuple[str, str, int, int]]


@dataclass
class ShadowRows:
    """The rows of the rebuilt tables, from the fold's versions in order (pure).

    The live writer's outcome for the positions a round reached, with the round as its batch:

    - `loan_history`: a version is final once the next version of its loan closes it
      (`superseded`), so `add` returns the batch's rows that became final (to be inserted) and
      keeps each loan's newest version in memory; `end_round` returns those as open rows. A
      version a later round supersedes was written open: `add` returns it to close, as the live
      writer closes a version an earlier batch wrote. Memory: one version per loan, not one per
      event; each (loan, version) is returned exactly once.
    - `loan_summary`: each loan's newest version, at the end of every round that changed it.
    - `customer_exposure`: the live `exposure_deltas` between what the earlier rounds wrote and
      the round's summaries, added to the totals written so far.
    """

    held: dict[str, Loan] = field(default_factory=dict)  # this round's newest, not yet written
    written: dict[str, Loan] = field(default_factory=dict)  # summaries of the earlier rounds
    exposures: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def add(self, versions: Sequence[Loan]) -> tuple[list[HistoryRow], list[Close]]:
        """The history rows `versions` make final, and the earlier rounds' open ones they close."""
        rows: list[HistoryRow] = []
        closes: list[Close] = []
        held, written = self.held, self.written
        for version in versions:
            closed = superseded(version)
            before = held.get(version.loan_id)
            if before is not None:
                closes_it = closed == (before.loan_id, before.version)
                rows.append(history_row(before, version.updated_at if closes_it else None))
            else:
                earlier = written.get(version.loan_id)
                if earlier is not None and closed == (earlier.loan_id, earlier.version):
                    closes.append((*closed, version.updated_at))
            held[version.loan_id] = version
        return rows, closes

    def end_round(self) -> RoundEnd:
        summaries = list(self.held.values())
        stored = {
            v.loan_id: stored_summary(self.written[v.loan_id])
            for v in summaries
            if v.loan_id in self.written
        }
        _, deltas = exposure_deltas(summaries, stored)
        exposures = []
        for (customer, currency), (active, outstanding) in deltas.items():
            was_active, was_outstanding = self.exposures.get((customer, currency), (0, 0))
            total = (was_active + active, was_outstanding + outstanding)
            self.exposures[(customer, currency)] = total
            exposures.append((customer, currency, *total))
        self.written.update(self.held)
        self.held = {}
        return RoundEnd(
            history=[history_row(v, None) for v in summaries],
            summaries=[loan_row(v) for v in summaries],
            exposures=exposures,
        )


#: A `customer_exposure` row as a round ends: (customer, currency, active loans, outstanding).
ExposureRow = tuple[str, str, int, int]


class ExposureSum:
    """`customer_exposure` totals from several folders, each over its own loans: a (customer,
    currency)'s total is the sum of every folder's latest total for it (pure)."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[tuple[str, str], tuple[int, int]]] = {}

    def add(self, rounds: Sequence[list[ExposureRow]]) -> list[ExposureRow]:
        """The totals of the customers one round touched, from each folder's rows (by index)."""
        touched: set[tuple[str, str]] = set()
        for folder, rows in enumerate(rounds):
            latest = self.latest.setdefault(folder, {})
            for customer, currency, active, outstanding in rows:
                latest[(customer, currency)] = (active, outstanding)
                touched.add((customer, currency))
        totals = []
        for key in sorted(touched):
            parts = [latest[key] for latest in self.latest.values() if key in latest]
            totals.append((*key, sum(p[0] for p in parts), sum(p[1] for p in parts)))
        return totals


def progress_line(done: int, total: int, seconds: float, phase: str) -> str:
    """`rebuild loans [fold]: 12,000/50,000 events (24%), 8,000 ev/s, ETA 0:05`."""
    rate = done / seconds if seconds > 0 else 0.0
    left = max(total - done, 0)
    eta = f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}" if rate > 0 else "?"
    percent = 100 * done // total if total else 100
    return f"rebuild [{phase}]: {done:,}/{total:,} events ({percent}%), {rate:,.0f} ev/s, ETA {eta}"
