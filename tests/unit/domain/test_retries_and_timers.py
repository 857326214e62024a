"""Transient retries with backoff tiers, park deadlines, and operator commands by id (contract
§4 "Order", issue 3): the pure half of the failure handling."""

from __future__ import annotations

from datetime import timedelta

from lendstream.domain.loans import Loan, LoanStatus, evolve
from lendstream.domain.sequencing import (
    Applied,
    Dead,
    Discarded,
    Keyed,
    Message,
    Parked,
    Policy,
    Position,
    discard,
    fire_timers,
    handle,
    receive,
    replay,
)
from lendstream.topics import Invalid
from lendstream.topics.control import (
    TOPIC as CONTROL,
)
from lendstream.topics.control import (
    DiscardDeadLetter,
    FireTimers,
    ReplayDeadLetter,
)
from tests.faults import FlakyEvolve
from tests.unit.domain.factories import (
    NOW,
    T0,
    Feed,
    applied,
    approved,
    at,
    feed,
    paid_out,
    payout_requested,
    repayment,
)

S = LoanStatus
EMPTY: Keyed[Loan] = Keyed()
POLICY = Policy(backoff=(1.0, 10.0), park_deadline=60.0)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def approved_keyed(f: Feed) -> Keyed[Loan]:
    keyed, _ = feed(EMPTY, [f.message(applied(when=at(0))), f.message(approved(when=at(1)))])
    return keyed


# -- transient failures -------------------------------------------------------------------


def test_a_transient_failure_retries_after_each_tier_while_later_events_wait() -> None:
    f = Feed()
    keyed = approved_keyed(f)
    pr = payout_requested(when=at(2))
    flaky = FlakyEvolve(evolve, {pr.event_id: 2})
    keyed, outcomes = receive(keyed, f.message(pr), flaky, NOW, POLICY)
    head = keyed.queue[0]
    assert [type(o) for o in outcomes] == [Parked]
    assert (head.status, head.error_class, head.attempts) == ("parked", "Transient", 1)
    assert head.retry_at == NOW + seconds(1)
    assert keyed.next_due(POLICY) == NOW + seconds(1)

    lpo = paid_out(when=at(3))
    keyed, outcomes = receive(keyed, f.message(lpo), flaky, NOW, POLICY)
    assert [o.pending.error_class for o in outcomes] == ["Sequenced"]  # type: ignore[union-attr]

    early, nothing = fire_timers(keyed, flaky, NOW + seconds(0.5), POLICY)
    assert (early, nothing) == (keyed, [])

    keyed, outcomes = fire_timers(keyed, flaky, NOW + seconds(1), POLICY)
    assert keyed.queue[0].attempts == 2
    assert keyed.queue[0].retry_at == NOW + seconds(11)
    assert [type(o) for o in outcomes] == [Parked]

    keyed, outcomes = fire_timers(keyed, flaky, NOW + seconds(11), POLICY)
    assert [(type(o).__name__, o.event.type) for o in outcomes] == [  # type: ignore[union-attr]
        ("Applied", "PayoutRequested"),
        ("Applied", "LoanPaidOut"),
    ]
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.PAID_OUT


def test_a_transient_failure_is_dead_once_the_tiers_are_used_up() -> None:
    f = Feed()
    keyed = approved_keyed(f)
    pr = payout_requested(when=at(2))
    flaky = FlakyEvolve(evolve, {pr.event_id: 99})
    keyed, _ = receive(keyed, f.message(pr), flaky, NOW, POLICY)
    keyed, _ = fire_timers(keyed, flaky, NOW + seconds(1), POLICY)
    keyed, outcomes = fire_timers(keyed, flaky, NOW + seconds(11), POLICY)
    head = keyed.queue[0]
    assert [type(o) for o in outcomes] == [Dead]
    assert (head.status, head.error_class, head.attempts) == ("dead", "Transient", 3)
    assert "gave up after 3 attempts" in head.error
    assert keyed.next_due(POLICY) is None
    assert flaky.attempts[pr.event_id] == 3 == POLICY.max_attempts


def test_a_new_event_does_not_retry_a_transient_head_early() -> None:
    f = Feed()
    keyed = approved_keyed(f)
    pr = payout_requested(when=at(2))
    flaky = FlakyEvolve(evolve, {pr.event_id: 1})
    keyed, _ = receive(keyed, f.message(pr), flaky, NOW, POLICY)
    keyed, _ = receive(keyed, f.message(paid_out(when=at(3))), flaky, NOW, POLICY)
    assert flaky.attempts[pr.event_id] == 1
    assert len(keyed.queue) == 2


def test_other_keys_are_not_held_up_by_a_retrying_key() -> None:
    f = Feed()
    l1 = approved_keyed(f)
    pr = payout_requested(when=at(2))
    flaky = FlakyEvolve(evolve, {pr.event_id: 1})
    l1, _ = receive(l1, f.message(pr), flaky, NOW, POLICY)
    l2, outcomes = receive(EMPTY, f.message(applied(loan_id="L2")), flaky, NOW, POLICY)
    assert [type(o) for o in outcomes] == [Applied] and l2.queue == ()


# -- park deadline ------------------------------------------------------------------------


def parked_repayment(f: Feed) -> tuple[Keyed[Loan], Message]:
    keyed = approved_keyed(f)
    message = f.message(repayment(amount=1_000, when=at(3)), timestamp=T0.timestamp())
    keyed, _ = receive(keyed, message, evolve, NOW, POLICY)
    assert keyed.queue[0].error_class == "DependencyMissing"
    return keyed, message


def test_a_parked_head_is_dead_after_the_park_deadline_counted_from_parking() -> None:
    """The message was appended long before (a backlog): the deadline starts when it parks."""
    f = Feed()
    keyed, message = parked_repayment(f)
    assert keyed.next_due(POLICY) == NOW + seconds(60)
    same, nothing = fire_timers(keyed, evolve, NOW + seconds(59), POLICY)
    assert (same, nothing) == (keyed, [])
    keyed, outcomes = fire_timers(keyed, evolve, NOW + seconds(60), POLICY)
    head = keyed.queue[0]
    assert [type(o) for o in outcomes] == [Dead]
    assert (head.status, head.error_class) == ("dead", "ParkDeadline")
    assert "parked for more than 60s" in head.error
    assert head.position == message.position
    again, nothing = fire_timers(keyed, evolve, NOW + seconds(999), POLICY)
    assert (again, nothing) == (keyed, [])


def test_retrying_a_parked_head_does_not_restart_its_deadline() -> None:
    f = Feed()
    keyed, _ = parked_repayment(f)
    later = NOW + seconds(30)
    keyed, outcomes = receive(keyed, f.message(payout_requested(when=at(4))), evolve, later, POLICY)
    assert [type(o) for o in outcomes] == [Applied, Parked]  # supplier applied, head re-parked
    assert keyed.queue[0].parked_at == NOW
    assert keyed.next_due(POLICY) == NOW + seconds(60)


def test_events_waiting_behind_a_head_do_not_expire_on_their_own() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(Invalid("NotJson", "x"))])
    keyed, _ = receive(keyed, f.message(applied(when=at(0))), evolve, NOW, POLICY)
    assert keyed.queue[1].error_class == "Sequenced"
    assert keyed.next_due(POLICY) is None


# -- operator commands by id --------------------------------------------------------------


def test_replay_of_an_item_behind_the_head_waits_for_its_turn() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000, when=at(0)))])
    bad = f.message(Invalid("NotJson", "x"))
    too_much = f.message(approved(amount=9_000, when=at(1)))
    keyed, _ = feed(keyed, [bad, too_much])
    assert [p.status for p in keyed.queue] == ["dead", "parked"]
    keyed, _ = feed(keyed, [])
    keyed, outcomes = replay(keyed, too_much.position.dead_letter_id, evolve, NOW, POLICY)
    assert [type(o) for o in outcomes] == [Parked]
    assert keyed.queue[1].replayed and keyed.queue[1].error_class == "Replay"

    keyed, outcomes = discard(keyed, bad.position.dead_letter_id, "garbage", evolve, NOW, POLICY)
    assert outcomes[0] == Discarded(bad.position.dead_letter_id, "garbage")
    dead = outcomes[1]
    assert isinstance(dead, Dead) and dead.pending.error_class == "LifecycleViolation"
    assert keyed.queue[0].status == "dead"


def test_replay_with_a_corrected_value_is_applied_and_marked_replayed() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000, when=at(0)))])
    keyed, _ = feed(keyed, [f.message(approved(amount=9_000, when=at(1)))])
    head = keyed.queue[0]
    corrected = approved(amount=4_000, when=at(1)).model_dump(mode="json")
    keyed, outcomes = replay(keyed, head.id, evolve, NOW, POLICY, corrected, "L1")
    first = outcomes[0]
    assert isinstance(first, Applied) and first.released is not None and first.released.replayed
    assert keyed.state is not None and keyed.state.approved_amount_cents == 4_000


def test_replay_with_an_invalid_corrected_value_leaves_it_dead_with_the_reason() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(amount=5_000, when=at(0)))])
    keyed, _ = feed(keyed, [f.message(approved(amount=9_000, when=at(1)))])
    head = keyed.queue[0]
    wrong_key = approved(amount=4_000, loan_id="L9").model_dump(mode="json")
    keyed, outcomes = replay(keyed, head.id, evolve, NOW, POLICY, wrong_key, "L1")
    assert [type(o) for o in outcomes] == [Dead]
    assert keyed.queue[0].status == "dead"
    assert "corrected value rejected" in keyed.queue[0].error and "L9" in keyed.queue[0].error


def test_replay_and_discard_of_an_unknown_id_change_nothing_but_discard_still_closes_it() -> None:
    f = Feed()
    keyed = approved_keyed(f)
    assert replay(keyed, "loan-events:0:999", evolve, NOW, POLICY) == (keyed, [])
    after, outcomes = discard(keyed, "loan-events:0:999", "stale", evolve, NOW, POLICY)
    assert after == keyed and outcomes == [Discarded("loan-events:0:999", "stale")]


def test_a_redelivered_queued_message_is_not_queued_twice() -> None:
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(Invalid("NotJson", "x"))])
    keyed, outcomes = receive(
        keyed, Message(keyed.queue[0].position, "L1", 0.0, Invalid("NotJson", "x")), evolve, NOW
    )
    assert len(keyed.queue) == 1 and outcomes == []


# -- control commands ---------------------------------------------------------------------


def control(f: Feed, command: str, data: dict[str, object]) -> Message:
    model = {"ReplayDeadLetter": ReplayDeadLetter, "DiscardDeadLetter": DiscardDeadLetter,
             "FireTimers": FireTimers}[command]  # fmt: skip
    event = model.model_validate(
        {"event_id": f"c-{command}", "type": command, "occurred_at": NOW.isoformat(),
         "loan_id": "L1", "data": data}
    )  # fmt: skip
    return f.message(event, topic=CONTROL)


def test_handle_dispatches_control_commands() -> None:
    f = Feed()
    keyed, message = parked_repayment(f)
    timers = control(f, "FireTimers", {})
    keyed, outcomes = handle(keyed, timers, evolve, NOW + seconds(60), POLICY)
    assert keyed.queue[0].status == "dead" and [type(o) for o in outcomes] == [Dead]

    keyed, _ = receive(keyed, f.message(payout_requested(when=at(4))), evolve, NOW, POLICY)
    keyed, _ = receive(keyed, f.message(paid_out(when=at(5))), evolve, NOW, POLICY)
    replay_cmd = control(f, "ReplayDeadLetter", {"dead_letter_id": message.position.dead_letter_id})
    keyed, outcomes = handle(keyed, replay_cmd, evolve, NOW, POLICY)
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.REPAYING

    discard_cmd = control(f, "DiscardDeadLetter", {"dead_letter_id": "x:0:1", "reason": "r"})
    assert handle(keyed, discard_cmd, evolve, NOW, POLICY) == (keyed, [Discarded("x:0:1", "r")])


def test_a_malformed_command_is_dead_but_blocks_nothing() -> None:
    f = Feed()
    keyed = approved_keyed(f)
    bad = f.message(Invalid("NotJson", "x"), topic=CONTROL)
    after, outcomes = handle(keyed, bad, evolve, NOW, POLICY)
    assert after == keyed
    assert [type(o) for o in outcomes] == [Dead]
    assert outcomes[0].pending.position == Position(CONTROL, 0, 0)  # type: ignore[union-attr]


def test_a_supplier_that_fails_transiently_is_retried_by_the_timers() -> None:
    """Found by the crash test: the approval a parked repayment waits for fails transiently and
    queues behind it; its retry must come from the timers, not from the head's deadline."""
    f = Feed()
    keyed, _ = feed(EMPTY, [f.message(applied(when=at(0)))])
    keyed, _ = receive(keyed, f.message(repayment(amount=1_000, when=at(3))), evolve, NOW, POLICY)
    approval = approved(when=at(1))
    flaky = FlakyEvolve(evolve, {approval.event_id: 1})
    keyed, _ = receive(keyed, f.message(approval), flaky, NOW, POLICY)
    assert [(p.error_class, p.retrying) for p in keyed.queue] == [
        ("DependencyMissing", False), ("Transient", True),
    ]  # fmt: skip
    assert keyed.next_due(POLICY) == NOW + seconds(1)

    early, nothing = fire_timers(keyed, flaky, NOW + seconds(0.5), POLICY)
    assert (early, nothing) == (keyed, [])
    keyed, outcomes = fire_timers(keyed, flaky, NOW + seconds(1), POLICY)
    assert any(isinstance(o, Applied) and o.event == approval for o in outcomes)
    assert keyed.state is not None and keyed.state.status == S.APPROVED
    assert [p.error_class for p in keyed.queue] == ["DependencyMissing"]


def test_a_later_supplier_does_not_overtake_one_that_is_retrying() -> None:
    """Found by the crash test: a repayment waits for the payout; PayoutRequested fails
    transiently, then LoanPaidOut arrives. LoanPaidOut must wait for PayoutRequested, or the
    loan would be paid out before the payout was requested (and the request then be dead)."""
    f = Feed()
    keyed = approved_keyed(f)
    keyed, _ = receive(keyed, f.message(repayment(amount=1_000, when=at(4))), evolve, NOW, POLICY)
    pr, lpo = payout_requested(when=at(2)), paid_out(when=at(3))
    flaky = FlakyEvolve(evolve, {pr.event_id: 1})
    keyed, _ = receive(keyed, f.message(pr), flaky, NOW, POLICY)
    keyed, outcomes = receive(keyed, f.message(lpo), flaky, NOW, POLICY)
    assert [o.pending.error_class for o in outcomes] == ["Sequenced"]  # type: ignore[union-attr]

    keyed, outcomes = fire_timers(keyed, flaky, NOW + seconds(1), POLICY)
    applied_types = [o.event.type for o in outcomes if isinstance(o, Applied)]
    assert applied_types == ["PayoutRequested", "LoanPaidOut", "RepaymentReceived"]
    assert keyed.queue == ()
    assert keyed.state is not None and keyed.state.status == S.REPAYING
