"""What a paid-out loan (and its repayments) fan out to (contract §5.4, §6), as pure mappings.

Each function takes an applied event with the loan before and after it (as the sequencing
layer's `Applied` outcome carries them) and returns rows or messages whose ids derive from the
event's `event_id`, so every consumer is idempotent by an upsert on that id:

- `ledger_entries`: double-entry rows; for every `event_id`, debits equal credits.
- `notification`: one message on `customer-notifications` (key `customer_id`) for
  `LoanPaidOut`, `PayoutFailed` and the repayment that settles a loan.
- `daily_payout`: the increment of `daily_payouts` (day of `LoanPaidOut`, UTC).
Events that do not concern a consumer yield nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from lendstream.domain.loans import Loan, LoanStatus
from lendstream.topics.envelope import Event
from lendstream.topics.payments import RepaymentReceived
from lendstream.topics.payouts import LoanPaidOut, PayoutFailed

#: Ledger accounts. The lender's view: a payout moves partner funding into a receivable; a
#: repayment turns receivable (principal), interest income and overpayment into cash.
LOANS_RECEIVABLE = "loans_receivable"
PARTNER_FUNDING = "partner_funding"
CASH = "cash"
INTEREST_INCOME = "interest_income"
CUSTOMER_OVERPAYMENT = "customer_overpayment"


Direction = Literal["debit", "credit"]
Leg = tuple[str, Direction, int]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One `ledger_entries` row; `entry_id` is `<event_id>:<n>`."""

    entry_id: str
    event_id: str
    loan_id: str
    account: str
    direction: Direction
    amount_cents: int
    currency: str
    booked_at: datetime


@dataclass(frozen=True, slots=True)
class Notification:
    """One message on `customer-notifications`, key `customer_id`; `notification_id` is the
    event's id (a redelivered event gives the same message, which consumers drop)."""

    notification_id: str
    customer_id: str
    loan_id: str
    kind: Literal["paid_out", "payout_failed", "settled"]
    amount_cents: int | None
    currency: str
    reason: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class DailyPayout:
    """Add `payouts` and `amount_cents` to the `daily_payouts` row (day, partner, currency)."""

    day: date
    partner_id: str
    currency: str
    payouts: int
    amount_cents: int


def ledger_entries(event: Event, before: Loan | None, after: Loan) -> list[LedgerEntry]:
    """Balanced entries for a `LoanPaidOut` or `RepaymentReceived` (none for anything else).

    Repayments go to principal first, then interest (contract §4); what exceeds the total due
    is booked as overpayment, so the split always sums to the repayment.
    """
    if isinstance(event, LoanPaidOut):
        amount = event.data.amount_cents
        legs: list[Leg] = [(LOANS_RECEIVABLE, "debit", amount), (PARTNER_FUNDING, "credit", amount)]
    elif isinstance(event, RepaymentReceived) and before is not None:
        legs = _repayment_legs(event.data.amount_cents, before, after)
    else:
        return []
    return [
        LedgerEntry(
            f"{event.event_id}:{n}",
            event.event_id,
            after.loan_id,
            account,
            direction,
            amount,
            after.currency,
            event.occurred_at,
        )
        for n, (account, direction, amount) in enumerate(legs)
        if amount > 0
    ]


def _repayment_legs(amount: int, before: Loan, after: Loan) -> list[Leg]:
    principal = after.principal_repaid_cents - before.principal_repaid_cents
    interest_due = (after.total_due_cents or 0) - (after.approved_amount_cents or 0)
    interest = min(after.interest_repaid_cents, interest_due) - min(
        before.interest_repaid_cents, interest_due
    )
    overpaid = amount - principal - interest
    return [
        (CASH, "debit", amount),
        (LOANS_RECEIVABLE, "credit", principal),
        (INTEREST_INCOME, "credit", interest),
        (CUSTOMER_OVERPAYMENT, "credit", overpaid),
    ]


def notification(event: Event, before: Loan | None, after: Loan) -> Notification | None:
    """The customer's message for a payout, a failed payout or the settling repayment."""
    kind: Literal["paid_out", "payout_failed", "settled"]
    amount: int | None = None
    reason = None
    if isinstance(event, LoanPaidOut):
        kind, amount = "paid_out", event.data.amount_cents
    elif isinstance(event, PayoutFailed):
        kind, reason = "payout_failed", event.data.reason
    elif (
        isinstance(event, RepaymentReceived)
        and after.status == LoanStatus.SETTLED
        and (before is None or before.status != LoanStatus.SETTLED)
    ):
        kind, amount = "settled", after.repaid_cents
    else:
        return None
    return Notification(
        event.event_id, after.customer_id, after.loan_id, kind, amount, after.currency, reason,
        event.occurred_at,
    )  # fmt: skip


def daily_payout(event: Event, loan: Loan) -> DailyPayout | None:
    """The `daily_payouts` increment of a `LoanPaidOut` (UTC day of its `occurred_at`)."""
    if not isinstance(event, LoanPaidOut):
        return None
    day = event.occurred_at.astimezone(UTC).date()
    return DailyPayout(day, loan.partner_id, event.data.currency, 1, event.data.amount_cents)
