"""The payout saga (contract §5) end to end in the pure choreography of `world.World`."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lendstream.domain.errors import LifecycleViolation
from lendstream.domain.loans import LoanStatus
from lendstream.domain.sequencing import Policy
from lendstream.sagas import payout
from lendstream.sagas.payout import (
    CallGateway,
    Emit,
    GatewayResult,
    SagaPolicy,
    ToTreasury,
    classify_status,
)
from lendstream.sagas.treasury import Release
from tests.unit.sagas.world import World

HAPPY = ["PayoutRequested", "FundsReserved", "PayoutSent", "LoanPaidOut"]
TRANSIENT = GatewayResult("transient", "gateway answered HTTP 503")
PERMANENT = GatewayResult("permanent", "gateway answered HTTP 422")
SENT = GatewayResult("sent", "HTTP 201")


def invariant(world: World) -> None:
    for line in world.lines.values():
        assert line.reserved_cents >= 0
        assert line.outstanding_cents >= 0
        assert line.in_use_cents == sum(h.in_use_cents for _, h in line.holds)


def reservations_within_limit(world: World) -> None:
    """A reservation never makes in_use exceed the limit (the line's limit never lowered)."""
    for line in world.lines.values():
        assert line.in_use_cents <= line.limit_cents


def balanced(world: World) -> None:
    sums: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in world.ledger:
        sums[entry.event_id][entry.direction] += entry.amount_cents
    for per_event in sums.values():
        assert per_event["debit"] == per_event["credit"] > 0


def make_world(limit: int | None = 1_000_000, currency: str = "EUR", **kw: object) -> World:
    world = World(checks=[invariant, reservations_within_limit, balanced], **kw)  # type: ignore[arg-type]
    if limit is not None:
        world.set_line("P1", currency, limit)
    return world


def scripted(*results: GatewayResult):  # type: ignore[no-untyped-def]
    """A gateway answering `results` in order, then sent."""
    queue = list(results)

    def answer(call: CallGateway) -> GatewayResult:
        return queue.pop(0) if queue else SENT

    return answer


def test_happy_path_pays_out_once_and_fans_out() -> None:
    world = make_world()
    world.open_loan(amount=100_000)
    assert world.types() == HAPPY
    saga = world.sagas["L1"]
    assert (saga.status, saga.step, saga.attempts) == ("completed", "paid_out", 1)
    assert saga.next_due is None
    assert world.loans["L1"].status == LoanStatus.PAID_OUT
    assert [c.payout_id for c in world.calls] == ["payout:L1"]
    call = world.calls[0]
    assert (call.loan_id, call.customer_id, call.amount_cents, call.currency) == (
        "L1", "C1", 100_000, "EUR",
    )  # fmt: skip
    line = world.lines["P1"]
    assert (line.reserved_cents, line.outstanding_cents, line.in_use_cents) == (0, 100_000, 100_000)
    assert [n.kind for n in world.notifications] == ["paid_out"]
    assert [(d.partner_id, d.payouts, d.amount_cents) for d in world.daily] == [("P1", 1, 100_000)]
    paid_out = next(e for e in world.payout_events if e.type == "LoanPaidOut")
    assert paid_out.event_id == "payout:L1:LoanPaidOut"
    assert paid_out.data.amount_cents == 100_000  # type: ignore[attr-defined]


def test_emitted_events_carry_correlation_and_causation() -> None:
    world = make_world()
    world.open_loan()
    events = {e.type: e for e in world.payout_events}
    assert all(
        e.correlation_id == events["PayoutRequested"].correlation_id for e in events.values()
    )
    assert events["FundsReserved"].causation_id == "payout:L1:PayoutRequested"
    assert events["LoanPaidOut"].causation_id == "payout:L1:PayoutSent"


def test_repayments_return_principal_then_book_interest() -> None:
    world = make_world()
    world.open_loan(amount=100_000, rate_bps=1000)  # total due 110_000
    pay = {"payment_id": "p1", "amount_cents": 60_000, "currency": "EUR"}
    world.loan("RepaymentReceived", pay)
    assert world.lines["P1"].in_use_cents == 40_000
    world.loan("RepaymentReceived", {**pay, "payment_id": "p2", "amount_cents": 60_000})
    assert world.lines["P1"].in_use_cents == 0
    assert world.lines["P1"].holds == ()
    assert world.loans["L1"].status == LoanStatus.SETTLED
    assert [n.kind for n in world.notifications] == ["paid_out", "settled"]
    by_account = Counter()
    for entry in world.ledger:
        by_account[(entry.account, entry.direction)] += entry.amount_cents
    assert by_account[("loans_receivable", "credit")] == 100_000
    assert by_account[("interest_income", "credit")] == 10_000
    assert by_account[("customer_overpayment", "credit")] == 10_000
    assert by_account[("cash", "debit")] == 120_000


def test_no_credit_line_fails_the_payout() -> None:
    world = make_world(limit=None)
    world.open_loan()
    assert world.types() == ["PayoutRequested", "FundsReservationFailed", "PayoutFailed"]
    failed = next(e for e in world.payout_events if e.type == "FundsReservationFailed")
    assert failed.data.reason == "no credit line"  # type: ignore[attr-defined]
    assert world.loans["L1"].status == LoanStatus.PAYOUT_FAILED
    assert world.sagas["L1"].status == "failed"
    assert world.calls == []
    assert [n.kind for n in world.notifications] == ["payout_failed"]


def test_insufficient_credit_fails_and_holds_nothing() -> None:
    world = make_world(limit=150_000)
    world.open_loan("L1", amount=100_000)
    world.open_loan("L2", amount=60_000)
    assert world.types("L2") == ["PayoutRequested", "FundsReservationFailed", "PayoutFailed"]
    assert world.loans["L2"].closed_reason.startswith("funds reservation failed: insufficient")  # type: ignore[union-attr]
    assert world.lines["P1"].in_use_cents == 100_000
    world.open_loan("L3", amount=50_000)  # exactly the rest
    assert world.loans["L3"].status == LoanStatus.PAID_OUT
    assert world.lines["P1"].available_cents == 0


def test_currency_mismatch_fails_reservation() -> None:
    world = make_world(currency="USD")
    world.open_loan(currency="EUR")
    failed = next(e for e in world.payout_events if e.type == "FundsReservationFailed")
    assert failed.data.reason == "currency mismatch"  # type: ignore[attr-defined]
    assert world.loans["L1"].status == LoanStatus.PAYOUT_FAILED


def test_transient_failures_then_success() -> None:
    world = make_world(gateway=scripted(TRANSIENT, TRANSIENT))
    world.open_loan()
    saga = world.sagas["L1"]
    assert (saga.step, saga.attempts, saga.last_error) == ("sending", 1, TRANSIENT.reason)
    world.settle_all()
    assert world.types() == HAPPY
    assert [c.attempt for c in world.calls] == [1, 2, 3]
    assert {c.payout_id for c in world.calls} == {"payout:L1"}  # one Idempotency-Key
    assert world.sagas["L1"].status == "completed"


def test_retry_waits_for_the_backoff_tier() -> None:
    policy = SagaPolicy(Policy(backoff=(10.0, 100.0)), deadline=900)
    world = make_world(gateway=scripted(TRANSIENT, TRANSIENT), policy=policy)
    world.open_loan()
    world.tick(9)
    assert len(world.calls) == 1
    world.tick(1)
    assert len(world.calls) == 2
    world.tick(99)
    assert len(world.calls) == 2
    world.tick(1)
    assert world.sagas["L1"].status == "completed"


def test_attempts_used_up_is_a_permanent_failure_and_releases_funds() -> None:
    world = make_world(gateway=scripted(*[TRANSIENT] * 10))
    world.open_loan()
    world.settle_all()
    assert len(world.calls) == SagaPolicy().retry.max_attempts
    assert world.types() == [
        "PayoutRequested", "FundsReserved", "PayoutFailed", "FundsReleased",
    ]  # fmt: skip
    assert world.sagas["L1"].status == "compensated"
    assert world.loans["L1"].status == LoanStatus.PAYOUT_FAILED
    assert "gave up after 5 attempts" in (world.loans["L1"].closed_reason or "")
    assert world.lines["P1"].in_use_cents == 0


def test_permanent_failure_compensates() -> None:
    world = make_world(gateway=scripted(PERMANENT))
    world.open_loan()
    assert world.types() == ["PayoutRequested", "FundsReserved", "PayoutFailed", "FundsReleased"]
    assert world.loans["L1"].closed_reason == PERMANENT.reason
    assert world.sagas["L1"].status == "compensated"
    assert world.lines["P1"].in_use_cents == 0
    assert len(world.calls) == 1
    assert [n.kind for n in world.notifications] == ["payout_failed"]
    assert world.ledger == [] and world.daily == []


def test_deadline_passed_while_retrying_compensates() -> None:
    policy = SagaPolicy(Policy(backoff=(60.0,) * 20), deadline=200)
    world = make_world(gateway=scripted(*[TRANSIENT] * 50), policy=policy)
    world.open_loan()
    world.settle_all()
    assert len(world.calls) == 4  # at 0, 60, 120, 180; the next would pass the deadline
    assert world.sagas["L1"].status == "compensated"
    assert payout.DEADLINE_PASSED in (world.loans["L1"].closed_reason or "")
    assert world.lines["P1"].in_use_cents == 0


def test_deadline_passed_before_reservation_answer_fails_without_calling() -> None:
    world = make_world(policy=SagaPolicy(deadline=100))
    world.open_loan()
    saga = world.sagas["L1"]
    # replay the saga from a state stuck in `reserving` past its deadline
    stuck = payout.PayoutSaga(**{**_fields(saga), "status": "running", "step": "reserving",
                                 "attempts": 0, "wake_at": saga.started_at})  # fmt: skip
    reserved = next(e for e in world.payout_events if e.type == "FundsReserved")
    late = saga.deadline_at + timedelta(seconds=1)
    after, commands = payout.react(stuck, reserved, late)
    assert after is not None and after.step == "releasing"
    assert [type(c) for c in commands] == [Emit, ToTreasury]
    assert isinstance(commands[1], ToTreasury) and isinstance(commands[1].command, Release)


def test_timer_after_deadline_while_sending_fails() -> None:
    world = make_world(policy=SagaPolicy(deadline=100))
    world.open_loan()
    saga = world.sagas["L1"]
    sending = payout.PayoutSaga(**{**_fields(saga), "status": "running", "step": "sending",
                                   "wake_at": saga.deadline_at})  # fmt: skip
    after, commands = payout.on_timer(sending, saga.deadline_at)
    assert after.failure == payout.DEADLINE_PASSED
    assert isinstance(commands[0], Emit) and commands[0].event.type == "PayoutFailed"


def test_cancel_before_sending_releases_reserved_funds() -> None:
    # the gateway never answers in time: the loan is canceled while the reservation is held
    world = make_world()
    world.gateway = lambda call: pytest.fail("the gateway must not be called")
    world.loan("LoanApplied", {"customer_id": "C1", "partner_id": "P1", "amount_cents": 5_000,
                               "currency": "EUR", "term_months": 12})  # fmt: skip
    world.apply(world_approval(world))
    # carry out only PayoutRequested and the reservation, then cancel before FundsReserved
    while world.outbox and not _next_is(world, "FundsReserved"):
        world.run_one()
    world.loan("LoanCanceled", {"reason": "customer withdrew"})
    world.run()
    assert world.types() == ["PayoutRequested", "FundsReserved", "FundsReleased"]
    assert world.loans["L1"].status == LoanStatus.CANCELED
    assert world.sagas["L1"].status == "compensated"
    assert world.lines["P1"].in_use_cents == 0
    assert world.calls == []


def test_cancel_before_the_reservation_was_asked_reserves_nothing() -> None:
    world = make_world()
    world.loan("LoanApplied", {"customer_id": "C1", "partner_id": "P1", "amount_cents": 5_000,
                               "currency": "EUR", "term_months": 12})  # fmt: skip
    world.apply(world_approval(world))  # PayoutRequested is now in the outbox
    world.apply(_cancel_event())
    saga = world.sagas["L1"]
    requested = world.outbox.popleft()
    assert isinstance(requested, Emit)
    after, commands = payout.react(saga, requested.event, world.now)
    assert after is not None and after.status == "compensated" and commands == []


def test_cancel_after_payout_sent_is_a_lifecycle_violation() -> None:
    world = make_world()
    world.open_loan()
    world.loan("LoanCanceled", {"reason": "too late"})
    assert world.dead and "after the payout was sent" in world.dead[-1][1]
    assert world.loans["L1"].status == LoanStatus.PAID_OUT


def test_cancel_while_gateway_retrying_is_a_lifecycle_violation() -> None:
    world = make_world(gateway=scripted(TRANSIENT))
    world.open_loan()
    assert world.sagas["L1"].step == "sending"
    with pytest.raises(LifecycleViolation):
        payout.react(world.sagas["L1"], _cancel_event(), world.now)
    world.loan("LoanCanceled", {"reason": "too late"})
    assert world.loans["L1"].status == LoanStatus.PAYOUT_PENDING
    world.settle_all()
    assert world.loans["L1"].status == LoanStatus.PAID_OUT


def test_lowering_the_limit_below_in_use_only_stops_new_reservations() -> None:
    world = World(checks=[invariant, balanced])
    world.set_line("P1", "EUR", 200_000)
    world.open_loan("L1", amount=150_000)
    world.set_line("P1", "EUR", 100_000)
    assert world.lines["P1"].in_use_cents == 150_000
    assert world.lines["P1"].available_cents == -50_000
    world.open_loan("L2", amount=1)
    assert world.loans["L2"].status == LoanStatus.PAYOUT_FAILED
    assert world.loans["L1"].status == LoanStatus.PAID_OUT


def test_currency_change_with_funds_in_use_is_dead_then_allowed_when_free() -> None:
    world = make_world()
    world.open_loan(amount=10_000, rate_bps=0)
    world.set_line("P1", "USD", 1_000_000)
    assert world.lines["P1"].currency == "EUR"
    assert "changes currency" in world.dead[-1][1]
    world.loan("RepaymentReceived", {"payment_id": "p", "amount_cents": 10_000, "currency": "EUR"})
    world.set_line("P1", "USD", 1_000_000)
    assert world.lines["P1"].currency == "USD"


def test_redelivered_commands_and_events_change_nothing() -> None:
    world = make_world()
    world.open_loan()
    line_before = world.lines["P1"]
    for event in list(world.payout_events):
        world.apply(event)  # duplicates: ignored by id
    for saga in list(world.sagas.values()):
        assert payout.react(saga, world.payout_events[1], world.now) == (saga, [])
    assert world.lines["P1"] == line_before
    assert len(world.ledger) == 2


def test_timers_resend_a_lost_step_with_the_same_ids() -> None:
    world = make_world()
    world.loan("LoanApplied", {"customer_id": "C1", "partner_id": "P1", "amount_cents": 5_000,
                               "currency": "EUR", "term_months": 12})  # fmt: skip
    world.apply(world_approval(world))
    lost = world.outbox.popleft()  # PayoutRequested never reached Kafka
    assert world.sagas["L1"].next_due is not None
    world.tick(1)
    assert isinstance(lost, Emit)
    assert world.payout_events[0].event_id == lost.event.event_id
    assert world.types() == HAPPY


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, "sent"), (201, "sent"), (409, "sent"), (400, "permanent"), (422, "permanent"),
     (404, "permanent"), (500, "transient"), (503, "transient"), (302, "transient")],
)  # fmt: skip
def test_classify_status(status: int, kind: str) -> None:
    assert classify_status(status).kind == kind


def test_stale_gateway_results_change_nothing() -> None:
    world = make_world(gateway=scripted(TRANSIENT))
    world.open_loan()
    saga = world.sagas["L1"]
    assert payout.on_gateway_result(saga, PERMANENT, world.now, attempt=0) == (saga, [])
    done = make_world()
    done.open_loan()
    finished = done.sagas["L1"]
    assert payout.on_gateway_result(finished, SENT, done.now) == (finished, [])


# -- property: any mix of loans, limits, gateway answers, cancels and time ---------------------

answers = st.sampled_from([SENT, SENT, TRANSIENT, PERMANENT])
actions = st.one_of(
    st.tuples(st.just("loan"), st.integers(1, 3), st.integers(1, 300_000),
              st.sampled_from(["EUR", "EUR", "USD"])),
    st.tuples(st.just("limit"), st.integers(0, 500_000), st.sampled_from(["EUR", "EUR", "USD"])),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("repay"), st.integers(0, 30), st.integers(1, 200_000)),
    st.tuples(st.just("tick"), st.integers(1, 400)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@example(100_000, [("loan", 1, 60_000, "EUR"), ("loan", 1, 60_000, "EUR")], [])
@example(100_000, [("loan", 1, 60_000, "EUR"), ("limit", 10, "EUR"), ("repay", 0, 70_000)], [])
@given(st.integers(0, 600_000), st.lists(actions, max_size=40), st.lists(answers, max_size=60))
def test_invariant_and_ledger_hold_after_every_event(limit, steps, script) -> None:  # type: ignore[no-untyped-def]
    """P1 has a EUR line, P2 a USD line, P3 none; steps may change P1's line."""
    world = World(gateway=scripted(*script), checks=[invariant, balanced])
    world.set_line("P1", "EUR", limit)
    world.set_line("P2", "USD", 300_000)
    count = 0
    for step in steps:
        if step[0] == "loan":
            count += 1
            _, partner, amount, currency = step
            world.open_loan(f"L{count}", amount, currency, f"P{partner}")
        elif step[0] == "limit":
            world.set_line("P1", step[2], step[1])
        elif step[0] == "cancel" and count:
            world.loan("LoanCanceled", {"reason": "r"}, f"L{step[1] % count + 1}")
        elif step[0] == "repay" and count:
            pay = {"payment_id": f"p{len(world.applied)}", "amount_cents": step[2],
                   "currency": world.loans[f"L{step[1] % count + 1}"].currency}  # fmt: skip
            world.loan("RepaymentReceived", pay, f"L{step[1] % count + 1}")
        elif step[0] == "tick":
            world.tick(step[1])
    world.settle_all()
    assert all(in_use <= limit for in_use, limit in world.reservations)
    for loan_id, saga in world.sagas.items():
        assert saga.finished, saga
        loan = world.loans[loan_id]
        expected = {
            "completed": {LoanStatus.PAID_OUT, LoanStatus.REPAYING, LoanStatus.SETTLED},
            "compensated": {LoanStatus.PAYOUT_FAILED, LoanStatus.CANCELED},
            "failed": {LoanStatus.PAYOUT_FAILED},
        }[saga.status]
        assert loan.status in expected
    paid = Counter(c.payout_id for c in world.calls if world.sagas[c.loan_id].status == "completed")
    assert all(world.loans[p.removeprefix("payout:")].payout_id == p for p in paid)
    for partner, line in world.lines.items():
        open_principal = sum(
            world.loans[loan_id].approved_amount_cents - world.loans[loan_id].principal_repaid_cents  # type: ignore[operator]
            for loan_id, s in world.sagas.items()
            if s.status == "completed" and s.partner_id == partner
        )
        assert line.in_use_cents == open_principal


# -- helpers ---------------------------------------------------------------------------------


def _fields(saga: payout.PayoutSaga) -> dict[str, object]:
    return {name: getattr(saga, name) for name in saga.__slots__}  # type: ignore[attr-defined]


def _cancel_event():  # type: ignore[no-untyped-def]
    from tests.unit.domain.factories import make

    return make("LoanCanceled", {"reason": "late"})


def world_approval(world: World):  # type: ignore[no-untyped-def]
    from tests.unit.domain.factories import make

    data = {"approved_amount_cents": 5_000, "interest_rate_bps": 0}
    return make("LoanApproved", data, "L1", world.now)


def _next_is(world: World, event_type: str) -> bool:
    head = world.outbox[0]
    return isinstance(head, Emit) and head.event.type == event_type
