"""Schema evolution end to end (issue 7, "done when" 3): a v1 and a v2 LoanApplied on the same
topic give the same read-model result, and the read models show the v2 shape.

Needs docs/proposals/loan-applied-v2-upcast.patch; skipped until it is applied.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "lendstream.topics.upcast",
    reason="docs/proposals/loan-applied-v2-upcast.patch is not applied yet",
)

from lendstream.simulation import Produced
from tests.harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def lifecycle(loan_id: str, version: int) -> list[Produced]:
    amount = "amount_cents" if version == 1 else "requested_amount_cents"
    applied = {
        "event_id": f"{loan_id}-applied", "type": "LoanApplied", "schema_version": version,
        "occurred_at": "2026-02-01T09:00:00Z", "loan_id": loan_id,
        "data": {"customer_id": "C1", "partner_id": "P1", amount: 250_000, "currency": "EUR",
                 "term_months": 6},
    }  # fmt: skip
    approved = {
        "event_id": f"{loan_id}-approved", "type": "LoanApproved",
        "occurred_at": "2026-02-01T10:00:00Z", "loan_id": loan_id,
        "data": {"approved_amount_cents": 200_000, "interest_rate_bps": 500},
    }  # fmt: skip
    return [Produced("loan-events", loan_id, applied), Produced("loan-events", loan_id, approved)]


async def test_v1_and_v2_events_give_the_same_read_models(pipeline: Pipeline) -> None:
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce([*lifecycle("L-v1", 1), *lifecycle("L-v2", 2)])
    await pipeline.wait_caught_up(timeout=120)

    rows = await pipeline.fetch("SELECT * FROM loan_summary ORDER BY loan_id")
    assert [r["loan_id"] for r in rows] == ["L-v1", "L-v2"]
    old, new = ({k: v for k, v in r.items() if k != "loan_id"} for r in rows)
    assert old == new
    assert (old["applied_amount_cents"], old["status"]) == (250_000, "approved")

    history = await pipeline.fetch(
        "SELECT loan_id, version, applied_amount_cents FROM loan_history ORDER BY 1, 2"
    )
    assert [tuple(r.values())[1:] for r in history] == [(1, 250_000), (2, 250_000)] * 2

    logged = await pipeline.fetch(
        "SELECT loan_id, schema_version, data FROM event_log WHERE type = 'LoanApplied' "
        "ORDER BY loan_id"
    )
    assert [r["schema_version"] for r in logged] == [2, 2]  # v1 was upcast on read
    for row in logged:
        assert '"requested_amount_cents": 250000' in row["data"]
        assert '"amount_cents"' not in row["data"]
