"""Crash test for the failure handling (issue 3, acceptance 4): SIGKILL the worker while events
are retrying (transient failures of the fold, injected by `tests.fault_worker`) and parked
(events that come before what they depend on): after the restarts nothing is lost, duplicated
or reordered — the read models equal the oracle and every parked or retrying event was released.

Each chosen event fails its first two attempts, counted across worker processes (a ledger in
the test's directory), so no event can use up its backoff tiers however the kills fall, and
the expected end state is fixed.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from tests.harness import Pipeline
from tests.poison import early_events
from tests.traffic import Traffic, build
from tests.verify import assert_read_models_match, explain_queue

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]
FAULT_WORKER = ("-m", "tests.fault_worker")
KILLS = 3


async def test_sigkill_while_retrying_and_parked_loses_repeats_and_reorders_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    rng = random.Random(4)
    traffic = build(seed=41, loans=1200, min_events=30_000, invalid=0)
    early: list[list[object]] = []
    stream: list[object] = list(traffic.stream)
    for n in range(20):
        lives, order = early_events(f"E{n}")
        early += lives
        at = rng.randrange(len(stream))
        stream[at:at] = order
    flaky = rng.sample([p for life in traffic.lifecycles for p in life], 60)
    plan = tmp_path / "failures.json"
    plan.write_bytes(orjson.dumps({p.value["event_id"]: 2 for p in flaky}))
    ledger = tmp_path / "attempts"
    ledger.mkdir()

    await pipeline.create_topics()
    await pipeline.produce(stream)  # type: ignore[arg-type]
    kills = await pipeline.crash_repeatedly(
        rng, KILLS, command=(*FAULT_WORKER, str(plan), str(ledger)), retry_backoff=(0.5, 1.0, 1.0)
    )
    assert kills == KILLS, f"the worker finished after only {kills} kills"
    await pipeline.wait_caught_up(timeout=600)
    try:
        await pipeline.wait_for(
            "SELECT id, key, status, error_class, error, attempts FROM dead_letters "
            "WHERE status <> 'released' ORDER BY key, topic, \"offset\"",
            lambda rows: rows == [], 120,
            "every retrying and parked event released",
        )  # fmt: skip
    except AssertionError as failure:
        stuck = await pipeline.fetch(
            "SELECT DISTINCT key FROM dead_letters WHERE status <> 'released'"
        )
        raise AssertionError(
            f"{failure}\n{await explain_queue(pipeline, stuck[0]['key'])}"
        ) from None

    lifecycles = traffic.lifecycles + early  # type: ignore[operator]
    await assert_read_models_match(pipeline, Traffic(lifecycles, [], traffic.duplicates, []))
    retried = await pipeline.fetch(
        "SELECT count(*) AS n FROM dead_letters WHERE error_class = 'Transient' OR attempts > 2"
    )
    assert retried[0]["n"] > 0, "no event was still retrying when a worker was killed"
