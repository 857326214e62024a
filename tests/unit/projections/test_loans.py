"""`projections.loans`: which `loan_history` versions a batch inserts closed and which stored
versions it must close with an UPDATE; what a dead letter row keeps of its message."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from lendstream.domain.loans import Loan
from lendstream.domain.sequencing import Message, Pending, Position
from lendstream.projections.loans import DEAD_LETTER_COLUMNS, dead_letter_row, history_rows
from lendstream.topics.codec import Invalid

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def version(loan: Loan, n: int) -> Loan:
    return replace(loan, version=n, updated_at=T0 + timedelta(minutes=n))


def test_versions_superseded_in_the_batch_are_inserted_closed() -> None:
    a = Loan(loan_id="A", customer_id="C", partner_id="P", currency="EUR", term_months=12,
             status="applied", applied_amount_cents=100, applied_at=T0, updated_at=T0, version=1)  # fmt: skip
    b = replace(a, loan_id="B")
    batch = [version(a, 3), version(b, 1), version(a, 4), version(a, 5)]
    rows, to_close = history_rows(batch)
    assert [(row[0], row[17]) for row in rows] == [("A", 3), ("A", 4), ("A", 5), ("B", 1)]
    valid_to = [row[-1] for row in rows]
    assert valid_to == [T0 + timedelta(minutes=4), T0 + timedelta(minutes=5), None, None]
    assert [row[-2] for row in rows] == [row[18] for row in rows]  # valid_from = updated_at
    # only A's stored version 2 is closed by an UPDATE; B starts at version 1
    assert to_close == [("A", 2, T0 + timedelta(minutes=3))]


def test_a_dead_letter_keeps_headers_that_postgresql_can_store() -> None:
    """Any bytes can arrive in a header; `text`/`jsonb` cannot hold NUL, and a dead letter that
    cannot be written would stop the worker at every redelivery."""
    position = Position("loan-events", 0, 7)
    message = Message(position, "L-1", 0.0, Invalid("NotJson", "value is not JSON"), b"{",
                      (("trace\x00id", b"a\x00b\xff"),))  # fmt: skip
    pending = Pending(position, None, "dead", "NotJson", "value is not JSON", T0)
    row = dead_letter_row(pending, "dead", message, T0)
    headers = orjson.loads(row[DEAD_LETTER_COLUMNS.index("headers")])
    assert headers == {"trace\ufffdid": "a\ufffdb\ufffd"}
