"""The payout saga end to end (issue 4): traffic, a worker with the saga on, and every check of
the acceptance criteria, shared by the integration test and the crash test.

Partners P0..P5 have generous EUR lines, P6 a tight one (reservations fail for lack of credit),
P7 none (no credit line); some loans are in USD on an EUR line (currency mismatch). Every loan
is applied and approved; every 25th is canceled right after its approval (the cancellation
either wins — the loan is canceled — or comes after the gateway call and is a dead letter).
The gateway simulator fails calls transiently and permanently at the given rates.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from lendstream.gateway_sim import GatewaySimulator
from lendstream.kafka import high_watermarks
from lendstream.simulation import Produced
from lendstream.topics import LOAN_PROCESSOR_INPUTS, TREASURY_EVENTS
from lendstream.topics.treasury import COMMANDS_TOPIC as TREASURY_COMMANDS
from tests.harness import Pipeline, read_topics

PARTNERS = [f"P{n}" for n in range(8)]
LIMITS = {**{p: 10**12 for p in PARTNERS[:6]}, "P6": 60_000}
TERMINAL_LOAN = {"paid_out", "repaying", "settled", "payout_failed", "canceled"}


def _event(loan_id: str, n: int, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": f"{loan_id}-{n}", "type": kind, "occurred_at": "2026-11-20T10:00:00Z",
            "loan_id": loan_id, "data": data}  # fmt: skip


def credit_lines() -> list[Produced]:
    return [
        Produced("treasury-events", p, {
            "event_id": f"line-{p}", "type": "CreditLineSet", "occurred_at": "2026-11-20T09:00:00Z",
            "data": {"partner_id": p, "currency": "EUR", "limit_cents": limit}})
        for p, limit in LIMITS.items()
    ]  # fmt: skip


@dataclass(frozen=True)
class Loan:
    loan_id: str
    partner_id: str
    amount: int
    currency: str
    canceled: bool


def loans(count: int, seed: int) -> list[Loan]:
    rng = random.Random(seed)
    return [
        Loan(f"L{n:05d}", PARTNERS[n % len(PARTNERS)], rng.randrange(1_000, 50_000),
             "USD" if n % 50 == 7 else "EUR", n % 25 == 3)
        for n in range(count)
    ]  # fmt: skip


def loan_traffic(batch: list[Loan]) -> list[Produced]:
    out = []
    for loan in batch:
        k = loan.loan_id
        out.append(Produced("loan-events", k, _event(k, 1, "LoanApplied", {
            "customer_id": f"C{k}", "partner_id": loan.partner_id, "amount_cents": loan.amount,
            "currency": loan.currency, "term_months": 12})))  # fmt: skip
        out.append(Produced("loan-events", k, _event(
            k, 2, "LoanApproved", {"approved_amount_cents": loan.amount, "interest_rate_bps": 500})))  # fmt: skip
        if loan.canceled:
            out.append(Produced("loan-events", k, _event(k, 3, "LoanCanceled", {"reason": "x"})))
    return out


def repayments(paid_out: list[dict[str, Any]]) -> list[Produced]:
    """A full repayment (principal and interest) for every 10th paid-out loan."""
    return [
        Produced("payment-events", r["loan_id"], _event(r["loan_id"], 9, "RepaymentReceived", {
            "payment_id": f"pay-{r['loan_id']}", "amount_cents": r["total_due_cents"],
            "currency": r["currency"]}))
        for r in paid_out[::10]
    ]  # fmt: skip


def saga_settings(url: str) -> dict[str, Any]:
    return {
        "payout_saga": True, "gateway_url": url, "retry_backoff": (0.2, 0.5, 1.0, 2.0),
        "saga_deadline": 300.0, "gateway_read_timeout": 1.0, "gateway_connect_timeout": 1.0,
    }  # fmt: skip


async def wait_until_settled(pipeline: Pipeline, count: int, timeout: float) -> None:
    """Every saga finished and every loan in an end state."""
    await pipeline.wait_for(
        "SELECT count(*) AS n FROM saga_instances WHERE status <> 'running'",
        lambda rows: rows and rows[0]["n"] == count, timeout,
        "every saga finished",
    )  # fmt: skip
    await pipeline.wait_for(
        "SELECT count(*) AS n FROM loan_summary WHERE status = ANY($1::text[])",
        lambda rows: rows and rows[0]["n"] == count, timeout, "every loan in an end state",
        sorted(TERMINAL_LOAN),
    )  # fmt: skip


async def check_everything(
    pipeline: Pipeline, sim: GatewaySimulator, traffic: list[Loan], exact_gateway: bool
) -> dict[str, int]:
    """The acceptance checks of issue 4; returns counts for the test's report."""
    fetch = pipeline.fetch
    summary = {r["loan_id"]: r for r in await fetch("SELECT * FROM loan_summary")}
    sagas = {r["loan_id"]: r for r in await fetch("SELECT * FROM saga_instances")}
    assert len(summary) == len(traffic) and set(sagas) == set(summary)
    dead_rows = await fetch("SELECT key, id, error FROM dead_letters WHERE status = 'dead'")
    dead = {r["key"] for r in dead_rows}
    for loan in traffic:
        status = summary[loan.loan_id]["status"]
        if loan.canceled and status == "canceled":
            continue
        if loan.canceled:  # the cancellation came after the gateway call: a dead letter
            assert loan.loan_id in dead, (loan, status)
        assert status in TERMINAL_LOAN - {"canceled"}, (loan, status)
    canceled = {loan.loan_id for loan in traffic if loan.canceled}
    assert dead <= canceled, [dict(r) for r in dead_rows if r["key"] not in canceled]

    # each saga ends in exactly one terminal status, matching its loan
    expected = {"paid_out": "completed", "repaying": "completed", "settled": "completed",
                "payout_failed": "failed", "canceled": "compensated"}  # fmt: skip
    for loan_id, row in summary.items():
        saga = sagas[loan_id]
        if row["status"] == "payout_failed":
            assert saga["status"] in ("failed", "compensated"), (row, saga)
        else:
            assert saga["status"] == expected[row["status"]], (row, saga)

    # no payout_id paid twice, and every paid-out loan was accepted by the gateway
    accepted = {pid for pid, rec in sim.payouts.items() if rec.accepted}
    assert all(rec.accepted <= 1 for rec in sim.payouts.values())
    paid = {f"payout:{k}" for k, r in summary.items() if r["paid_out_at"] is not None}
    assert paid <= accepted
    if exact_gateway:
        assert accepted == paid

    # partner credit: the invariant, and in_use is exactly what is paid out and not repaid
    credit = {r["partner_id"]: r for r in await fetch("SELECT * FROM partner_credit")}
    in_use: dict[str, int] = defaultdict(int)
    for r in summary.values():
        if r["paid_out_at"] is not None:
            in_use[r["partner_id"]] += r["approved_amount_cents"] - min(
                r["repaid_cents"], r["approved_amount_cents"]
            )
    for partner, row in credit.items():
        assert 0 <= row["in_use_cents"] <= row["limit_cents"], row
        assert row["in_use_cents"] == in_use[partner], (row, in_use[partner])

    # ledger: balanced per event; one payout entry pair per paid-out loan
    unbalanced = await fetch(
        "SELECT event_id FROM ledger_entries GROUP BY event_id HAVING "
        "sum(CASE direction WHEN 'debit' THEN amount_cents ELSE -amount_cents END) <> 0"
    )
    assert unbalanced == []
    booked = await fetch(
        "SELECT DISTINCT loan_id FROM ledger_entries WHERE event_id LIKE 'payout:%:LoanPaidOut'"
    )
    assert {f"payout:{r['loan_id']}" for r in booked} == paid

    # daily payouts equal the paid-out loans by day and partner
    daily = await fetch(
        "SELECT day, partner_id, currency, payouts, amount_cents FROM daily_payouts"
    )
    derived = await fetch(
        "SELECT (paid_out_at AT TIME ZONE 'UTC')::date AS day, partner_id, currency, "
        "count(*)::int AS payouts, sum(approved_amount_cents)::bigint AS amount_cents "
        "FROM loan_summary WHERE paid_out_at IS NOT NULL GROUP BY 1, 2, 3"
    )
    assert sorted(map(_row, daily)) == sorted(map(_row, derived))

    # one notification per paid-out or failed payout (consumers dedupe by notification_id)
    records = await read_topics(
        pipeline.settings.bootstrap_servers, ["customer-notifications"],
        pipeline.settings.partitions,
    )  # fmt: skip
    notes = {(n["notification_id"], n["kind"]) for n in map(_json, records)}
    kinds = Counter(kind for _, kind in notes)
    statuses = Counter(r["status"] for r in summary.values())
    assert kinds["paid_out"] == len(paid)
    assert kinds["payout_failed"] == statuses["payout_failed"]
    return {**statuses, "accepted": len(accepted), "requests": sum(
        rec.requests for rec in sim.payouts.values())}  # fmt: skip


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["day"], r["partner_id"], r["currency"], r["payouts"], r["amount_cents"])


def _json(record: Any) -> dict[str, Any]:
    return orjson.loads(record.value)  # type: ignore[no-any-return]


async def feed(pipeline: Pipeline, traffic: list[Loan], chunk: int = 500) -> None:
    await pipeline.produce(credit_lines())
    for start in range(0, len(traffic), chunk):
        await pipeline.produce(loan_traffic(traffic[start : start + chunk]))
        await asyncio.sleep(0)


async def repay(pipeline: Pipeline) -> int:
    paid_out = await pipeline.fetch(
        "SELECT loan_id, total_due_cents, currency FROM loan_summary WHERE status = 'paid_out' "
        "ORDER BY loan_id"
    )
    batch = repayments(paid_out)
    await pipeline.produce(batch)
    return len(batch)


async def wait_idle(pipeline: Pipeline, timeout: float) -> None:
    """Wait until the loan and treasury processors have processed everything there is,
    including what the worker itself wrote (saga steps, treasury commands, gateway answers)."""
    settings = pipeline.settings
    inputs = {
        "loans": [*(spec.name for spec in LOAN_PROCESSOR_INPUTS)],
        "treasury": [TREASURY_EVENTS.name, TREASURY_COMMANDS],
    }
    deadline = time.monotonic() + timeout
    while True:
        idle = True
        for projection, topics in inputs.items():
            tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
            ends = await high_watermarks(settings.bootstrap_servers, tps)
            stored = await pipeline.positions(projection)
            idle &= all(stored.get((tp.topic, tp.partition), -1) >= end - 1
                        for tp, end in ends.items() if end > 0)  # fmt: skip
        if idle:
            return
        assert time.monotonic() < deadline, f"the worker did not go idle in {timeout}s"
        pipeline.supervise()
        await asyncio.sleep(0.5)


async def settle_and_check(
    pipeline: Pipeline, sim: GatewaySimulator, traffic: list[Loan], exact_gateway: bool,
    timeout: float,
) -> dict[str, int]:  # fmt: skip
    """Wait for every saga to end, repay some loans, wait until idle, run every check."""
    await wait_until_settled(pipeline, len(traffic), timeout=timeout)
    await repay(pipeline)
    await wait_idle(pipeline, timeout=180)
    return await check_everything(pipeline, sim, traffic, exact_gateway)


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 1)
