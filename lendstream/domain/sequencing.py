"""Per-key ordering with a sequenced dead-letter queue (contract §4 "Order"), as pure logic.

Each key (a loan) carries its aggregate state, the ids of the events applied to it, and a queue
of messages that could not be applied yet. `receive` takes one message for the key and returns
the key's next value plus what happened (outcomes), in order:

- an invalid message, or one that breaks the lifecycle, becomes a *dead* head of the queue and
  blocks the key until an operator replays or discards it;
- an event that arrives before what it depends on becomes a *parked* head;
- while the queue is not empty, later events park behind its head, except an event that supplies
  what a parked head waits for: it is applied at once, and then the queue is retried in order;
- an event whose `event_id` was already applied is a duplicate and changes nothing.

Nothing here does I/O or reads the clock: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from lendstream.domain.errors import DependencyMissing, LifecycleViolation
from lendstream.topics.codec import Invalid
from lendstream.topics.envelope import Event

S = TypeVar("S")
Evolve = Callable[[S | None, Event], S]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message sits in Kafka."""

    topic: str
    partition: int
    offset: int

    @property
    def dead_letter_id(self) -> str:
        """Deterministic id of the dead letter a message at this position would become."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message: position, key, Kafka metadata and what the codec made of it."""

    position: Position
    key: str
    timestamp: float  # Kafka record time, seconds since the epoch
    decoded: Event | Invalid
    raw: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """A message waiting in its key's queue (a `dead_letters` row with status parked or dead)."""

    position: Position
    event: Event | None  # None for an invalid message
    status: Literal["parked", "dead"]
    error_class: str
    error: str
    since: datetime
    needs: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return self.position.dead_letter_id

    @property
    def event_id(self) -> str | None:
        return self.event.event_id if self.event else None


@dataclass(frozen=True, slots=True)
class Keyed(Generic[S]):
    """A key's whole processing state: aggregate, applied event ids, queue.

    `seq` counts the batches that changed it; whoever stores copies (the RocksDB table, and
    PostgreSQL in the projection's transaction) keeps the one with the highest `seq`.
    """

    state: S | None = None
    applied: frozenset[str] = frozenset()
    queue: tuple[Pending, ...] = ()
    seq: int = 0


# -- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied(Generic[S]):
    event: Event
    position: Position  # the event's own position (not the trigger's)
    before: S | None
    after: S
    released: Pending | None = None  # set when the event waited in the queue


@dataclass(frozen=True, slots=True)
class Duplicate:
    event: Event
    position: Position
    released: Pending | None = None


@dataclass(frozen=True, slots=True)
class Parked:
    pending: Pending
    message: Message | None = None  # the incoming message (None: an already queued one)


@dataclass(frozen=True, slots=True)
class Dead:
    pending: Pending
    message: Message | None = None


Outcome = Applied[S] | Duplicate | Parked | Dead


@dataclass
class _Run(Generic[S]):
    keyed: Keyed[S]
    evolve: Evolve[S]
    now: datetime
    outcomes: list[Outcome[S]] = field(default_factory=list)

    def set_queue(self, queue: tuple[Pending, ...]) -> None:
        self.keyed = replace(self.keyed, queue=queue)

    def record(self, pending: Pending, message: Message | None) -> None:
        self.outcomes.append(
            Dead(pending, message) if pending.status == "dead" else Parked(pending, message)
        )


def receive(
    keyed: Keyed[S], message: Message, evolve: Evolve[S], now: datetime
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """The key's next value after `message`, and what happened to each message touched."""
    run = _Run(keyed, evolve, now)
    decoded = message.decoded
    since = datetime.fromtimestamp(message.timestamp, UTC)
    if isinstance(decoded, Invalid):
        dead = Pending(message.position, None, "dead", decoded.error_class, decoded.reason, since)
        _append(run, dead, message)
    elif decoded.event_id in run.keyed.applied:
        run.outcomes.append(Duplicate(decoded, message.position))
    elif run.keyed.queue and not _supplies(run.keyed.queue[0], decoded):
        head = run.keyed.queue[0]
        reason = f"waiting behind {head.id} ({head.status})"
        _append(
            run, Pending(message.position, decoded, "parked", "Sequenced", reason, since), message
        )
    else:
        failed = _attempt(run, decoded, message.position, None, since)
        if failed is not None:
            _append(run, failed, message)
        _drain(run)
    return run.keyed, run.outcomes


def release_head(
    keyed: Keyed[S], evolve: Evolve[S], now: datetime, replacement: Event | None = None
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """Operator replay of the head: apply it (or `replacement`), then retry the queue.

    If it still cannot be applied it stays the head, with its new status and error.
    """
    if not keyed.queue:
        return keyed, []
    run = _Run(keyed, evolve, now)
    head = keyed.queue[0]
    event = replacement or head.event
    if event is None:
        return keyed, []
    failed = _attempt(run, event, head.position, head, head.since)
    if failed is None:
        run.set_queue(run.keyed.queue[1:])
    else:
        run.set_queue((failed, *run.keyed.queue[1:]))
        run.record(failed, None)
    _drain(run)
    return run.keyed, run.outcomes


def drop_head(
    keyed: Keyed[S], evolve: Evolve[S], now: datetime
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """Operator discard of the head: remove it without applying, then retry the queue."""
    if not keyed.queue:
        return keyed, []
    run = _Run(replace(keyed, queue=keyed.queue[1:]), evolve, now)
    _drain(run)
    return run.keyed, run.outcomes


def _supplies(head: Pending, event: Event) -> bool:
    return head.status == "parked" and event.type in head.needs


def _append(run: _Run[S], pending: Pending, message: Message | None) -> None:
    run.set_queue((*run.keyed.queue, pending))
    run.record(pending, message)


def _attempt(
    run: _Run[S], event: Event, position: Position, queued: Pending | None, since: datetime
) -> Pending | None:
    """Apply `event` (recording the outcome) and return None, or return what it becomes.

    The failed event is not placed anywhere: the caller decides where it stands in the queue.
    """
    keyed = run.keyed
    if event.event_id in keyed.applied:
        run.outcomes.append(Duplicate(event, position, queued))
        return None
    try:
        after = run.evolve(keyed.state, event)
    except DependencyMissing as exc:
        return Pending(position, event, "parked", "DependencyMissing", str(exc), since, exc.needs)
    except LifecycleViolation as exc:
        return Pending(position, event, "dead", "LifecycleViolation", str(exc), since)
    run.keyed = replace(keyed, state=after, applied=keyed.applied | {event.event_id})
    run.outcomes.append(Applied(event, position, keyed.state, after, queued))
    return None


def _retry_at(run: _Run[S], index: int) -> bool:
    """Retry the queued item at `index`; True if it left the queue (applied or duplicate)."""
    queue = run.keyed.queue
    item = queue[index]
    assert item.event is not None  # only valid events are ever parked
    failed = _attempt(run, item.event, item.position, item, item.since)
    if failed is None:
        run.set_queue(queue[:index] + queue[index + 1 :])
        return True
    if (failed.status, failed.error, failed.needs) != (item.status, item.error, item.needs):
        run.set_queue((*queue[:index], failed, *queue[index + 1 :]))
        run.record(failed, None)
    return False


def _drain(run: _Run[S]) -> None:
    """Retry the queue in order until it is empty or its head cannot be applied.

    When the head waits for a dependency, the first queued event that supplies it is applied
    ahead of the head (the contract's one exception to order), and the head is retried.
    """
    while run.keyed.queue and run.keyed.queue[0].status == "parked":
        if _retry_at(run, 0):
            continue
        head = run.keyed.queue[0]
        if head.status != "parked":
            return
        supplier = next(
            (
                i
                for i, item in enumerate(run.keyed.queue[1:], 1)
                if item.status == "parked" and item.event and item.event.type in head.needs
            ),
            None,
        )
        if supplier is None or not _retry_at(run, supplier):
            return
