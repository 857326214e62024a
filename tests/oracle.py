"""An independent oracle: folds each loan's events (in causal order) with its own arithmetic.

Deliberately shares no code with `lendstream.domain`: it is the contract (§4, §6) written again
as plainly as possible, so that a bug in the code under test cannot hide in both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lendstream.simulation import Produced

SUMMARY_COLUMNS = (
    "customer_id", "partner_id", "currency", "status", "applied_amount_cents",
    "approved_amount_cents", "interest_rate_bps", "total_due_cents", "repaid_cents",
    "outstanding_cents", "applied_at", "approved_at", "paid_out_at", "settled_at",
    "closed_reason", "version", "updated_at",
)  # fmt: skip


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fold_loan(events: list[Produced]) -> dict[str, Any]:
    """The `loan_summary` row after a loan's events (each given once, in causal order)."""
    row: dict[str, Any] = {}
    for item in events:
        e = item.value
        d, at, kind = e["data"], _ts(e["occurred_at"]), e["type"]
        changed = True
        if kind == "LoanApplied":
            row = dict(
                customer_id=d["customer_id"], partner_id=d["partner_id"], currency=d["currency"],
                status="applied", applied_amount_cents=d["amount_cents"],
                approved_amount_cents=None, interest_rate_bps=None, total_due_cents=None,
                repaid_cents=0, outstanding_cents=0, applied_at=at, approved_at=None,
                paid_out_at=None, settled_at=None, closed_reason=None, version=0,
            )  # fmt: skip
        elif kind == "LoanApproved":
            a, r = d["approved_amount_cents"], d["interest_rate_bps"]
            row.update(status="approved", approved_amount_cents=a, interest_rate_bps=r,
                       total_due_cents=a + (a * r) // 10000, approved_at=at)  # fmt: skip
        elif kind in ("LoanRejected", "LoanCanceled", "PayoutFailed"):
            status = {"LoanRejected": "rejected", "LoanCanceled": "canceled"}.get(
                kind, "payout_failed"
            )
            row.update(status=status, closed_reason=d["reason"])
        elif kind == "PayoutRequested":
            row.update(status="payout_pending")
        elif kind == "LoanPaidOut":
            row.update(status="paid_out", paid_out_at=at, outstanding_cents=row["total_due_cents"])
        elif kind == "RepaymentReceived":
            repaid = row["repaid_cents"] + d["amount_cents"]
            left = max(row["total_due_cents"] - repaid, 0)
            row.update(repaid_cents=repaid, outstanding_cents=left)
            row.update(status="settled", settled_at=at) if left == 0 else row.update(
                status="repaying"
            )
        else:
            changed = False  # saga steps never change the row
        if changed:
            row["version"] += 1
            row["updated_at"] = at
    return row


def fold_all(lifecycles: list[list[Produced]]) -> dict[str, dict[str, Any]]:
    return {events[0].key: fold_loan(events) for events in lifecycles if events}


def exposure(loans: dict[str, dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """`customer_exposure`: (active loans, outstanding) per (customer, currency)."""
    result: dict[tuple[str, str], tuple[int, int]] = {}
    for row in loans.values():
        key = (row["customer_id"], row["currency"])
        active, outstanding = result.get(key, (0, 0))
        if row["status"] in ("paid_out", "repaying"):
            active, outstanding = active + 1, outstanding + row["outstanding_cents"]
        result[key] = (active, outstanding)
    return result


def accepted_event_ids(lifecycles: list[list[Produced]]) -> set[str]:
    return {item.value["event_id"] for events in lifecycles for item in events}
