"""Per-loan order through transient failures (issue 3, acceptance 2).

An event of loan K fails transiently twice, then succeeds (the fold is wrapped by
`tests.faults.FlakyEvolve` in a real worker process; broker and PostgreSQL are real). While it
waits for its retries, later events of K and events of other loans keep arriving: the other
loans flow on, K's later events wait behind, and K ends as if its events had applied in order.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests import oracle
from tests.harness import Pipeline
from tests.traffic import build

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
FAULT_WORKER = ("-m", "tests.fault_worker")


async def test_a_transient_failure_keeps_the_loans_order_and_holds_up_no_other_loan(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    traffic = build(seed=31, loans=400, min_events=4_000, invalid=0, duplicate_rate=0)
    loan = next(life for life in traffic.lifecycles if len(life) >= 8)
    k = loan[0].key
    flaky = loan[2]  # K's third event fails twice
    plan = tmp_path / "failures.json"
    plan.write_bytes(orjson.dumps({flaky.value["event_id"]: 2}))
    cut = traffic.stream.index(flaky) + 1
    first, rest = traffic.stream[:cut], traffic.stream[cut:]

    await pipeline.create_topics()
    pipeline.start_worker(command=(*FAULT_WORKER, str(plan)), retry_backoff=(3.0, 3.0))
    await pipeline.produce(first)  # type: ignore[arg-type]
    retrying = await pipeline.wait_for(
        "SELECT attempts, error_class, status FROM dead_letters WHERE event_id = $1",
        lambda rows: bool(rows) and rows[0]["error_class"] == "Transient", 120,
        "the first transient failure", flaky.value["event_id"],
    )  # fmt: skip
    assert retrying[0]["status"] == "parked"
    await pipeline.produce(rest)  # type: ignore[arg-type]
    await pipeline.wait_caught_up(timeout=200)
    letter = await pipeline.wait_for(
        "SELECT * FROM dead_letters WHERE event_id = $1",
        lambda rows: rows[0]["status"] == "released", 60, "the retried event applied",
        flaky.value["event_id"],
    )  # fmt: skip

    assert letter[0]["attempts"] >= 3  # two transient failures, then applied
    (summary,) = await pipeline.fetch("SELECT * FROM loan_summary WHERE loan_id = $1", k)
    expected = oracle.fold_loan(loan)
    assert {c: summary[c] for c in oracle.SUMMARY_COLUMNS} == expected
    history = await pipeline.fetch(
        "SELECT version, status FROM loan_history WHERE loan_id = $1 ORDER BY version", k
    )
    assert [h["version"] for h in history] == list(range(1, expected["version"] + 1))

    behind = await pipeline.fetch(
        "SELECT event_id, status, error_class FROM dead_letters WHERE key = $1 AND id <> $2",
        k, letter[0]["id"],
    )  # fmt: skip
    # what queued behind the retrying event: K's later events (and earlier ones of other
    # topics, which a consumer may read after it: order is kept per topic partition)
    others_of_k = {p.value["event_id"] for p in loan} - {flaky.value["event_id"]}
    assert {b["event_id"] for b in behind if b["error_class"] == "Sequenced"} <= others_of_k
    assert all(b["status"] == "released" for b in behind), behind

    applied_at = await pipeline.fetch(
        "SELECT recorded_at FROM event_log WHERE event_id = $1", flaky.value["event_id"]
    )
    others = [p.value["event_id"] for p in rest if p.key != k]
    flowed = await pipeline.fetch(
        "SELECT count(*) AS n FROM event_log WHERE event_id = ANY($1) AND recorded_at < $2",
        others, applied_at[0]["recorded_at"],
    )  # fmt: skip
    assert flowed[0]["n"] > 0, "no other loan moved while K was retrying"
    held = await pipeline.fetch(
        "SELECT count(*) AS n FROM dead_letters WHERE event_id = ANY($1) AND error LIKE $2",
        others, f"%{letter[0]['id']}%",
    )  # fmt: skip
    assert held[0]["n"] == 0
    pipeline.assert_no_crash()
