"""The simulated customer population: deterministic for a seed, causal per loan, in event-time
order, shaped like its documentation says (daily active customers, a payment-heavy mix)."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from lendstream.domain.loans import total_due
from lendstream.simulation import (
    CURRENCIES,
    CUSTOMER_ACTIONS,
    GENEROUS_LIMIT_CENTS,
    TIGHT_LIMIT_CENTS,
    Produced,
    Repayments,
    Simulation,
    credit_lines,
    interleave,
    lifecycle,
    loan_events,
    partner_currency,
    population,
)
from lendstream.topics import BY_NAME, PAYOUT_EVENTS, TREASURY_EVENTS, Invalid
from tests.unit.test_purity import FORBIDDEN, imports_of

#: Each type's possible successors within one loan (contract §4 and the saga's step events).
NEXT = {
    "LoanApplied": {"LoanRejected", "LoanCanceled", "LoanApproved"},
    "LoanApproved": {"LoanCanceled", "PayoutRequested"},
    "PayoutRequested": {"PayoutFailed", "LoanPaidOut"},
    "PayoutFailed": {"FundsReleased"},
    "LoanPaidOut": {"RepaymentReceived"},
    "RepaymentReceived": {"RepaymentReceived"},
}


def take(sim: Simulation, n: int) -> list[Produced]:
    return list(itertools.islice(sim, n))


def by_loan(events: list[Produced]) -> dict[str, list[Produced]]:
    loans: dict[str, list[Produced]] = {}
    for event in events:
        loans.setdefault(event.key, []).append(event)
    return loans


def occurred(event: Produced) -> datetime:
    return datetime.fromisoformat(event.value["occurred_at"].replace("Z", "+00:00"))


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    first = take(Simulation(seed=5, dau=300), 3_000)
    assert take(Simulation(seed=5, dau=300), 3_000) == first
    assert take(Simulation(seed=6, dau=300), 3_000) != first


def test_iterating_again_continues_the_stream() -> None:
    sim = Simulation(seed=5, dau=300)
    assert take(sim, 1_000) + take(sim, 1_000) == take(Simulation(seed=5, dau=300), 2_000)
    assert sim.produced == 2_000


def test_events_come_in_event_time_order_and_each_loan_in_causal_order() -> None:
    events = take(Simulation(seed=2, dau=200), 20_000)
    times = [occurred(e) for e in events]
    assert times == sorted(times)
    for loan_events_ in by_loan(events).values():
        kinds = [e.value["type"] for e in loan_events_]
        assert kinds[0] == "LoanApplied"
        for before, after in itertools.pairwise(kinds):
            assert after in NEXT[before], kinds


def test_every_event_is_valid_on_its_topic_and_keyed_by_its_loan() -> None:
    for event in take(Simulation(seed=3, dau=100), 5_000):
        decoded = BY_NAME[event.topic].decode(event.key.encode(), orjson.dumps(event.value))
        assert not isinstance(decoded, Invalid), decoded
        assert event.value["loan_id"] == event.key


def test_event_ids_are_unique() -> None:
    events = take(Simulation(seed=4, dau=200), 20_000)
    assert len({e.value["event_id"] for e in events}) == len(events)


def test_steady_state_has_about_dau_active_customers_a_day_and_is_payment_heavy() -> None:
    sim = Simulation(seed=1, dau=500)
    take(sim, 150_000)  # ~ 45 simulated days: past the ramp-up of ~24 compressed months
    assert 0.85 * 500 <= sim.active_yesterday <= 1.15 * 500
    mix = Counter(e.value["type"] for e in take(sim, 20_000))
    assert mix["RepaymentReceived"] / 20_000 > 0.6
    assert {"LoanRejected", "LoanCanceled", "PayoutFailed", "LoanPaidOut"} <= set(mix)


def test_customers_act_through_their_loans_and_several_loans_share_a_customer() -> None:
    sim = Simulation(seed=1, dau=200)
    events = take(sim, 30_000)
    customers = Counter(
        e.value["data"]["customer_id"] for e in events if e.value["type"] == "LoanApplied"
    )
    assert sim.loans_started >= len(customers) > 0
    assert max(customers.values()) > 1
    assert "RepaymentReceived" in CUSTOMER_ACTIONS


def test_without_payouts_there_is_no_payout_event() -> None:
    events = take(Simulation(seed=1, dau=200, with_payouts=False), 5_000)
    assert all(e.topic != PAYOUT_EVENTS.name for e in events)


def test_credit_lines_are_one_valid_credit_line_set_per_partner_keyed_by_partner() -> None:
    lines = credit_lines(seed=3, partners=5)
    assert [line.key for line in lines] == ["P00", "P01", "P02", "P03", "P04"]
    for line in lines:
        assert line.topic == TREASURY_EVENTS.name
        decoded = TREASURY_EVENTS.decode(line.key.encode(), orjson.dumps(line.value))
        assert not isinstance(decoded, Invalid), decoded
        assert decoded.type == "CreditLineSet"
        assert decoded.data.partner_id == line.key
        assert decoded.data.currency == partner_currency(line.key)
    assert credit_lines(seed=3, partners=5) == lines
    assert len({line.value["event_id"] for line in lines + credit_lines(seed=4)}) == 10


def test_credit_lines_are_generous_but_the_last_partners_are_tight() -> None:
    limits = [line.value["data"]["limit_cents"] for line in credit_lines(1, partners=6, tight=2)]
    assert limits == [GENEROUS_LIMIT_CENTS] * 4 + [TIGHT_LIMIT_CENTS] * 2
    loans = [
        e for e in take(Simulation(seed=1, dau=200), 20_000) if e.value["type"] == "LoanApplied"
    ]
    amounts = sorted(e.value["data"]["amount_cents"] for e in loans)
    assert amounts[-1] < TIGHT_LIMIT_CENTS < sum(amounts[-5:])  # any one loan fits, a few don't
    assert sum(amounts) < GENEROUS_LIMIT_CENTS / 1000  # hours of dev traffic, never repaid
    with pytest.raises(ValueError, match="tight"):
        credit_lines(1, partners=2, tight=3)


def test_a_loan_is_in_its_partners_currency_and_the_mix_of_currencies_stays() -> None:
    loans = [
        e for e in take(Simulation(seed=2, dau=300), 20_000) if e.value["type"] == "LoanApplied"
    ]
    for loan in loans:
        assert loan.value["data"]["currency"] == partner_currency(loan.value["data"]["partner_id"])
    currencies = Counter(loan.value["data"]["currency"] for loan in loans)
    assert set(currencies) == set(CURRENCIES)
    assert currencies["EUR"] > currencies["USD"] + currencies["GBP"]
    assert partner_currency("acme-bank") == partner_currency("acme-bank") in CURRENCIES


def test_a_population_needs_a_customer() -> None:
    with pytest.raises(ValueError, match="dau"):
        Simulation(seed=1, dau=0)


def test_lifecycle_is_the_lazy_loan_events_materialised() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    eager = lifecycle(random.Random(9), "L1", "C1", "P1", start)
    lazy = [p for _, p in loan_events(random.Random(9), "L1", "C1", "P1", start)]
    assert eager == lazy
    assert list(interleave(1, population(1, 10))) == list(interleave(1, population(1, 10)))


def test_simulation_is_pure() -> None:
    source = (Path(__file__).resolve().parents[2] / "lendstream" / "simulation.py").read_text()
    assert not {m.split(".")[0] for m in imports_of(source, "lendstream")} & FORBIDDEN


def paid_out(loan: list[Produced], minutes: int = 10) -> dict[str, object]:
    """The `LoanPaidOut` value the saga would write for `loan` (its first two events)."""
    approved = loan[1].value["data"]["approved_amount_cents"]
    return {
        "event_id": f"payout:{loan[0].key}:LoanPaidOut",
        "type": "LoanPaidOut",
        "occurred_at": f"2026-03-01T00:{minutes:02d}:00Z",
        "loan_id": loan[0].key,
        "data": {"payout_id": f"payout:{loan[0].key}", "amount_cents": approved,
                 "currency": loan[0].value["data"]["currency"]},
    }  # fmt: skip


def approved_loans(seed: int, loans: int = 40) -> list[list[Produced]]:
    lifecycles = population(seed, loans, with_payouts=False)
    return [
        events for events in lifecycles if [e.value["type"] for e in events][-1] == "LoanApproved"
    ]


def test_repayments_follow_a_payout_of_a_known_loan_once() -> None:
    repayments = Repayments(seed=7)
    loans = approved_loans(7)
    for event in itertools.chain.from_iterable(loans):
        repayments.observe(event)
    assert len(repayments) == len(loans) > 5
    loan = loans[0]
    made = repayments.on_payout_event(paid_out(loan))
    assert made and len(made) <= 24
    data = loan[0].value["data"]
    due = total_due(loan[1].value["data"]["approved_amount_cents"],
                    loan[1].value["data"]["interest_rate_bps"])  # fmt: skip
    assert sum(r.value["data"]["amount_cents"] for r in made) >= due or len(made) == min(
        data["term_months"], 24
    )
    times = [occurred(r) for r in made]
    assert times == sorted(times) and times[0] > datetime(2026, 3, 1, 0, 10, tzinfo=UTC)
    for r in made:
        assert (r.topic, r.key, r.value["type"]) == (
            "payment-events",
            loan[0].key,
            "RepaymentReceived",
        )
        assert r.value["data"]["currency"] == data["currency"]
        assert not isinstance(
            BY_NAME[r.topic].decode(r.key.encode(), orjson.dumps(r.value)), Invalid
        )
    assert repayments.on_payout_event(paid_out(loan)) == []  # once
    again = Repayments(seed=7)
    for event in loan:
        again.observe(event)
    assert again.on_payout_event(paid_out(loan, minutes=10)) == made  # deterministic


def test_no_repayments_for_a_loan_not_paid_out() -> None:
    repayments = Repayments(seed=8)
    loans = approved_loans(8)
    for event in itertools.chain.from_iterable(loans):
        repayments.observe(event)
    failed = {
        **paid_out(loans[0]),
        "type": "PayoutFailed",
        "data": {"payout_id": "x", "reason": "no"},
    }
    assert repayments.on_payout_event(failed) == []
    assert repayments.on_payout_event(paid_out(loans[0])) == []  # forgotten when it failed
    assert repayments.on_payout_event({**paid_out(loans[1]), "loan_id": "unknown"}) == []
    assert repayments.on_payout_event({"type": "FundsReserved", "loan_id": loans[1][0].key}) == []
    ended = [
        e for e in population(8, 40, with_payouts=False) if e[-1].value["type"] != "LoanApproved"
    ]
    for event in itertools.chain.from_iterable(ended):
        repayments.observe(event)
    assert len(repayments) == len(loans) - 1  # rejected and canceled loans are not kept
