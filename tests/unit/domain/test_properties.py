"""Property tests: redelivery, duplicates and cross-topic interleaving never change the result.

A generated stream holds one or several loans' causal lifecycles (every end state of contract
§4), merged with each loan's own order kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lendstream.domain.loans import Loan, LoanStatus, evolve, total_due
from lendstream.domain.sequencing import (
    Keyed,
    Message,
    Policy,
    Position,
    fire_timers,
    handle,
    receive,
)
from lendstream.topics import Event
from tests.faults import FlakyEvolve
from tests.unit.domain.factories import NOW, T0, make, payout_id

S = LoanStatus
PROPERTY = settings(max_examples=150, deadline=None, database=None)
TOPICS = ("loan-events", "payout-events", "payment-events")
#: Event types that change the loan's row (and so its version); the rest are saga steps.
ROW_EVENTS = {
    "LoanApplied",
    "LoanApproved",
    "LoanRejected",
    "LoanCanceled",
    "PayoutRequested",
    "PayoutFailed",
    "LoanPaidOut",
    "RepaymentReceived",
}


@dataclass(frozen=True)
class Lifecycle:
    loan_id: str
    events: tuple[tuple[str, Event], ...]  # (topic, event) in causal order
    status: LoanStatus  # where it ends
    repaid: int


@st.composite
def lifecycles(draw: st.DrawFn, loan_id: str) -> Lifecycle:
    currency = draw(st.sampled_from(["EUR", "USD", "GBP", "JPY"]))
    partner = draw(st.sampled_from(["P1", "P2"]))
    amount = draw(st.integers(1, 10_000_000))
    start = T0 + timedelta(minutes=draw(st.integers(0, 10_000)))
    out: list[tuple[str, Event]] = []

    def emit(topic: str, kind: str, data: dict[str, Any]) -> None:
        n = len(out)
        when = start + timedelta(minutes=n * draw(st.integers(1, 60)))
        event = make(kind, data, loan_id, when, f"{loan_id}-{n}")
        out.append((topic, event))

    def done(status: LoanStatus, repaid: int = 0) -> Lifecycle:
        return Lifecycle(loan_id, tuple(out), status, repaid)

    emit("loan-events", "LoanApplied", {
        "customer_id": f"C-{loan_id}", "partner_id": partner, "amount_cents": amount,
        "currency": currency, "term_months": draw(st.integers(1, 480)),
    })  # fmt: skip
    path = draw(
        st.sampled_from(
            [
                "applied",
                "rejected",
                "canceled",
                "approved",
                "canceled_after_approval",
                "payout_pending",
                "payout_failed",
                "reservation_failed",
                "paid_out",
            ]
        )
    )
    if path == "applied":
        return done(S.APPLIED)
    if path in ("rejected", "canceled"):
        kind = "LoanRejected" if path == "rejected" else "LoanCanceled"
        emit("loan-events", kind, {"reason": draw(st.sampled_from(["r1", "r2"]))})
        return done(S(path))
    approved = draw(st.integers(1, amount))
    bps = draw(st.sampled_from([0, 1, 250, 499, 1_200, 10_000]))
    emit(
        "loan-events", "LoanApproved", {"approved_amount_cents": approved, "interest_rate_bps": bps}
    )
    if path == "approved":
        return done(S.APPROVED)
    if path == "canceled_after_approval":
        emit("loan-events", "LoanCanceled", {"reason": "withdrawn"})
        return done(S.CANCELED)
    pid = payout_id(loan_id)
    emit("payout-events", "PayoutRequested", {
        "payout_id": pid, "partner_id": partner, "amount_cents": approved, "currency": currency,
    })  # fmt: skip
    if path == "payout_pending":
        return done(S.PAYOUT_PENDING)
    reserved = {"payout_id": pid, "partner_id": partner, "amount_cents": approved}
    if path == "reservation_failed":
        failed = {"payout_id": pid, "partner_id": partner, "reason": "credit line exhausted"}
        emit("payout-events", "FundsReservationFailed", failed)
        emit("payout-events", "PayoutFailed", {"payout_id": pid, "reason": "limit"})
        return done(S.PAYOUT_FAILED)
    emit("payout-events", "FundsReserved", reserved)
    if path == "payout_failed":
        emit("payout-events", "PayoutFailed", {"payout_id": pid, "reason": "gateway said no"})
        emit("payout-events", "FundsReleased", reserved)
        return done(S.PAYOUT_FAILED)
    emit("payout-events", "PayoutSent", {"payout_id": pid})
    emit("payout-events", "LoanPaidOut", {
        "payout_id": pid, "amount_cents": approved, "currency": currency,
    })  # fmt: skip
    due = total_due(approved, bps)
    repaid = 0
    for pay in draw(st.lists(st.integers(1, due + 10), max_size=5)):
        emit("payment-events", "RepaymentReceived", {
            "payment_id": f"pay-{loan_id}-{len(out)}", "amount_cents": pay, "currency": currency,
        })  # fmt: skip
        repaid += pay
        if repaid >= due:
            return done(S.SETTLED, repaid)
    return done(S.REPAYING if repaid else S.PAID_OUT, repaid)


@st.composite
def merged(draw: st.DrawFn, max_loans: int = 3) -> tuple[list[Lifecycle], list[tuple[str, Event]]]:
    """Several loans' lifecycles, merged keeping each loan's causal order."""
    count = draw(st.integers(1, max_loans))
    loans = [draw(lifecycles(f"L{n}")) for n in range(count)]
    slots = [n for n, loan in enumerate(loans) for _ in loan.events]
    order = draw(st.permutations(slots))
    cursors = [0] * count
    stream = []
    for n in order:
        stream.append(loans[n].events[cursors[n]])
        cursors[n] += 1
    return loans, stream


def to_messages(stream: list[tuple[str, Event]]) -> list[Message]:
    """Positions by topic, in stream order: redelivery reuses the original's position."""
    offsets: dict[str, int] = {}
    seen: dict[str, Position] = {}
    messages = []
    for topic, event in stream:
        if event.event_id not in seen:
            seen[event.event_id] = Position(topic, 0, offsets.get(topic, 0))
            offsets[topic] = offsets.get(topic, 0) + 1
        position = seen[event.event_id]
        stamp = event.occurred_at.timestamp()
        messages.append(Message(position, event.key, stamp, event))
    return messages


def run(stream: list[tuple[str, Event]]) -> dict[str, Keyed[Loan]]:
    states: dict[str, Keyed[Loan]] = {}
    for message in to_messages(stream):
        keyed = states.get(message.key, Keyed())
        states[message.key], _ = receive(keyed, message, evolve, NOW)
    return states


def check_expected(loans: list[Lifecycle], states: dict[str, Keyed[Loan]]) -> None:
    """The final state agrees with the lifecycle the generator wrote."""
    assert set(states) == {loan.loan_id for loan in loans}
    for loan in loans:
        keyed = states[loan.loan_id]
        assert keyed.queue == ()
        assert keyed.applied == {e.event_id for _, e in loan.events}
        state = keyed.state
        assert state is not None
        assert state.status == loan.status
        assert state.repaid_cents == loan.repaid
        assert state.version == sum(e.type in ROW_EVENTS for _, e in loan.events)
        last_row_change = [e for _, e in loan.events if e.type in ROW_EVENTS][-1]
        assert state.updated_at == last_row_change.occurred_at
        if state.status in (S.PAID_OUT, S.REPAYING):
            assert state.outstanding_cents == (state.total_due_cents or 0) - state.repaid_cents > 0
        else:
            assert state.outstanding_cents == 0


@PROPERTY
@given(merged())
def test_the_generated_stream_applies_cleanly(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]],
) -> None:
    loans, stream = generated
    check_expected(loans, run(stream))


@PROPERTY
@given(merged(), st.data())
def test_replaying_a_prefix_changes_nothing(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]], data: st.DataObject
) -> None:
    """(a) Redelivery after a crash: a prefix, then the whole stream again."""
    _, stream = generated
    cut = data.draw(st.integers(0, len(stream)), label="prefix")
    assert run(stream[:cut] + stream) == run(stream)


@PROPERTY
@given(merged(), st.data())
def test_a_duplicate_anywhere_after_its_original_changes_nothing(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]], data: st.DataObject
) -> None:
    """(b) One event delivered twice, the copy anywhere after the original."""
    _, stream = generated
    original = data.draw(st.integers(0, len(stream) - 1), label="original")
    copy_at = data.draw(st.integers(original + 1, len(stream)), label="copy at")
    duplicated = [*stream[:copy_at], stream[original], *stream[copy_at:]]
    assert run(duplicated) == run(stream)


def topic_interleavings(
    stream: list[tuple[str, Event]],
) -> st.SearchStrategy[list[tuple[str, Event]]]:
    """Any merge of the per-topic subsequences of `stream` (each topic keeps its order)."""
    by_topic = {topic: [item for item in stream if item[0] == topic] for topic in TOPICS}
    slots = [topic for topic in TOPICS for _ in by_topic[topic]]

    def merge(order: list[str]) -> list[tuple[str, Event]]:
        iters = {topic: iter(items) for topic, items in by_topic.items()}
        return [next(iters[topic]) for topic in order]

    return st.permutations(slots).map(merge)


@PROPERTY
@given(merged(), st.data())
def test_any_interleaving_of_the_topics_ends_in_the_same_state(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]], data: st.DataObject
) -> None:
    """(c) The three loan-keyed topics consumed in any relative order."""
    loans, stream = generated
    shuffled = data.draw(topic_interleavings(stream), label="interleaving")
    final = run(shuffled)
    assert final == run(stream)
    check_expected(loans, final)


@PROPERTY
@given(merged(max_loans=2), st.data())
def test_interleaving_and_redelivery_together_end_in_the_same_state(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]], data: st.DataObject
) -> None:
    """(a) and (c) at once: a crash part way through an out-of-order consumption."""
    _, stream = generated
    shuffled = data.draw(topic_interleavings(stream), label="interleaving")
    cut = data.draw(st.integers(0, len(shuffled)), label="prefix")
    assert run(shuffled[:cut] + shuffled) == run(stream)


@PROPERTY
@given(merged(max_loans=2), st.data())
def test_transient_failures_and_timers_anywhere_end_in_the_same_state(
    generated: tuple[list[Lifecycle], list[tuple[str, Event]]], data: st.DataObject
) -> None:
    """(d) Any interleaving, with chosen events failing transiently once or twice and the
    timers firing at any moment: once every retry has been made, the loans end as their causal
    lifecycles say (nothing reordered, nothing lost)."""
    loans, stream = generated
    shuffled = data.draw(topic_interleavings(stream), label="interleaving")
    ids = sorted({event.event_id for _, event in stream})
    failing = data.draw(
        st.dictionaries(st.sampled_from(ids), st.integers(1, 2), max_size=4), label="failing"
    )
    flaky = FlakyEvolve(evolve, failing)
    policy = Policy(backoff=(1.0, 1.0, 1.0))
    states: dict[str, Keyed[Loan]] = {}
    now = NOW

    def fire_all() -> None:
        for key, keyed in states.items():
            states[key], _ = fire_timers(keyed, flaky, now, policy)

    for message in to_messages(shuffled):
        states[message.key], _ = handle(
            states.get(message.key, Keyed()), message, flaky, now, policy
        )
        now += timedelta(seconds=data.draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]), label="wait"))
        if data.draw(st.booleans(), label="timers fire"):
            fire_all()
    for _ in range(3 * policy.max_attempts):
        now += timedelta(seconds=1)
        fire_all()
    check_expected(loans, states)
