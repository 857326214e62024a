"""The loan aggregate: contract §4 as a pure `evolve(loan, event) -> loan`.

`evolve` either returns the next state or raises:
- `DependencyMissing` when the event arrived before what it depends on (the caller parks it);
  its `needs` names the event types that would supply the dependency;
- `LifecycleViolation` when the event breaks the lifecycle (the caller dead-letters it).

It never looks at `event_id` (duplicates are the caller's business) and never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from lendstream.domain.errors import DependencyMissing, LifecycleViolation
from lendstream.topics.envelope import Event
from lendstream.topics.loans import LoanApplied, LoanApproved, LoanCanceled, LoanRejected
from lendstream.topics.payments import RepaymentReceived
from lendstream.topics.payouts import (
    FundsReleased,
    FundsReservationFailed,
    FundsReserved,
    LoanPaidOut,
    PayoutFailed,
    PayoutRequested,
    PayoutSent,
)


class LoanStatus(StrEnum):
    APPLIED = "applied"
    APPROVED = "approved"
    PAYOUT_PENDING = "payout_pending"
    PAID_OUT = "paid_out"
    REPAYING = "repaying"
    SETTLED = "settled"
    REJECTED = "rejected"
    CANCELED = "canceled"
    PAYOUT_FAILED = "payout_failed"


#: Statuses on which any upstream event is a lifecycle violation.
CLOSED = frozenset(
    {LoanStatus.REJECTED, LoanStatus.CANCELED, LoanStatus.PAYOUT_FAILED, LoanStatus.SETTLED}
)
#: Statuses that count towards a customer's exposure (contract §6).
ACTIVE = frozenset({LoanStatus.PAID_OUT, LoanStatus.REPAYING})
#: Statuses in which the loan has been paid out (outstanding is owed).
DISBURSED = frozenset({LoanStatus.PAID_OUT, LoanStatus.REPAYING, LoanStatus.SETTLED})
#: Upstream events (contract §3): violations on closed loans.
UPSTREAM_TYPES = (LoanApplied, LoanApproved, LoanRejected, LoanCanceled, RepaymentReceived)
#: Saga step events: applied on any known loan, never change its status.
STEP_TYPES = (FundsReserved, FundsReservationFailed, PayoutSent, FundsReleased)

#: Saga events that can follow a cancellation the saga accepted (it then compensates).
RACING_CANCELLATION = (PayoutRequested, PayoutFailed)

# What supplies a missing dependency, by what the parked event waits for.
NEEDS_LOAN = frozenset({"LoanApplied"})
NEEDS_APPROVAL = frozenset({"LoanApproved"})
NEEDS_PAYOUT_FROM = {
    LoanStatus.APPLIED: frozenset({"LoanApproved", "PayoutRequested", "LoanPaidOut"}),
    LoanStatus.APPROVED: frozenset({"PayoutRequested", "LoanPaidOut"}),
    LoanStatus.PAYOUT_PENDING: frozenset({"LoanPaidOut"}),
}


@dataclass(frozen=True, slots=True)
class Loan:
    """One loan as the read models show it; `version` numbers its row changes."""

    loan_id: str
    customer_id: str
    partner_id: str
    currency: str
    term_months: int
    status: LoanStatus
    applied_amount_cents: int
    applied_at: datetime
    updated_at: datetime
    version: int = 1
    approved_amount_cents: int | None = None
    interest_rate_bps: int | None = None
    repaid_cents: int = 0
    approved_at: datetime | None = None
    paid_out_at: datetime | None = None
    settled_at: datetime | None = None
    closed_reason: str | None = None
    payout_id: str | None = None
    payout_sent: bool = False

    @property
    def total_due_cents(self) -> int | None:
        if self.approved_amount_cents is None or self.interest_rate_bps is None:
            return None
        return total_due(self.approved_amount_cents, self.interest_rate_bps)

    @property
    def outstanding_cents(self) -> int:
        """What the customer still owes; 0 until the loan is paid out."""
        if self.status not in DISBURSED or self.total_due_cents is None:
            return 0
        return max(self.total_due_cents - self.repaid_cents, 0)

    @property
    def principal_repaid_cents(self) -> int:
        """Repayments go to principal first, then interest (contract §4)."""
        return min(self.repaid_cents, self.approved_amount_cents or 0)

    @property
    def interest_repaid_cents(self) -> int:
        return self.repaid_cents - self.principal_repaid_cents


def total_due(approved_cents: int, interest_rate_bps: int) -> int:
    return approved_cents + approved_cents * interest_rate_bps // 10_000


def evolve(loan: Loan | None, event: Event) -> Loan:
    """The loan after `event`; raises `DependencyMissing` or `LifecycleViolation`."""
    if loan is None:
        if isinstance(event, LoanApplied):
            return _applied(event)
        raise DependencyMissing(f"unknown loan: {event.type} before LoanApplied", NEEDS_LOAN)
    if isinstance(event, UPSTREAM_TYPES) and loan.status in CLOSED:
        raise LifecycleViolation(f"{event.type} on a {loan.status} loan")
    if isinstance(event, STEP_TYPES):
        return replace(loan, payout_sent=True) if isinstance(event, PayoutSent) else loan
    if isinstance(event, RACING_CANCELLATION) and loan.status == LoanStatus.CANCELED:
        return loan  # the saga's own step, overtaken by a cancellation it compensates
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise LifecycleViolation(f"{event.type} is not a loan event")
    return handler(loan, event)


def _applied(event: LoanApplied) -> Loan:
    data = event.data
    return Loan(
        loan_id=event.loan_id,
        customer_id=data.customer_id,
        partner_id=data.partner_id,
        currency=data.currency,
        term_months=data.term_months,
        status=LoanStatus.APPLIED,
        applied_amount_cents=data.requested_amount_cents,
        applied_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _changed(loan: Loan, event: Event, **changes: object) -> Loan:
    """A new row version, stamped with the event's time."""
    return replace(loan, version=loan.version + 1, updated_at=event.occurred_at, **changes)  # type: ignore[arg-type]


def _expect(loan: Loan, event: Event, *statuses: LoanStatus) -> None:
    if loan.status not in statuses:
        raise LifecycleViolation(f"{event.type} on a {loan.status} loan")


def _reapplied(loan: Loan, event: Event) -> Loan:
    raise LifecycleViolation(f"LoanApplied for known loan {loan.loan_id}")


def _approved(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, LoanApproved)
    _expect(loan, event, LoanStatus.APPLIED)
    if event.data.approved_amount_cents > loan.applied_amount_cents:
        raise LifecycleViolation(
            f"approved {event.data.approved_amount_cents} is above applied "
            f"{loan.applied_amount_cents}"
        )
    return _changed(
        loan,
        event,
        status=LoanStatus.APPROVED,
        approved_amount_cents=event.data.approved_amount_cents,
        interest_rate_bps=event.data.interest_rate_bps,
        approved_at=event.occurred_at,
    )


def _rejected(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, LoanRejected)
    _expect(loan, event, LoanStatus.APPLIED)
    return _changed(loan, event, status=LoanStatus.REJECTED, closed_reason=event.data.reason)


def _canceled(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, LoanCanceled)
    _expect(loan, event, LoanStatus.APPLIED, LoanStatus.APPROVED, LoanStatus.PAYOUT_PENDING)
    if loan.payout_sent:
        raise LifecycleViolation("LoanCanceled after the payout was sent")
    return _changed(loan, event, status=LoanStatus.CANCELED, closed_reason=event.data.reason)


def _needs_approval(loan: Loan, event: Event) -> None:
    if loan.status == LoanStatus.APPLIED:
        raise DependencyMissing(f"{event.type} before the loan was approved", NEEDS_APPROVAL)


def _payout_requested(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, PayoutRequested)
    _needs_approval(loan, event)
    _expect(loan, event, LoanStatus.APPROVED)
    return _changed(loan, event, status=LoanStatus.PAYOUT_PENDING, payout_id=event.data.payout_id)


def _paid_out(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, LoanPaidOut)
    _needs_approval(loan, event)
    _expect(loan, event, LoanStatus.APPROVED, LoanStatus.PAYOUT_PENDING)
    return _changed(
        loan,
        event,
        status=LoanStatus.PAID_OUT,
        paid_out_at=event.occurred_at,
        payout_id=event.data.payout_id,
        payout_sent=True,
    )


def _payout_failed(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, PayoutFailed)
    _needs_approval(loan, event)
    _expect(loan, event, LoanStatus.APPROVED, LoanStatus.PAYOUT_PENDING)
    return _changed(loan, event, status=LoanStatus.PAYOUT_FAILED, closed_reason=event.data.reason)


def _repaid(loan: Loan, event: Event) -> Loan:
    assert isinstance(event, RepaymentReceived)
    if event.data.currency != loan.currency:
        raise LifecycleViolation(f"repayment in {event.data.currency} on a loan in {loan.currency}")
    if loan.status in NEEDS_PAYOUT_FROM:
        raise DependencyMissing(
            f"repayment before the loan was paid out ({loan.status})",
            NEEDS_PAYOUT_FROM[loan.status],
        )
    repaid = loan.repaid_cents + event.data.amount_cents
    total = loan.total_due_cents or 0
    if repaid >= total:
        return _changed(
            loan,
            event,
            status=LoanStatus.SETTLED,
            repaid_cents=repaid,
            settled_at=event.occurred_at,
        )
    return _changed(loan, event, status=LoanStatus.REPAYING, repaid_cents=repaid)


_HANDLERS = {
    LoanApplied: _reapplied,
    LoanApproved: _approved,
    LoanRejected: _rejected,
    LoanCanceled: _canceled,
    PayoutRequested: _payout_requested,
    LoanPaidOut: _paid_out,
    PayoutFailed: _payout_failed,
    RepaymentReceived: _repaid,
}
