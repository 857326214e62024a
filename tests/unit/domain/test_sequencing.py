"""Per-key ordering with a sequenced dead-letter queue (contract §2 duplicates, §4 "Order")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lendstream.domain.loans import Loan, LoanStatus, evolve
from lendstream.domain.sequencing import (
    Applied,
    Dead,
    Discarded,
    Duplicate,
    Keyed,
    Message,
    Outcome,
    Parked,
    Pending,
    Position,
    discard,
    receive,
    replay,
)
from lendstream.topics import Event, Invalid
from tests.unit.domain.factories import (
    NOW,
    T0,
    Feed,
    applied,
    approved,
    at,
    canceled,
    feed,
    fold,
    funds_reserved,
    make,
    paid_out,
    payout_requested,
    payout_sent,
    rejected,
    repayment,
)

S = LoanStatus
EMPTY: Keyed[Loan] = Keyed()


def kinds(outcomes: list[Outcome[Loan]]) -> list[tuple[str, str]]:
    """(outcome, event type) pairs: a compact picture of what happened."""
    result = []
    for outcome in outcomes:
        if isinstance(outcome, Applied | Duplicate):
            result.append((type(outcome).__name__, outcome.event.type))
        else:
            event = outcome.pending.event
            result.append((type(outcome).__name__, event.type if event else "invalid"))
    return result


def release_head(
    keyed: Keyed[Loan], evolve_: object, now: object, replacement: Event | None = None
) -> tuple[Keyed[Loan], list[Outcome[Loan]]]:
    """Operator replay of the head (optionally with a corrected event)."""
    head_id = keyed.queue[0].id if keyed.queue else "nothing-queued"
    value = replacement.model_dump(mode="json") if replacement else None
    key = replacement.key if replacement else None
    return replay(keyed, head_id, evolve, NOW, value=value, key=key)


def drop_head(
    keyed: Keyed[Loan], evolve_: object, now: object
) -> tuple[Keyed[Loan], list[Outcome[Loan]]]:
    """Operator discard of the head; the `Discarded` outcome comes first and is checked here."""
    head_id = keyed.queue[0].id if keyed.queue else "nothing-queued"
    after, outcomes = discard(keyed, head_id, "test", evolve, NOW)
    assert outcomes[0] == Discarded(head_id, "test")
    return after, outcomes[1:]


def queue_types(keyed: Keyed[Loan]) -> list[tuple[str, str, str]]:
    return [(p.event.type if p.event else "invalid", p.status, p.error_class) for p in keyed.queue]


def approved_loan(feed_: Feed, *, amount: int = 100_000) -> Keyed[Loan]:
    keyed, outcomes = feed(
        EMPTY,
        [
            feed_.message(applied(amount=amount, when=at(0))),
            feed_.message(approved(amount=amount, when=at(1))),
        ],
    )
    assert all(isinstance(o, Applied) for o in outcomes)
    return keyed


def payout_pending_loan(feed_: Feed) -> Keyed[Loan]:
    keyed = approved_loan(feed_)
    keyed, _ = feed(keyed, [feed_.message(payout_requested(when=at(2)))])
    assert keyed.state is not None and keyed.state.status == S.PAYOUT_PENDING
    return keyed


# -- in order ---------------------------------------------------------------------------------


def test_events_in_order_are_applied() -> None:
    f = Feed()
    events = [applied(when=at(0)), approved(when=at(1)), canceled(when=at(2))]
    messages = [f.message(e) for e in events]
    keyed, outcomes = feed(EMPTY, messages)
    assert kinds(outcomes) == [
        ("Applied", "LoanApplied"),
        ("Applied", "LoanApproved"),
        ("Applied", "LoanCanceled"),
    ]
    assert keyed.state == fold(events)
    assert keyed.applied == {e.event_id for e in events}
    assert keyed.queue == ()
    first = outcomes[0]
    assert isinstance(first, Applied)
    assert first.before is None and first.after.status == S.APPLIED
    assert first.position == messages[0].position
    assert first.released is None


# -- duplicates -------------------------------------------------------------------------------


def test_a_duplicate_changes_nothing() -> None:
    f = Feed()
    event = applied()
    keyed, _ = receive(EMPTY, f.message(event), evolve, NOW)
    again = f.message(event)
    after, outcomes = receive(keyed, again, evolve, NOW)
    assert after == keyed
    assert outcomes == [Duplicate(event, again.position)]


def test_a_duplicate_with_other_content_but_the_same_event_id_changes_nothing() -> None:
    f = Feed()
    keyed = approved_loan(f)
    replay = approved(amount=1, event_id=next(iter(sorted(keyed.applied))))
    after, outcomes = receive(keyed, f.message(replay), evolve, NOW)
    assert after == keyed
    assert kinds(outcomes) == [("Duplicate", replay.type)]


def test_a_duplicate_of_an_applied_event_does_not_park_behind_a_blocked_head() -> None:
    f = Feed()
    event = applied()
    keyed, _ = feed(EMPTY, [f.message(event), f.message(Invalid("NotJson", "value is not JSON"))])
    after, outcomes = receive(keyed, f.message(event), evolve, NOW)
    assert after == keyed
    assert kinds(outcomes) == [("Duplicate", "LoanApplied")]


def test_a_redelivered_parked_event_is_applied_once() -> None:
    f = Feed()
    keyed = payout_pending_loan(f)
    early = repayment(amount=1_000)
    keyed, outcomes = feed(keyed, [f.message(early), f.message(early), f.message(paid_out())])
    assert kinds(outcomes) == [
        ("Parked", "RepaymentReceived"),
        ("Parked", "RepaymentReceived"),
        ("Applied", "LoanPaidOut"),
        ("Applied", "RepaymentReceived"),
        ("Duplicate", "RepaymentReceived"),
    ]
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.repaid_cents == 1_000
    duplicate = outcomes[-1]
    assert isinstance(duplicate, Duplicate) and duplicate.released is not None


# -- invalid messages -------------------------------------------------------------------------


def test_an_invalid_message_becomes_a_dead_head_that_blocks_the_key() -> None:
    f = Feed()
    keyed = approved_loan(f)
    bad = f.message(Invalid("ValidationError", "data.amount_cents: Input should be > 0"))
    keyed, outcomes = receive(keyed, bad, evolve, NOW)
    assert outcomes == [Dead(keyed.queue[0], bad)]
    head = keyed.queue[0]
    assert head == Pending(
        bad.position,
        None,
        "dead",
        "ValidationError",
        "data.amount_cents: Input should be > 0",
        keyed.queue[0].since,
    )
    assert head.since.timestamp() == bad.timestamp
    assert head.id == f"{bad.position.topic}:0:{bad.position.offset}"
    assert head.event_id is None

    state = keyed.state
    later = [payout_requested(), funds_reserved(), payout_sent(), paid_out()]
    keyed, outcomes = feed(keyed, [f.message(e) for e in later])
    assert keyed.state == state  # nothing applied behind the dead head
    assert kinds(outcomes) == [("Parked", e.type) for e in later]
    for outcome, pending in zip(outcomes, keyed.queue[1:], strict=True):
        assert isinstance(outcome, Parked)
        assert outcome.pending == pending
        assert outcome.message is not None and outcome.message.position == pending.position
        assert pending.status == "parked"
        assert pending.error_class == "Sequenced"
        assert head.id in pending.error


def test_an_invalid_message_blocks_even_the_events_that_would_supply_a_dependency() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(Invalid("NotJson", "x"), topic="payment-events")])
    keyed, outcomes = feed(keyed, [f.message(applied())])
    assert kinds(outcomes) == [("Parked", "LoanApplied")]
    assert keyed.state is None


# -- parking and releasing --------------------------------------------------------------------


def test_a_repayment_before_payout_parks_and_is_released_by_loan_paid_out() -> None:
    f = Feed()
    keyed = payout_pending_loan(f)
    r1, r2 = repayment(amount=60_000, when=at(10)), repayment(amount=50_000, when=at(11))
    fr, ps, lpo = funds_reserved(when=at(3)), payout_sent(when=at(4)), paid_out(when=at(5))

    keyed, outcomes = feed(keyed, [f.message(r1)])
    assert kinds(outcomes) == [("Parked", "RepaymentReceived")]
    head = keyed.queue[0]
    assert (head.status, head.error_class, head.needs) == (
        "parked",
        "DependencyMissing",
        {"LoanPaidOut"},
    )

    keyed, outcomes = feed(keyed, [f.message(r2), f.message(fr), f.message(ps)])
    assert queue_types(keyed) == [
        ("RepaymentReceived", "parked", "DependencyMissing"),
        ("RepaymentReceived", "parked", "Sequenced"),
        ("FundsReserved", "parked", "Sequenced"),
        ("PayoutSent", "parked", "Sequenced"),
    ]
    assert keyed.state is not None and keyed.state.status == S.PAYOUT_PENDING

    lpo_message = f.message(lpo)
    keyed, outcomes = feed(keyed, [lpo_message])
    assert kinds(outcomes) == [
        ("Applied", "LoanPaidOut"),
        ("Applied", "RepaymentReceived"),
        ("Applied", "RepaymentReceived"),
        ("Applied", "FundsReserved"),
        ("Applied", "PayoutSent"),
    ]
    assert keyed.queue == ()
    released = [o for o in outcomes if isinstance(o, Applied) and o.released]
    assert [o.event for o in released] == [r1, r2, fr, ps]
    assert [o.position for o in released] == [o.released.position for o in released]  # type: ignore[union-attr]
    first = outcomes[0]
    assert isinstance(first, Applied) and first.released is None
    assert first.position == lpo_message.position
    state = keyed.state
    assert state is not None
    assert (state.status, state.repaid_cents, state.outstanding_cents) == (S.SETTLED, 110_000, 0)
    assert state.settled_at == at(11)
    # applied in causal order: the same loan as folding the events in order
    assert state == fold([fr, ps, lpo, r1, r2], payout_pending_loan(Feed()).state)


def test_events_for_an_unknown_loan_park_until_loan_applied() -> None:
    f = Feed()
    la, ap = applied(when=at(0)), approved(when=at(1))
    keyed, outcomes = feed(EMPTY, [f.message(ap)])
    assert kinds(outcomes) == [("Parked", "LoanApproved")]
    assert keyed.queue[0].needs == {"LoanApplied"}
    assert keyed.state is None

    keyed, outcomes = feed(keyed, [f.message(la)])
    assert kinds(outcomes) == [("Applied", "LoanApplied"), ("Applied", "LoanApproved")]
    assert keyed.queue == ()
    assert keyed.state == fold([la, ap])


def test_a_parked_head_records_what_it_waits_for_as_that_changes() -> None:
    f = Feed()
    r1 = repayment(amount=1_000)
    keyed, _ = feed(EMPTY, [f.message(r1)])
    assert keyed.queue[0].needs == {"LoanApplied"}
    keyed, outcomes = feed(keyed, [f.message(applied())])
    assert kinds(outcomes) == [("Applied", "LoanApplied"), ("Parked", "RepaymentReceived")]
    assert keyed.queue[0].needs == {"LoanApproved", "PayoutRequested", "LoanPaidOut"}
    assert isinstance(outcomes[1], Parked) and outcomes[1].message is None
    keyed, outcomes = feed(keyed, [f.message(approved())])
    assert keyed.queue[0].needs == {"PayoutRequested", "LoanPaidOut"}
    keyed, outcomes = feed(keyed, [f.message(payout_requested())])
    assert keyed.queue[0].needs == {"LoanPaidOut"}
    keyed, outcomes = feed(keyed, [f.message(paid_out())])
    assert kinds(outcomes) == [("Applied", "LoanPaidOut"), ("Applied", "RepaymentReceived")]
    assert keyed.queue == ()


def test_a_supplier_that_cannot_be_applied_yet_parks_at_the_end() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(repayment()), f.message(applied())])
    # the repayment waits for LoanApproved | PayoutRequested | LoanPaidOut; a PayoutRequested
    # supplies it but itself waits for the approval
    keyed, outcomes = feed(keyed, [f.message(payout_requested())])
    assert kinds(outcomes) == [("Parked", "PayoutRequested")]
    assert queue_types(keyed) == [
        ("RepaymentReceived", "parked", "DependencyMissing"),
        ("PayoutRequested", "parked", "DependencyMissing"),
    ]
    assert keyed.queue[1].needs == {"LoanApproved"}
    keyed, outcomes = feed(keyed, [f.message(approved()), f.message(paid_out())])
    assert [o.event.type for o in outcomes if isinstance(o, Applied)] == [
        "LoanApproved",
        "PayoutRequested",
        "LoanPaidOut",
        "RepaymentReceived",
    ]
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.REPAYING


def test_a_non_supplying_event_waits_behind_a_parked_head() -> None:
    f = Feed()
    keyed = payout_pending_loan(f)
    keyed, _ = feed(keyed, [f.message(repayment())])
    keyed, outcomes = feed(keyed, [f.message(canceled())])
    assert kinds(outcomes) == [("Parked", "LoanCanceled")]
    assert keyed.queue[1].error_class == "Sequenced"
    assert keyed.state is not None and keyed.state.status == S.PAYOUT_PENDING


# -- lifecycle violations, replay and discard -------------------------------------------------


def blocked_by_violation(f: Feed) -> tuple[Keyed[Loan], list[Event]]:
    """A loan whose approval (above the applied amount) is dead, with events parked behind."""
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000, when=at(0)))])
    too_much = approved(amount=6_000, when=at(1))
    keyed, outcomes = feed(keyed, [f.message(too_much)])
    assert kinds(outcomes) == [("Dead", "LoanApproved")]
    head = keyed.queue[0]
    assert (head.status, head.error_class, head.event) == ("dead", "LifecycleViolation", too_much)
    assert "above applied" in head.error
    later = [
        payout_requested(amount=5_000, when=at(2)),
        paid_out(amount=5_000, when=at(3)),
        repayment(amount=1_000, when=at(4)),
    ]
    keyed, outcomes = feed(keyed, [f.message(e) for e in later])
    assert kinds(outcomes) == [("Parked", e.type) for e in later]
    assert keyed.state is not None and keyed.state.status == S.APPLIED
    return keyed, later


def test_a_lifecycle_violation_is_dead_and_blocks_even_suppliers() -> None:
    f = Feed()
    keyed, _ = blocked_by_violation(f)
    keyed, outcomes = feed(keyed, [f.message(approved(amount=5_000))])
    assert kinds(outcomes) == [("Parked", "LoanApproved")]
    assert keyed.state is not None and keyed.state.status == S.APPLIED


def test_an_upstream_event_on_a_closed_loan_is_dead_at_once() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied()), f.message(rejected())])
    keyed, outcomes = feed(keyed, [f.message(repayment())])
    assert kinds(outcomes) == [("Dead", "RepaymentReceived")]
    assert keyed.queue[0].error_class == "LifecycleViolation"


def test_release_head_with_a_replacement_applies_it_then_the_queue_in_order() -> None:
    f = Feed()
    keyed, later = blocked_by_violation(f)
    head = keyed.queue[0]
    fixed = approved(amount=5_000, bps=500, when=at(1))
    keyed, outcomes = release_head(keyed, evolve, NOW, fixed)
    assert kinds(outcomes) == [("Applied", "LoanApproved")] + [("Applied", e.type) for e in later]
    first = outcomes[0]
    assert isinstance(first, Applied)
    assert first.released is not None and first.released.id == head.id and first.released.replayed
    assert first.position == head.position
    assert keyed.queue == ()
    assert fixed.event_id in keyed.applied
    assert head.event_id not in keyed.applied
    state = keyed.state
    assert state is not None
    assert (state.status, state.approved_amount_cents, state.repaid_cents) == (
        S.REPAYING,
        5_000,
        1_000,
    )


def test_release_head_that_still_fails_stays_the_head() -> None:
    f = Feed()
    keyed, _ = blocked_by_violation(f)
    still_bad = approved(amount=7_000)
    after, outcomes = release_head(keyed, evolve, NOW, still_bad)
    assert kinds(outcomes) == [("Dead", "LoanApproved")]
    assert after.queue[0].event == still_bad
    assert after.queue[0].position == keyed.queue[0].position
    assert after.queue[1:] == keyed.queue[1:]
    assert after.state == keyed.state


def test_release_head_without_a_replacement_retries_the_head_itself() -> None:
    """A parked repayment that outlived its deadline was made dead; LoanPaidOut then queued."""
    f = Feed()
    keyed = payout_pending_loan(f)
    r1 = repayment(amount=2_000)
    keyed, _ = feed(keyed, [f.message(r1)])
    expired = replace(keyed.queue[0], status="dead", error_class="ParkDeadline", error="expired")
    keyed = replace(keyed, queue=(expired,))
    lpo = paid_out()
    keyed, outcomes = feed(keyed, [f.message(lpo)])
    assert kinds(outcomes) == [("Parked", "LoanPaidOut")]  # a dead head lets nothing through

    keyed, outcomes = release_head(keyed, evolve, NOW)
    assert kinds(outcomes) == [
        ("Parked", "RepaymentReceived"),  # still waiting: back to parked, needs LoanPaidOut
        ("Applied", "LoanPaidOut"),
        ("Applied", "RepaymentReceived"),
    ]
    assert keyed.queue == ()
    assert keyed.state is not None
    assert (keyed.state.status, keyed.state.repaid_cents) == (S.REPAYING, 2_000)


def test_release_head_applies_a_head_that_became_applicable() -> None:
    f = Feed()
    keyed = payout_pending_loan(f)
    lpo_done, _ = feed(keyed, [f.message(paid_out())])
    r1, r2 = repayment(amount=1_000), repayment(amount=2_000)
    pending = Pending(Position("payment-events", 0, 99), r1, "dead", "ParkDeadline", "x", T0)
    keyed = replace(lpo_done, queue=(pending,))
    keyed, outcomes = feed(keyed, [f.message(r2)])
    assert kinds(outcomes) == [("Parked", "RepaymentReceived")]
    keyed, outcomes = release_head(keyed, evolve, NOW)
    assert [o.event for o in outcomes if isinstance(o, Applied)] == [r1, r2]
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.repaid_cents == 3_000


def test_release_head_of_an_invalid_message_needs_a_replacement() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(Invalid("NotJson", "garbage")), f.message(applied())])
    assert release_head(keyed, evolve, NOW) == (keyed, [])
    keyed, outcomes = release_head(keyed, evolve, NOW, applied(event_id="fixed"))
    assert kinds(outcomes) == [("Applied", "LoanApplied"), ("Dead", "LoanApplied")]
    assert queue_types(keyed) == [("LoanApplied", "dead", "LifecycleViolation")]


def test_release_and_drop_on_an_empty_queue_do_nothing() -> None:
    f = Feed()
    keyed = approved_loan(f)
    assert release_head(keyed, evolve, NOW) == (keyed, [])
    assert drop_head(keyed, evolve, NOW) == (keyed, [])


def test_drop_head_skips_the_head_and_releases_the_rest() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(when=at(0)))])
    bad = f.message(Invalid("UnknownType", "type: 'LoanFrozen' is not an event of loan-events"))
    ap, pr = approved(when=at(1)), payout_requested(when=at(2))
    keyed, _ = feed(keyed, [bad, f.message(ap), f.message(pr)])
    assert queue_types(keyed)[0] == ("invalid", "dead", "UnknownType")

    keyed, outcomes = drop_head(keyed, evolve, NOW)
    assert kinds(outcomes) == [("Applied", "LoanApproved"), ("Applied", "PayoutRequested")]
    assert all(isinstance(o, Applied) and o.released for o in outcomes)
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.PAYOUT_PENDING


def test_drop_head_of_a_violation_does_not_apply_it() -> None:
    f = Feed()
    keyed, later = blocked_by_violation(f)
    dropped = keyed.queue[0]
    keyed, outcomes = drop_head(keyed, evolve, NOW)
    assert dropped.event_id not in keyed.applied
    # without the approval, what was parked behind it still cannot be applied: a PayoutRequested
    # waits for the approval, and the rest waits behind it
    assert kinds(outcomes) == [("Parked", "PayoutRequested")]
    assert keyed.queue[0].needs == {"LoanApproved"}
    assert [p.event for p in keyed.queue] == later
    keyed, outcomes = feed(keyed, [f.message(approved(amount=5_000))])
    assert kinds(outcomes) == [("Applied", "LoanApproved")] + [("Applied", e.type) for e in later]
    assert keyed.queue == ()


def test_drop_head_then_a_dead_next_item_becomes_the_head() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000))])
    keyed, _ = feed(keyed, [f.message(Invalid("NotJson", "x")), f.message(approved(amount=9_000))])
    keyed, outcomes = drop_head(keyed, evolve, NOW)
    assert kinds(outcomes) == [("Dead", "LoanApproved")]
    assert queue_types(keyed) == [("LoanApproved", "dead", "LifecycleViolation")]


def test_an_event_id_of_a_dead_letter_is_not_a_duplicate() -> None:
    f = Feed()
    keyed, later = blocked_by_violation(f)
    dead_id = keyed.queue[0].event_id
    assert dead_id is not None and dead_id not in keyed.applied
    corrected = approved(amount=5_000, event_id=dead_id)
    keyed, outcomes = feed(keyed, [f.message(corrected)])
    assert kinds(outcomes) == [("Parked", "LoanApproved")]  # queued behind the head, not dropped
    keyed, outcomes = drop_head(keyed, evolve, NOW)
    assert kinds(outcomes) == [
        ("Parked", "PayoutRequested"),  # now the head: waits for an approval
        ("Applied", "LoanApproved"),  # the corrected approval supplies it
        *[("Applied", e.type) for e in later],
    ]
    assert outcomes[1].event is corrected  # type: ignore[union-attr]
    assert dead_id in keyed.applied
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.REPAYING


def test_an_event_id_of_a_discarded_dead_letter_is_applied_as_new() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000))])
    keyed, _ = feed(keyed, [f.message(approved(amount=6_000, event_id="A1"))])
    keyed, _ = drop_head(keyed, evolve, NOW)
    assert keyed.queue == () and "A1" not in keyed.applied
    keyed, outcomes = feed(keyed, [f.message(approved(amount=5_000, event_id="A1"))])
    assert kinds(outcomes) == [("Applied", "LoanApproved")]
    assert keyed.state is not None and keyed.state.approved_amount_cents == 5_000


# -- keys are independent ---------------------------------------------------------------------


def test_other_loans_are_never_held_up() -> None:
    f = Feed()
    states: dict[str, Keyed[Loan]] = {}
    messages = [
        f.message(Invalid("NotJson", "x"), key="L1"),
        f.message(applied("L1")),
        f.message(applied("L2")),
        f.message(approved("L2")),
    ]
    for message in messages:
        states[message.key], _ = receive(states.get(message.key, EMPTY), message, evolve, NOW)
    assert states["L1"].state is None and len(states["L1"].queue) == 2
    assert states["L2"].queue == ()
    assert states["L2"].state is not None and states["L2"].state.status == S.APPROVED


# -- cross-topic interleaving -----------------------------------------------------------------


def loan_events() -> tuple[list[Event], list[Event], list[Event]]:
    """One loan's events per topic: loan-events, payout-events, payment-events."""
    return (
        [applied(when=at(0)), approved(when=at(1))],
        [
            payout_requested(when=at(2)),
            funds_reserved(when=at(3)),
            payout_sent(when=at(4)),
            paid_out(when=at(5)),
        ],
        [
            repayment(amount=40_000, when=at(100)),
            repayment(amount=40_000, when=at(200)),
            repayment(amount=30_000, when=at(300)),
        ],
    )


def run(events: list[Event]) -> tuple[Keyed[Loan], list[Outcome[Loan]]]:
    f = Feed()
    return feed(EMPTY, [f.message(e) for e in events])


@pytest.mark.parametrize(
    "order",
    [
        ("payments", "loans", "payouts"),
        ("payments", "payouts", "loans"),
        ("payouts", "payments", "loans"),
        ("payouts", "loans", "payments"),
        ("loans", "payments", "payouts"),
    ],
)
def test_topics_consumed_out_of_causal_order_end_in_the_causal_state(
    order: tuple[str, ...],
) -> None:
    loans, payouts, payments = loan_events()
    causal, causal_outcomes = run([*loans, *payouts, *payments])
    assert all(isinstance(o, Applied) for o in causal_outcomes)
    by_topic = {"loans": loans, "payouts": payouts, "payments": payments}
    keyed, outcomes = run([e for topic in order for e in by_topic[topic]])
    assert keyed == causal
    assert keyed.queue == ()
    state = keyed.state
    assert state is not None
    assert (state.status, state.repaid_cents, state.version) == (S.SETTLED, 110_000, 7)
    # every event was applied exactly once, and repayments in their own order
    applied_events = [o.event for o in outcomes if isinstance(o, Applied)]
    assert sorted(e.event_id for e in applied_events) == sorted(causal.applied)
    assert [e for e in applied_events if e.type == "RepaymentReceived"] == payments


def test_payments_before_loan_and_payout_events_park_then_drain() -> None:
    loans, payouts, payments = loan_events()
    keyed, outcomes = run([*payments, *loans, *payouts])
    assert kinds(outcomes)[:3] == [("Parked", "RepaymentReceived")] * 3
    applied_order = [o.event.type for o in outcomes if isinstance(o, Applied)]
    assert applied_order == [
        "LoanApplied",
        "LoanApproved",
        "PayoutRequested",
        "LoanPaidOut",  # supplies the parked repayment: applied at once
        "RepaymentReceived",
        "RepaymentReceived",
        "RepaymentReceived",
        "FundsReserved",  # parked behind the repayments, applied in arrival order
        "PayoutSent",
    ]
    assert keyed.queue == ()


def test_dead_outcome_carries_the_incoming_message() -> None:
    f = Feed()
    message: Message = f.message(Invalid("NotJson", "x"))
    _, outcomes = receive(EMPTY, message, evolve, NOW)
    assert isinstance(outcomes[0], Dead) and outcomes[0].message is message


def test_make_builds_strict_events() -> None:
    event = make("LoanRejected", {"reason": "r"}, "L9", at(1), "id-1", correlation_id="c1")
    assert (event.key, event.event_id, event.correlation_id) == ("L9", "id-1", "c1")


def test_a_supplier_that_cannot_apply_yet_does_not_stop_the_next_supplier() -> None:
    """Found by the crash test: a repayment, the payout, the approval and then the application
    of an unknown loan arrive in that order (three topics). The payout is the first supplier of
    the parked repayment but needs the approval, which comes after it in the queue."""
    f = Feed()
    events = [applied(when=at(0)), approved(when=at(1)), paid_out(when=at(2)),
              repayment(amount=1_000, when=at(3))]  # fmt: skip
    arrival = [events[3], events[2], events[1], events[0]]
    keyed, _ = feed(EMPTY, [f.message(e) for e in arrival])
    assert keyed.queue == ()
    assert keyed.state == fold(events)
