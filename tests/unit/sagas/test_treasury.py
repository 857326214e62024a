"""Partner credit lines (contract §5.1): reservation, release, disbursement, principal back."""

from __future__ import annotations

import pytest

from lendstream.domain.errors import LifecycleViolation
from lendstream.sagas import treasury
from lendstream.sagas.treasury import CreditLine, Disburse, Release, Reserve, ReturnPrincipal
from lendstream.topics.treasury import CreditLineSet
from tests.unit.domain.factories import NOW


def line_set(limit: int, currency: str = "EUR", partner: str = "P1") -> CreditLineSet:
    return CreditLineSet.model_validate(
        {"event_id": f"cl{limit}{currency}", "type": "CreditLineSet", "occurred_at": NOW,
         "data": {"partner_id": partner, "currency": currency, "limit_cents": limit}}
    )  # fmt: skip


def reserve(payout: str = "payout:L1", amount: int = 100, currency: str = "EUR") -> Reserve:
    return Reserve("P1", payout, payout.removeprefix("payout:"), amount, currency)


def step(line: CreditLine | None, *inputs: treasury.TreasuryInput) -> tuple[CreditLine, list[str]]:
    types: list[str] = []
    for message in inputs:
        line, events = treasury.react(line, message, NOW)
        types += [e.type for e in events]
    assert line is not None
    return line, types


def test_reserve_is_idempotent_and_repeats_its_answer() -> None:
    line, types = step(None, line_set(150), reserve(amount=100), reserve(amount=100))
    assert types == ["FundsReserved", "FundsReserved"]
    assert (line.reserved_cents, line.available_cents) == (100, 50)
    line, types = step(line, reserve("payout:L2", 60), reserve("payout:L2", 60))
    assert types == ["FundsReservationFailed"] * 2
    assert line.in_use_cents == 100


def test_release_is_idempotent_and_ignores_what_was_never_reserved() -> None:
    line, _ = step(None, line_set(150), reserve())
    release = Release("P1", "payout:L1", "L1")
    line, types = step(line, release, release, Release("P1", "payout:L9", "L9"))
    assert types == ["FundsReleased", "FundsReleased"]
    assert line.in_use_cents == 0


def test_disbursed_principal_stays_in_use_until_repaid() -> None:
    line, _ = step(None, line_set(150), reserve(), Disburse("P1", "payout:L1"))
    assert (line.reserved_cents, line.outstanding_cents) == (0, 100)
    line, types = step(line, Release("P1", "payout:L1", "L1"))
    assert types == [] and line.in_use_cents == 100  # paid out: nothing to release
    line, _ = step(
        line, ReturnPrincipal("P1", "payout:L1", 30), ReturnPrincipal("P1", "payout:L1", 30)
    )
    assert line.in_use_cents == 70
    line, _ = step(line, ReturnPrincipal("P1", "payout:L1", 20))  # an older, smaller total
    assert line.in_use_cents == 70
    line, _ = step(line, ReturnPrincipal("P1", "payout:L1", 500))
    assert (line.in_use_cents, line.holds) == (0, ())


def test_a_repayment_implies_a_lost_disbursement() -> None:
    line, _ = step(None, line_set(150), reserve(), ReturnPrincipal("P1", "payout:L1", 40))
    assert (line.reserved_cents, line.outstanding_cents) == (0, 60)


def test_currency_change_only_when_nothing_is_in_use() -> None:
    line, _ = step(None, line_set(150), reserve())
    with pytest.raises(LifecycleViolation):
        step(line, line_set(150, "USD"))
    line, _ = step(line, Release("P1", "payout:L1", "L1"), line_set(10, "USD"))
    assert (line.currency, line.limit_cents) == ("USD", 10)


@pytest.mark.parametrize(
    ("line", "currency", "amount", "reason"),
    [
        (CreditLine("P1"), "EUR", 1, "no credit line"),
        (CreditLine("P1", "USD", 100), "EUR", 1, "currency mismatch"),
        (CreditLine("P1", "EUR", 100), "EUR", 101, "insufficient credit: 100 cents available"),
        (CreditLine("P1", "EUR", 100), "EUR", 100, None),
    ],
)
def test_refusal_reasons(line: CreditLine, currency: str, amount: int, reason: str | None) -> None:
    assert treasury.refusal(line, currency, amount) == reason
