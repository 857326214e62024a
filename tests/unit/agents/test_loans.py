"""The loan agent's pure helpers: `tally` (outcomes -> `lendstream_events_total` counts)."""

from __future__ import annotations

from lendstream.agents.loans import tally
from lendstream.domain.sequencing import (
    TRANSIENT,
    Applied,
    Dead,
    Discarded,
    Duplicate,
    Outcome,
    Parked,
    Pending,
    Position,
)
from tests.unit.domain.factories import applied, at, paid_out_loan, repayment


def pending(topic: str, error_class: str, status: str = "parked") -> Pending:
    event = repayment(amount=100)
    return Pending(
        position=Position(topic, 0, 7),
        event=event,
        status=status,  # type: ignore[arg-type]
        error_class=error_class,
        error="x",
        since=at(0),
    )


def test_tally_counts_each_outcome_under_its_labels_once_per_batch() -> None:
    loan = paid_out_loan()
    pay = repayment(amount=100)
    outcomes: list[Outcome] = [
        Applied(pay, Position("payment-events", 0, 1), loan, loan),
        Applied(pay, Position("payment-events", 0, 2), loan, loan),
        Duplicate(applied(), Position("loan-events", 0, 3)),
        Parked(pending("payment-events", "DependencyMissing")),
        Parked(pending("payment-events", TRANSIENT)),
        Dead(pending("payment-events", "LifecycleViolation", "dead")),
        Discarded("dl-1", "operator"),
    ]
    assert tally(outcomes) == {
        ("payment-events", "RepaymentReceived", "applied"): 2,
        ("loan-events", "LoanApplied", "duplicate"): 1,
        ("payment-events", "RepaymentReceived", "parked"): 1,
        ("payment-events", "RepaymentReceived", "retried"): 1,
        ("payment-events", "RepaymentReceived", "dead"): 1,
    }
