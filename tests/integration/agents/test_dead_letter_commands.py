"""Sequenced dead letters and the operator commands (issue 3, acceptance 3), through the real
`lendstream dlq` CLI, broker, PostgreSQL and worker.

Loan K's approval is dead (above the applied amount); K's later events park behind it;
`dlq replay --value-file` applies a corrected approval and then the parked events in order.
Loan J is blocked by a message that is not JSON; `dlq discard` closes it and releases J's
later events. Both loans end in the state the oracle computes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from lendstream.devstack import worker_env
from lendstream.simulation import Produced
from tests import oracle
from tests.harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def event(key: str, n: int, kind: str, data: dict[str, object]) -> dict[str, object]:
    return {"event_id": f"{key}-{n}", "type": kind, "occurred_at": f"2026-02-01T00:0{n}:00Z",
            "loan_id": key, "data": data}  # fmt: skip


def lifecycle(key: str, approved: int) -> list[Produced]:
    return [
        Produced("loan-events", key, event(key, 1, "LoanApplied", {
            "customer_id": "C1", "partner_id": "P1", "amount_cents": 5_000, "currency": "EUR",
            "term_months": 6})),
        Produced("loan-events", key, event(key, 2, "LoanApproved",
                                           {"approved_amount_cents": approved, "interest_rate_bps": 100})),
        Produced("payout-events", key, event(key, 3, "PayoutRequested", {
            "payout_id": f"p-{key}", "partner_id": "P1", "amount_cents": 5_000, "currency": "EUR"})),
        Produced("payout-events", key, event(key, 4, "LoanPaidOut",
                                             {"payout_id": f"p-{key}", "amount_cents": 5_000, "currency": "EUR"})),
        Produced("payment-events", key, event(key, 5, "RepaymentReceived",
                                              {"payment_id": f"r-{key}", "amount_cents": 1_000, "currency": "EUR"})),
    ]  # fmt: skip


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(worker_env(pipeline.settings))
    return subprocess.run(
        [sys.executable, "-m", "lendstream", "dlq", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_replay_and_discard_release_what_waited_in_order(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    k_bad, j = lifecycle("K", approved=9_000), lifecycle("J", approved=5_000)
    garbage = ("loan-events", b"J", b"{not json")
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce([*k_bad[:2], j[0], garbage])
    await pipeline.wait_for(
        "SELECT id FROM dead_letters WHERE status = 'dead'", lambda rows: len(rows) == 2, 120,
        "both heads dead",
    )  # fmt: skip
    await pipeline.produce([*k_bad[2:], *j[1:]])  # across topics, order is only kept per topic
    await pipeline.wait_caught_up(timeout=120)

    dead = await pipeline.fetch(
        "SELECT id, key, error_class FROM dead_letters WHERE status = 'dead'"
    )
    assert {(d["key"], d["error_class"]) for d in dead} == {
        ("K", "LifecycleViolation"), ("J", "NotJson"),
    }  # fmt: skip
    ids = {d["key"]: d["id"] for d in dead}
    listed = cli(pipeline, "list", "--status", "dead")
    assert listed.returncode == 0 and ids["K"] in listed.stdout and ids["J"] in listed.stdout
    parked = await pipeline.fetch("SELECT key FROM dead_letters WHERE status = 'parked'")
    assert sorted(p["key"] for p in parked) == ["J"] * 4 + ["K"] * 3

    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(
        orjson.dumps(
            event("X", 2, "LoanApproved", {"approved_amount_cents": 1, "interest_rate_bps": 0})
        )
    )
    refused = cli(pipeline, "replay", ids["K"], "--value-file", str(wrong))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused
    assert "loan_id" in refused.stderr and "Traceback" not in refused.stderr
    assert cli(pipeline, "replay", ids["J"]).returncode == 2  # not JSON: needs a corrected value
    assert "no dead letter" in cli(pipeline, "show", "nope:0:0").stderr

    corrected = lifecycle("K", approved=4_000)
    fixed = tmp_path / "fixed.json"
    fixed.write_bytes(orjson.dumps(corrected[1].value))
    replayed = cli(pipeline, "replay", ids["K"], "--value-file", str(fixed))
    assert replayed.returncode == 0 and f"{ids['K']}  replayed" in replayed.stdout, replayed
    discarded = cli(pipeline, "discard", ids["J"], "--reason", "upstream sent garbage")
    assert discarded.returncode == 0 and f"{ids['J']}  discarded" in discarded.stdout, discarded

    await pipeline.wait_for(
        "SELECT key FROM dead_letters WHERE status IN ('parked', 'dead')",
        lambda rows: rows == [], 60, "every parked event released",
    )  # fmt: skip
    summaries = {r["loan_id"]: r for r in await pipeline.fetch("SELECT * FROM loan_summary")}
    for key, events in (("K", corrected), ("J", j)):
        expected = oracle.fold_loan(events)
        assert {c: summaries[key][c] for c in oracle.SUMMARY_COLUMNS} == expected, key
    letters = {r["id"]: r for r in await pipeline.fetch("SELECT * FROM dead_letters")}
    assert letters[ids["J"]]["reason"] == "upstream sent garbage"
    assert letters[ids["K"]]["value"] == orjson.dumps(k_bad[1].value)  # the original, kept
    assert (
        orjson.loads(letters[ids["K"]]["replayed_value"])["data"]["approved_amount_cents"] == 4_000
    )
    shown = cli(pipeline, "show", ids["K"], "--json")
    assert orjson.loads(shown.stdout)[0]["status"] == "replayed"
    pipeline.assert_no_crash()
