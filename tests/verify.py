"""Assertions shared by the integration and chaos tests: read models == the oracle, exactly."""

from __future__ import annotations

from tests import oracle
from tests.harness import Pipeline
from tests.traffic import Traffic


async def assert_read_models_match(pipeline: Pipeline, traffic: Traffic) -> None:
    expected = oracle.fold_all(traffic.lifecycles)
    rows = await pipeline.fetch("SELECT * FROM loan_summary")
    actual = {r["loan_id"]: {c: r[c] for c in oracle.SUMMARY_COLUMNS} for r in rows}
    missing = sorted(set(expected) - set(actual))[:5]
    extra = sorted(set(actual) - set(expected))[:5]
    assert not missing and not extra, f"loans missing {missing}, unexpected {extra}"
    wrong = [(k, expected[k], actual[k]) for k in expected if expected[k] != actual[k]]
    if wrong:
        detail = await explain(pipeline, wrong[0][0])
        raise AssertionError(
            f"{len(wrong)} loans differ from the oracle, e.g. {wrong[:1]}\n{detail}"
        )

    exposure_rows = await pipeline.fetch("SELECT * FROM customer_exposure")
    actual_exposure = {
        (r["customer_id"], r["currency"]): (r["active_loans"], r["outstanding_cents"])
        for r in exposure_rows
    }
    expected_exposure = oracle.exposure(expected)
    diff = {
        k: (expected_exposure.get(k), actual_exposure.get(k))
        for k in set(expected_exposure) | set(actual_exposure)
        if expected_exposure.get(k) != actual_exposure.get(k)
    }
    assert not diff, f"{len(diff)} exposure rows differ, e.g. {list(diff.items())[:3]}"

    logged = await pipeline.fetch("SELECT event_id FROM event_log")
    logged_ids = [r["event_id"] for r in logged]
    assert len(logged_ids) == len(set(logged_ids))
    assert set(logged_ids) == oracle.accepted_event_ids(traffic.lifecycles)

    history = await pipeline.fetch(
        "SELECT loan_id, count(*) AS n, max(version) AS v, "
        "count(*) FILTER (WHERE valid_to IS NULL) AS open FROM loan_history GROUP BY loan_id"
    )
    for h in history:
        assert h["n"] == h["v"] == expected[h["loan_id"]]["version"], h
        assert h["open"] == 1, h


async def explain(pipeline: Pipeline, loan_id: str) -> str:
    """What the read models know of one loan: dead letters, event log, stored state."""
    letters = await pipeline.fetch(
        'SELECT id, status, error_class, error, attempts FROM dead_letters WHERE key = $1 ORDER BY "offset"',
        loan_id,
    )
    log = await pipeline.fetch(
        'SELECT topic, partition, "offset", type FROM event_log WHERE loan_id = $1 ORDER BY recorded_at',
        loan_id,
    )
    state = await pipeline.fetch("SELECT seq, state FROM loan_state WHERE loan_id = $1", loan_id)
    return f"dead letters: {letters}\nevent log: {log}\nstate: {state}"


async def assert_invalid_are_dead(pipeline: Pipeline, traffic: Traffic) -> None:
    """Every invalid message is a dead letter with its reason; every parked event was released."""
    rows = await pipeline.fetch("SELECT * FROM dead_letters")
    dead = {r["key"]: r for r in rows if r["status"] == "dead"}
    expected_keys = {key.decode() for _, key, _ in traffic.invalid if key}
    assert set(dead) == expected_keys, sorted(set(dead) ^ expected_keys)[:10]
    for row in dead.values():
        assert row["error"] and row["error_class"] and row["value"] is not None, row
    unreleased = [r["id"] for r in rows if r["status"] not in ("dead", "released")]
    assert not unreleased, unreleased[:10]


async def explain_queue(pipeline: Pipeline, loan_id: str) -> str:
    """A stuck loan's queue as its stored state has it, and its timer (for failure messages)."""
    from lendstream.tables.loans import decode

    rows = await pipeline.fetch("SELECT seq, state FROM loan_state WHERE loan_id = $1", loan_id)
    timers = await pipeline.fetch("SELECT * FROM loan_timers WHERE loan_id = $1", loan_id)
    if not rows:
        return f"{loan_id}: no stored state; timers {timers}"
    keyed = decode(rows[0]["state"])
    queue = "\n".join(
        f"  {p.id} {p.event.type if p.event else 'invalid'} {p.status} {p.error_class} "
        f"attempts={p.attempts} retries={p.retries} retry_at={p.retry_at} needs={sorted(p.needs)} "
        f"error={p.error}"
        for p in keyed.queue
    )
    status = keyed.state.status if keyed.state else None
    return f"{loan_id}: seq {rows[0]['seq']}, status {status}, timers {timers}\n{queue}"
