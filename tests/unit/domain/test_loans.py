"""`evolve(loan, event)`: every transition of contract §4, and every rejected one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lendstream.domain.errors import DependencyMissing, LifecycleViolation
from lendstream.domain.loans import (
    CLOSED,
    Loan,
    LoanStatus,
    evolve,
    total_due,
)
from lendstream.topics import Event
from tests.unit.domain.factories import (
    T0,
    applied,
    approved,
    at,
    canceled,
    fold,
    funds_released,
    funds_reserved,
    paid_out,
    paid_out_loan,
    payout_failed,
    payout_id,
    payout_requested,
    rejected,
    repayment,
    reservation_failed,
)
from tests.unit.domain.factories import payout_sent as payout_sent_event

S = LoanStatus

# What leads to each status (amount 100_000 at 10 % interest: total due 110_000).
PATHS: dict[LoanStatus, Callable[[], list[Event]]] = {
    S.APPLIED: lambda: [applied()],
    S.APPROVED: lambda: [applied(), approved()],
    S.PAYOUT_PENDING: lambda: [applied(), approved(), payout_requested()],
    S.PAID_OUT: lambda: [applied(), approved(), payout_requested(), paid_out()],
    S.REPAYING: lambda: [*PATHS[S.PAID_OUT](), repayment(amount=10_000)],
    S.SETTLED: lambda: [*PATHS[S.PAID_OUT](), repayment(amount=110_000)],
    S.REJECTED: lambda: [applied(), rejected()],
    S.CANCELED: lambda: [applied(), canceled()],
    S.PAYOUT_FAILED: lambda: [applied(), approved(), payout_requested(), payout_failed()],
}


def loan_in(status: LoanStatus) -> Loan:
    loan = fold(PATHS[status]())
    assert loan is not None and loan.status == status
    return loan


#: Upstream events (contract §3), each as a factory taking the event time.
UPSTREAM: dict[str, Callable[[], Event]] = {
    "LoanApplied": lambda: applied(when=at(500)),
    "LoanApproved": lambda: approved(when=at(500)),
    "LoanRejected": lambda: rejected(when=at(500)),
    "LoanCanceled": lambda: canceled(when=at(500)),
    "RepaymentReceived": lambda: repayment(when=at(500)),
}
STEPS: dict[str, Callable[[], Event]] = {
    "FundsReserved": lambda: funds_reserved(when=at(500)),
    "FundsReservationFailed": lambda: reservation_failed(when=at(500)),
    "PayoutSent": lambda: payout_sent_event(when=at(500)),
    "FundsReleased": lambda: funds_released(when=at(500)),
}
PAYOUT_ROW_EVENTS: dict[str, Callable[[], Event]] = {
    "PayoutRequested": lambda: payout_requested(when=at(500)),
    "PayoutFailed": lambda: payout_failed(when=at(500)),
    "LoanPaidOut": lambda: paid_out(when=at(500)),
}
ALL_BUT_APPLIED = {**UPSTREAM, **STEPS, **PAYOUT_ROW_EVENTS}
del ALL_BUT_APPLIED["LoanApplied"]


def assert_changed(before: Loan, after: Loan, event: Event) -> None:
    """A row change: version + 1 and `updated_at` is the event's time."""
    assert after.version == before.version + 1
    assert after.updated_at == event.occurred_at


# -- LoanApplied -----------------------------------------------------------------------------


def test_loan_applied_creates_the_loan() -> None:
    event = applied(
        "L7", amount=250_000, currency="USD", customer="C9", partner="P3", term=36, when=at(3)
    )
    loan = evolve(None, event)
    assert loan == Loan(
        loan_id="L7",
        customer_id="C9",
        partner_id="P3",
        currency="USD",
        term_months=36,
        status=S.APPLIED,
        applied_amount_cents=250_000,
        applied_at=at(3),
        updated_at=at(3),
        version=1,
    )
    assert loan.approved_amount_cents is None
    assert loan.interest_rate_bps is None
    assert loan.total_due_cents is None
    assert loan.repaid_cents == 0
    assert loan.outstanding_cents == 0
    assert loan.approved_at is loan.paid_out_at is loan.settled_at is loan.closed_reason is None


@pytest.mark.parametrize("status", list(S))
def test_second_loan_applied_is_a_violation(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), applied(when=at(500)))


# -- LoanApproved ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "bps", "due"),
    [
        (100_000, 1_000, 110_000),
        (100_000, 0, 100_000),
        (12_345, 250, 12_345 + 308),  # 308.625 is floored
        (999, 1, 999),  # 0.0999 is floored to 0
        (3, 3_333, 3),  # 0.9999 is floored to 0
        (10_000, 10_000, 20_000),  # 100 %
        (1, 1_000_000, 101),
    ],
)
def test_loan_approved_sets_terms_and_total_due(amount: int, bps: int, due: int) -> None:
    loan = evolve(None, applied(amount=100_000))
    event = approved(amount=amount, bps=bps, when=at(7))
    after = evolve(loan, event)
    assert after.status == S.APPROVED
    assert after.approved_amount_cents == amount
    assert after.interest_rate_bps == bps
    assert after.total_due_cents == due == total_due(amount, bps)
    assert after.approved_at == at(7)
    assert after.outstanding_cents == 0  # not paid out yet
    assert after.repaid_cents == 0
    assert_changed(loan, after, event)
    assert after.applied_at == loan.applied_at == T0


def test_loan_approved_at_exactly_the_applied_amount() -> None:
    loan = evolve(None, applied(amount=5_000))
    assert evolve(loan, approved(amount=5_000)).approved_amount_cents == 5_000


def test_loan_approved_above_applied_is_a_violation() -> None:
    loan = evolve(None, applied(amount=5_000))
    with pytest.raises(LifecycleViolation, match="above applied"):
        evolve(loan, approved(amount=5_001))


@pytest.mark.parametrize("status", [s for s in S if s != S.APPLIED])
def test_loan_approved_only_from_applied(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), approved(when=at(500)))


# -- LoanRejected ----------------------------------------------------------------------------


def test_loan_rejected_from_applied() -> None:
    loan = loan_in(S.APPLIED)
    event = rejected(reason="affordability", when=at(9))
    after = evolve(loan, event)
    assert after.status == S.REJECTED
    assert after.closed_reason == "affordability"
    assert after.outstanding_cents == 0
    assert_changed(loan, after, event)


@pytest.mark.parametrize("status", [s for s in S if s != S.APPLIED])
def test_loan_rejected_only_from_applied(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), rejected(when=at(500)))


# -- LoanCanceled ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.APPLIED, S.APPROVED, S.PAYOUT_PENDING])
def test_loan_canceled_before_the_payout_was_sent(status: LoanStatus) -> None:
    loan = loan_in(status)
    event = canceled(reason="customer withdrew", when=at(50))
    after = evolve(loan, event)
    assert after.status == S.CANCELED
    assert after.closed_reason == "customer withdrew"
    assert after.outstanding_cents == 0
    assert_changed(loan, after, event)


def test_loan_canceled_after_funds_reserved_but_not_sent() -> None:
    loan = fold([funds_reserved()], loan_in(S.PAYOUT_PENDING))
    assert loan is not None
    assert evolve(loan, canceled(when=at(50))).status == S.CANCELED


def test_loan_canceled_after_payout_sent_is_a_violation() -> None:
    loan = fold([funds_reserved(), payout_sent_event()], loan_in(S.PAYOUT_PENDING))
    assert loan is not None and loan.status == S.PAYOUT_PENDING
    with pytest.raises(LifecycleViolation, match="payout was sent"):
        evolve(loan, canceled(when=at(50)))


@pytest.mark.parametrize("status", [S.PAID_OUT, S.REPAYING, *CLOSED])
def test_loan_canceled_after_payout_or_closing_is_a_violation(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), canceled(when=at(500)))


# -- PayoutRequested -------------------------------------------------------------------------


def test_payout_requested_moves_approved_to_payout_pending() -> None:
    loan = loan_in(S.APPROVED)
    event = payout_requested(when=at(11))
    after = evolve(loan, event)
    assert after.status == S.PAYOUT_PENDING
    assert after.payout_id == payout_id("L1")
    assert after.outstanding_cents == 0
    assert after.paid_out_at is None
    assert_changed(loan, after, event)


def test_payout_requested_before_approval_waits_for_the_approval() -> None:
    with pytest.raises(DependencyMissing) as caught:
        evolve(loan_in(S.APPLIED), payout_requested())
    assert caught.value.needs == frozenset({"LoanApproved"})


@pytest.mark.parametrize("status", [S.PAYOUT_PENDING, S.PAID_OUT, S.REPAYING])
def test_payout_requested_twice_or_after_payout_is_a_violation(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), payout_requested(when=at(500)))


# -- LoanPaidOut -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.PAYOUT_PENDING, S.APPROVED])
def test_loan_paid_out(status: LoanStatus) -> None:
    loan = loan_in(status)
    event = paid_out(when=at(20))
    after = evolve(loan, event)
    assert after.status == S.PAID_OUT
    assert after.paid_out_at == at(20)
    assert after.payout_id == payout_id("L1")
    assert after.payout_sent
    assert after.outstanding_cents == after.total_due_cents == 110_000
    assert after.repaid_cents == 0
    assert_changed(loan, after, event)


def test_loan_paid_out_before_approval_waits_for_the_approval() -> None:
    with pytest.raises(DependencyMissing) as caught:
        evolve(loan_in(S.APPLIED), paid_out())
    assert caught.value.needs == frozenset({"LoanApproved"})


@pytest.mark.parametrize("status", [S.PAID_OUT, S.REPAYING, S.SETTLED])
def test_loan_paid_out_at_most_once(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), paid_out(when=at(500)))


# -- PayoutFailed ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.PAYOUT_PENDING, S.APPROVED])
def test_payout_failed(status: LoanStatus) -> None:
    loan = loan_in(status)
    event = payout_failed(reason="gateway said no", when=at(21))
    after = evolve(loan, event)
    assert after.status == S.PAYOUT_FAILED
    assert after.closed_reason == "gateway said no"
    assert after.outstanding_cents == 0
    assert after.paid_out_at is None
    assert_changed(loan, after, event)


def test_payout_failed_after_reservation_failed() -> None:
    loan = fold([reservation_failed()], loan_in(S.PAYOUT_PENDING))
    assert loan is not None
    after = evolve(loan, payout_failed(reason="credit line exhausted"))
    assert (after.status, after.closed_reason) == (S.PAYOUT_FAILED, "credit line exhausted")


def test_payout_failed_before_approval_waits_for_the_approval() -> None:
    with pytest.raises(DependencyMissing) as caught:
        evolve(loan_in(S.APPLIED), payout_failed())
    assert caught.value.needs == frozenset({"LoanApproved"})


@pytest.mark.parametrize("status", [S.PAID_OUT, S.REPAYING, S.SETTLED])
def test_payout_failed_after_paid_out_is_a_violation(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), payout_failed(when=at(500)))


# -- RepaymentReceived -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "needs"),
    [
        (S.APPLIED, {"LoanApproved", "PayoutRequested", "LoanPaidOut"}),
        (S.APPROVED, {"PayoutRequested", "LoanPaidOut"}),
        (S.PAYOUT_PENDING, {"LoanPaidOut"}),
    ],
)
def test_repayment_before_payout_waits_for_what_supplies_it(
    status: LoanStatus, needs: set[str]
) -> None:
    with pytest.raises(DependencyMissing) as caught:
        evolve(loan_in(status), repayment())
    assert caught.value.needs == frozenset(needs)
    assert "LoanPaidOut" in caught.value.needs


@pytest.mark.parametrize("status", [S.PAID_OUT, S.REPAYING])
def test_repayment_in_another_currency_is_a_violation(status: LoanStatus) -> None:
    with pytest.raises(LifecycleViolation, match="USD"):
        evolve(loan_in(status), repayment(currency="USD"))


def test_first_repayment_moves_paid_out_to_repaying() -> None:
    loan = paid_out_loan()
    event = repayment(amount=30_000, when=at(100))
    after = evolve(loan, event)
    assert after.status == S.REPAYING
    assert after.repaid_cents == 30_000
    assert after.outstanding_cents == 80_000
    assert after.settled_at is None
    assert after.paid_out_at == loan.paid_out_at
    assert_changed(loan, after, event)


def test_repayments_accumulate_until_settled() -> None:
    loan = paid_out_loan()
    seen = []
    for n, amount in enumerate((40_000, 40_000, 29_999, 1), start=1):
        event = repayment(amount=amount, when=at(100 * n))
        after = evolve(loan, event)
        assert_changed(loan, after, event)
        seen.append((after.status, after.repaid_cents, after.outstanding_cents))
        loan = after
    assert seen == [
        (S.REPAYING, 40_000, 70_000),
        (S.REPAYING, 80_000, 30_000),
        (S.REPAYING, 109_999, 1),
        (S.SETTLED, 110_000, 0),
    ]
    assert loan.settled_at == at(400)
    assert loan.updated_at == at(400)


def test_single_repayment_of_the_total_settles_from_paid_out() -> None:
    loan = paid_out_loan()
    after = evolve(loan, repayment(amount=110_000, when=at(70)))
    assert (after.status, after.outstanding_cents, after.settled_at) == (S.SETTLED, 0, at(70))
    assert after.version == loan.version + 1


def test_overpayment_is_accepted_in_full() -> None:
    loan = fold([repayment(amount=100_000)], paid_out_loan())
    assert loan is not None
    after = evolve(loan, repayment(amount=50_000, when=at(300)))
    assert after.status == S.SETTLED
    assert after.repaid_cents == 150_000  # above total due 110_000
    assert after.outstanding_cents == 0
    assert after.settled_at == at(300)


def test_repayment_on_a_settled_loan_is_a_violation() -> None:
    with pytest.raises(LifecycleViolation, match="settled"):
        evolve(loan_in(S.SETTLED), repayment(amount=1))


def test_zero_interest_loan_settles_at_the_principal() -> None:
    loan = paid_out_loan(amount=50_000, bps=0)
    assert loan.total_due_cents == loan.outstanding_cents == 50_000
    after = evolve(loan, repayment(amount=50_000))
    assert after.status == S.SETTLED


@pytest.mark.parametrize(
    ("repaid", "principal", "interest"),
    [
        (1, 1, 0),
        (60_000, 60_000, 0),
        (100_000, 100_000, 0),
        (100_001, 100_000, 1),
        (105_000, 100_000, 5_000),
        (110_000, 100_000, 10_000),
    ],
)
def test_repayments_go_to_principal_first_then_interest(
    repaid: int, principal: int, interest: int
) -> None:
    loan = evolve(paid_out_loan(amount=100_000, bps=1_000), repayment(amount=repaid))
    assert loan.principal_repaid_cents == principal
    assert loan.interest_repaid_cents == interest
    assert loan.principal_repaid_cents + loan.interest_repaid_cents == loan.repaid_cents


def test_principal_and_interest_over_several_repayments() -> None:
    loan = paid_out_loan(amount=100_000, bps=1_000)
    split = []
    for amount in (70_000, 35_000, 5_000):
        loan = evolve(loan, repayment(amount=amount))
        split.append((loan.principal_repaid_cents, loan.interest_repaid_cents))
    assert split == [(70_000, 0), (100_000, 5_000), (100_000, 10_000)]


def test_nothing_is_repaid_before_payout() -> None:
    for status in (S.APPLIED, S.APPROVED, S.PAYOUT_PENDING):
        loan = loan_in(status)
        assert (loan.principal_repaid_cents, loan.interest_repaid_cents) == (0, 0)


# -- saga step events ------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("step", sorted(STEPS))
def test_saga_steps_never_change_status_or_version(status: LoanStatus, step: str) -> None:
    loan = loan_in(status)
    after = evolve(loan, STEPS[step]())
    assert after.status == loan.status
    assert after.version == loan.version
    assert after.updated_at == loan.updated_at
    assert after.outstanding_cents == loan.outstanding_cents
    assert after.closed_reason == loan.closed_reason


@pytest.mark.parametrize("step", ["FundsReserved", "FundsReservationFailed", "FundsReleased"])
def test_saga_steps_other_than_payout_sent_leave_the_loan_as_it_was(step: str) -> None:
    loan = loan_in(S.PAYOUT_PENDING)
    assert evolve(loan, STEPS[step]()) == loan


def test_payout_sent_only_marks_the_payout_as_sent() -> None:
    loan = loan_in(S.PAYOUT_PENDING)
    after = evolve(loan, payout_sent_event())
    assert after.payout_sent and not loan.payout_sent
    assert (after.status, after.version, after.updated_at) == (
        loan.status,
        loan.version,
        loan.updated_at,
    )


# -- closed loans and unknown loans ----------------------------------------------------------


@pytest.mark.parametrize("status", sorted(CLOSED))
@pytest.mark.parametrize("event_type", sorted(UPSTREAM))
def test_upstream_event_on_a_closed_loan_is_a_violation(
    status: LoanStatus, event_type: str
) -> None:
    with pytest.raises(LifecycleViolation):
        evolve(loan_in(status), UPSTREAM[event_type]())


@pytest.mark.parametrize("event_type", sorted(ALL_BUT_APPLIED))
def test_any_event_for_an_unknown_loan_waits_for_loan_applied(event_type: str) -> None:
    with pytest.raises(DependencyMissing) as caught:
        evolve(None, ALL_BUT_APPLIED[event_type]())
    assert caught.value.needs == frozenset({"LoanApplied"})
    assert event_type in str(caught.value)


def test_closed_states_are_terminal_and_keep_their_reason() -> None:
    assert loan_in(S.REJECTED).closed_reason == "affordability"
    assert loan_in(S.CANCELED).closed_reason == "customer withdrew"
    assert loan_in(S.PAYOUT_FAILED).closed_reason == "gateway said no"
    assert loan_in(S.SETTLED).closed_reason is None


# -- versions and times over a whole lifecycle ------------------------------------------------


def test_version_counts_row_changes_and_times_are_event_times() -> None:
    events = [
        applied(when=at(0)),
        approved(when=at(1)),
        payout_requested(when=at(2)),
        funds_reserved(when=at(3)),
        payout_sent_event(when=at(4)),
        paid_out(when=at(5)),
        repayment(amount=60_000, when=at(6)),
        repayment(amount=50_000, when=at(7)),
    ]
    row_changes = {
        "LoanApplied",
        "LoanApproved",
        "PayoutRequested",
        "LoanPaidOut",
        "RepaymentReceived",
    }
    loan: Loan | None = None
    versions = []
    for event in events:
        before = loan
        loan = evolve(loan, event)
        versions.append(loan.version)
        if event.type in row_changes:
            assert loan.updated_at == event.occurred_at
        else:
            assert before is not None and loan.updated_at == before.updated_at
    assert versions == [1, 2, 3, 3, 3, 4, 5, 6]
    assert loan is not None
    assert (loan.applied_at, loan.approved_at, loan.paid_out_at, loan.settled_at) == (
        at(0),
        at(1),
        at(5),
        at(7),
    )
    assert loan.updated_at == at(7)


@pytest.mark.parametrize("status", [S.APPLIED, S.APPROVED, S.PAYOUT_PENDING, *CLOSED - {S.SETTLED}])
def test_outstanding_is_zero_until_paid_out(status: LoanStatus) -> None:
    assert loan_in(status).outstanding_cents == 0
