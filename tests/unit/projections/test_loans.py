"""`projections.loans.history_rows`: which `loan_history` versions a batch inserts closed, and
which stored versions it must close with an UPDATE."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from lendstream.domain.loans import Loan
from lendstream.projections.loans import history_rows

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def version(loan: Loan, n: int) -> Loan:
    return replace(loan, version=n, updated_at=T0 + timedelta(minutes=n))


def test_versions_superseded_in_the_batch_are_inserted_closed() -> None:
    a = Loan(loan_id="A", customer_id="C", partner_id="P", currency="EUR", term_months=12,
             status="applied", applied_amount_cents=100, applied_at=T0, updated_at=T0, version=1)  # fmt: skip
    b = replace(a, loan_id="B")
    batch = [version(a, 3), version(b, 1), version(a, 4), version(a, 5)]
    rows, to_close = history_rows(batch)
    valid_to = [row[-1] for row in rows]
    assert valid_to == [T0 + timedelta(minutes=4), None, T0 + timedelta(minutes=5), None]
    assert [row[-2] for row in rows] == [v.updated_at for v in batch]  # valid_from
    # only A's stored version 2 is closed by an UPDATE; B starts at version 1
    assert to_close == [("A", 2, T0 + timedelta(minutes=3))]
