"""Per-key ordering with a sequenced dead-letter queue (contract §4 "Order"), as pure logic.

Each key (a loan) carries its aggregate state, the ids of the events applied to it, and a queue
of messages that could not be applied yet. `receive` takes one message for the key and returns
the key's next value plus what happened (outcomes), in order:

- an invalid message, or one that breaks the lifecycle, becomes a *dead* head of the queue and
  blocks the key until an operator replays or discards it;
- an event that arrives before what it depends on becomes a *parked* head;
- while the queue is not empty, later events park behind its head, except an event that supplies
  what a parked head waits for: it is applied at once, and then the queue is retried in order;
- an event whose `event_id` was already applied is a duplicate and changes nothing;
- an event whose application fails transiently (`Transient`) becomes a *retrying* head (a
  parked one with `error_class` "Transient"), retried after each backoff tier of the `Policy`
  and dead once the tiers are used up;
- a head parked for a missing dependency becomes dead after the policy's park deadline,
  counted from when it was first parked (processing time, so that catching up on a backlog
  older than the deadline does not kill events whose dependency is still unread).

Time moves only through `fire_timers` (the loan's `FireTimers` command) and through operator
commands (`replay`, `discard`), all of which go through the key's own stream, in order.
Nothing here does I/O or reads the clock: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from lendstream.domain.errors import DependencyMissing, LifecycleViolation, Transient
from lendstream.topics import BY_NAME
from lendstream.topics.codec import Invalid
from lendstream.topics.control import TOPIC as CONTROL_TOPIC
from lendstream.topics.control import DiscardDeadLetter, FireTimers, ReplayDeadLetter
from lendstream.topics.envelope import Event

S = TypeVar("S")
TRANSIENT = "Transient"
DEPENDENCY_MISSING = "DependencyMissing"
Evolve = Callable[[S | None, Event], S]


@dataclass(frozen=True, slots=True)
class Policy:
    """Timing of the queue: transient retries and the park deadline (both from settings)."""

    backoff: tuple[float, ...] = (1.0, 10.0, 60.0, 300.0)  # seconds before retry 1, 2, …
    park_deadline: float = 3600.0  # seconds a head may wait for a missing dependency

    @property
    def max_attempts(self) -> int:
        return len(self.backoff) + 1


DEFAULT_POLICY = Policy()


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
    attempts: int = 1  # how often it has been tried, whatever each attempt's failure
    retries: int = 0  # consecutive transient failures (the backoff tier in use)
    retry_at: datetime | None = None  # a transient failure: when to try again
    replayed: bool = False  # an operator asked to replay it (applied -> status "replayed")
    parked_at: datetime | None = None  # when it first waited for a dependency (processing time)

    @property
    def id(self) -> str:
        return self.position.dead_letter_id

    @property
    def retrying(self) -> bool:
        return self.status == "parked" and self.error_class == TRANSIENT

    def due_at(self, policy: Policy) -> datetime | None:
        """When a timer must look at this item as the head: a retry, or its park deadline."""
        if self.status != "parked":
            return None
        if self.retrying:
            return self.retry_at
        if self.error_class == DEPENDENCY_MISSING:
            parked = self.parked_at or self.since
            return parked + timedelta(seconds=policy.park_deadline)
        return None

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

    def next_due(self, policy: Policy) -> datetime | None:
        """When `fire_timers` has something to do for this key (None: nothing, ever): the
        head's retry or park deadline, or the retry of a supplier queued behind it."""
        if not self.queue:
            return None
        times = [self.queue[0].due_at(policy)]
        times += [p.retry_at for p in self.queue[1:] if p.retrying]
        return min((t for t in times if t is not None), default=None)


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


@dataclass(frozen=True, slots=True)
class Discarded:
    """An operator closed a dead letter without applying it (whether or not it was queued)."""

    dead_letter_id: str
    reason: str


Outcome = Applied[S] | Duplicate | Parked | Dead | Discarded


@dataclass
class _Run(Generic[S]):
    keyed: Keyed[S]
    evolve: Evolve[S]
    now: datetime
    policy: Policy = DEFAULT_POLICY
    outcomes: list[Outcome[S]] = field(default_factory=list)

    def set_queue(self, queue: tuple[Pending, ...]) -> None:
        self.keyed = replace(self.keyed, queue=queue)

    def record(self, pending: Pending, message: Message | None) -> None:
        self.outcomes.append(
            Dead(pending, message) if pending.status == "dead" else Parked(pending, message)
        )


def handle(
    keyed: Keyed[S],
    message: Message,
    evolve: Evolve[S],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """One message of any of the key's inputs: an event (`receive`) or a control command."""
    decoded = message.decoded
    if isinstance(decoded, ReplayDeadLetter):
        target, value = decoded.data.dead_letter_id, decoded.data.value
        return replay(keyed, target, evolve, now, policy, value, decoded.key)
    if isinstance(decoded, DiscardDeadLetter):
        target, reason = decoded.data.dead_letter_id, decoded.data.reason
        return discard(keyed, target, reason, evolve, now, policy)
    if isinstance(decoded, FireTimers):
        return fire_timers(keyed, evolve, now, policy)
    if isinstance(decoded, Invalid) and message.position.topic == CONTROL_TOPIC:
        # a malformed command is recorded, but never blocks the loan it names
        return keyed, [Dead(_invalid(message, decoded), message)]
    return receive(keyed, message, evolve, now, policy)


def _invalid(message: Message, decoded: Invalid) -> Pending:
    """The dead queue item an invalid message becomes."""
    since = datetime.fromtimestamp(message.timestamp, UTC)
    return Pending(message.position, None, "dead", decoded.error_class, decoded.reason, since)


def receive(
    keyed: Keyed[S],
    message: Message,
    evolve: Evolve[S],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """The key's next value after `message`, and what happened to each message touched."""
    run = _Run(keyed, evolve, now, policy)
    decoded = message.decoded
    since = datetime.fromtimestamp(message.timestamp, UTC)
    if any(p.position == message.position for p in run.keyed.queue):
        pass  # a redelivery of a message that is already queued
    elif isinstance(decoded, Invalid):
        _append(run, _invalid(message, decoded), message)
    elif decoded.event_id in run.keyed.applied:
        run.outcomes.append(Duplicate(decoded, message.position))
    elif run.keyed.queue and not _may_jump(run.keyed.queue, decoded):
        head = run.keyed.queue[0]
        reason = f"waiting behind {head.id} ({head.status})"
        _append(
            run, Pending(message.position, decoded, "parked", "Sequenced", reason, since), message
        )
    else:
        failed = _attempt(run, decoded, message.position, None, since)
        if failed is None:
            _drain(run)
        else:
            _append(run, failed, message)
    return run.keyed, run.outcomes


def replay(
    keyed: Keyed[S],
    item_id: str,
    evolve: Evolve[S],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
    value: dict[str, Any] | None = None,
    key: str | None = None,
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """Operator replay of the queued item `item_id`, optionally with a corrected `value`.

    The item is retried in its place in the queue: at once if it is the head (then what waits
    behind it follows), otherwise when its turn comes. If it still cannot be applied it stays
    where it is, with its new status and error. A corrected value that is not a valid event of
    the item's topic and `key` (the message key; by default the original event's) leaves the item dead, with the reason. An id that is not queued
    (already applied, replayed or discarded) changes nothing.
    """
    index = _index_of(keyed, item_id)
    if index is None:
        return keyed, []
    run = _Run(keyed, evolve, now, policy)
    item = keyed.queue[index]
    event = item.event
    if value is not None:
        decoded = BY_NAME[item.position.topic].validate(value, key or _key_of(item))
        if isinstance(decoded, Invalid):
            rejected = replace(
                item, status="dead", error=f"corrected value rejected: {decoded.reason}"
            )
            _replace_at(run, index, rejected)
            return run.keyed, run.outcomes
        event = decoded
    if event is None:
        return keyed, []  # an invalid message can only be replayed with a corrected value
    requeued = replace(
        item, event=event, status="parked", error_class="Replay", error="replay requested",
        needs=frozenset(), retry_at=None, replayed=True,
    )  # fmt: skip
    run.set_queue((*keyed.queue[:index], requeued, *keyed.queue[index + 1 :]))
    if index > 0:
        run.record(requeued, None)
    _drain(run)
    return run.keyed, run.outcomes


def discard(
    keyed: Keyed[S],
    item_id: str,
    reason: str,
    evolve: Evolve[S],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """Operator discard of `item_id`: closed without being applied; if it was the head, the
    queue behind it is retried in order. Always yields `Discarded`, so that a dead letter that
    is in no queue (a malformed command) can be closed too."""
    run = _Run(keyed, evolve, now, policy, [Discarded(item_id, reason)])
    index = _index_of(keyed, item_id)
    if index is None:
        return keyed, run.outcomes
    run.set_queue(keyed.queue[:index] + keyed.queue[index + 1 :])
    if index == 0:
        _drain(run)
    return run.keyed, run.outcomes


def fire_timers(
    keyed: Keyed[S], evolve: Evolve[S], now: datetime, policy: Policy = DEFAULT_POLICY
) -> tuple[Keyed[S], list[Outcome[S]]]:
    """What time does to the queue: a head that waited for a missing dependency for longer
    than the park deadline becomes dead; otherwise the retries that are due (of the head, or of
    a supplier queued behind it) are made. Early or repeated calls change nothing."""
    due = keyed.next_due(policy)
    if due is None or due > now:
        return keyed, []
    run = _Run(keyed, evolve, now, policy)
    head = keyed.queue[0]
    deadline = None if head.retrying else head.due_at(policy)
    if deadline is not None and deadline <= now:
        waited = f"parked for more than {policy.park_deadline:g}s"
        expired = replace(
            head, status="dead", error_class="ParkDeadline", error=f"{waited}: {head.error}"
        )
        _replace_at(run, 0, expired)
    else:
        _drain(run)
    return run.keyed, run.outcomes


def _index_of(keyed: Keyed[S], item_id: str) -> int | None:
    return next((i for i, p in enumerate(keyed.queue) if p.id == item_id), None)


def _key_of(item: Pending) -> str | None:
    return item.event.key if item.event else None


def _replace_at(run: _Run[S], index: int, item: Pending) -> None:
    queue = run.keyed.queue
    run.set_queue((*queue[:index], item, *queue[index + 1 :]))
    run.record(item, None)


def _supplies(head: Pending, event: Event) -> bool:
    return head.status == "parked" and event.type in head.needs


def _may_jump(queue: tuple[Pending, ...], event: Event) -> bool:
    """Whether `event` may be applied ahead of the queue: it supplies what the head waits for,
    and no earlier supplier is waiting for a transient retry (suppliers keep their order)."""
    return _supplies(queue[0], event) and not any(p.retrying for p in queue[1:])


def _append(run: _Run[S], pending: Pending, message: Message | None) -> None:
    run.set_queue((*run.keyed.queue, pending))
    run.record(pending, message)


def _attempt(
    run: _Run[S], event: Event, position: Position, queued: Pending | None, since: datetime
) -> Pending | None:
    """Apply `event` (recording the outcome) and return None, or return what it becomes.

    The failed event is not placed anywhere: the caller decides where it stands in the queue.
    A replay request survives a failure that only parks the event, not one that kills it.
    """
    keyed = run.keyed
    if event.event_id in keyed.applied:
        run.outcomes.append(Duplicate(event, position, queued))
        return None
    replayed = queued.replayed if queued else False
    attempts = queued.attempts + 1 if queued else 1
    try:
        after = run.evolve(keyed.state, event)
    except DependencyMissing as exc:
        parked_at = queued.parked_at if queued and queued.parked_at else run.now
        return Pending(
            position, event, "parked", DEPENDENCY_MISSING, str(exc), since, exc.needs,
            attempts=attempts, replayed=replayed, parked_at=parked_at,
        )  # fmt: skip
    except LifecycleViolation as exc:
        return Pending(
            position, event, "dead", "LifecycleViolation", str(exc), since, attempts=attempts
        )
    except Transient as exc:
        return _transient(run, event, position, queued, since, str(exc))
    run.keyed = replace(keyed, state=after, applied=keyed.applied | {event.event_id})
    run.outcomes.append(Applied(event, position, keyed.state, after, queued))
    return None


def _transient(
    run: _Run[S], event: Event, position: Position, queued: Pending | None, since: datetime,
    error: str,
) -> Pending:  # fmt: skip
    """A retrying item after one more failed attempt, or a dead one when none are left."""
    attempts = queued.attempts + 1 if queued else 1
    retries = queued.retries + 1 if queued is not None and queued.retrying else 1
    if retries >= run.policy.max_attempts:
        reason = f"gave up after {retries} attempts: {error}"
        return Pending(
            position, event, "dead", TRANSIENT, reason, since, attempts=attempts, retries=retries
        )
    retry_at = run.now + timedelta(seconds=run.policy.backoff[retries - 1])
    return Pending(
        position, event, "parked", TRANSIENT, error, since, attempts=attempts, retries=retries,
        retry_at=retry_at, replayed=queued.replayed if queued else False,
    )  # fmt: skip


def _retry_at(run: _Run[S], index: int) -> bool:
    """Retry the queued item at `index`; True if it left the queue (applied or duplicate)."""
    queue = run.keyed.queue
    item = queue[index]
    assert item.event is not None  # only valid events are ever parked
    failed = _attempt(run, item.event, item.position, item, item.since)
    if failed is None:
        run.set_queue(queue[:index] + queue[index + 1 :])
        return True
    if failed != item:
        _replace_at(run, index, failed)
    return False


def _drain(run: _Run[S]) -> None:
    """Retry the queue in order until it is empty or its head cannot be applied.

    When the head waits for a dependency, the first queued event that supplies it is applied
    ahead of the head (the contract's one exception to order), and the head is retried. A head
    whose transient retry is not due yet is left alone.
    """
    while run.keyed.queue and run.keyed.queue[0].status == "parked":
        if not _due(run, run.keyed.queue[0]):
            return
        if _retry_at(run, 0):
            continue
        head = run.keyed.queue[0]
        if head.status != "parked" or head.retrying or not _apply_a_supplier(run, head):
            return


def _due(run: _Run[S], item: Pending) -> bool:
    """Whether `item` may be tried now (a transient retry waits for its time)."""
    return not (item.retrying and item.retry_at is not None and item.retry_at > run.now)


def _apply_a_supplier(run: _Run[S], head: Pending) -> bool:
    """Apply the first queued event, in order, that supplies what `head` waits for and can be
    applied now (a supplier may itself wait for another one further back). A supplier that is
    waiting for a transient retry stops the search: a later one must not overtake it."""
    index = 1
    while index < len(run.keyed.queue):
        item = run.keyed.queue[index]
        if item.status == "parked" and item.event and item.event.type in head.needs:
            if not _due(run, item):
                return False  # it keeps its place before later suppliers
            if _retry_at(run, index):
                return True
            if run.keyed.queue[index].retrying:
                return False
        index += 1
    return False
