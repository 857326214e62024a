"""Scale-out (issue 8, acceptance 1): three workers in one consumer group share the partitions;
during the run one is SIGKILLed and another stopped with SIGTERM (it must leave the group
cleanly, handing its partitions over), then both start again.

Two runs, because the oracle of the 100,000-event traffic is written for input that carries its
own payout events (the saga off):

- 100,000+ events (duplicates and invalid messages mixed in): the read models equal the
  independent oracle row by row, and each loan's `LoanPaidOut` is recorded once.
- the payout saga on, with the gateway simulator: every payout_id is accepted by the gateway at
  most once, the accepted ones are exactly the paid-out loans, and every other check of
  `tests/saga_scenario.py` holds.

Whether three workers finish sooner than one is a measurement, not an assertion here: the
benchmark runs one worker, then three through the same SIGKILL, SIGTERM and restarts, on the
same backlog: `python -m tests.bench --events 100000 --stages bg --scale-workers 3 --scale-chaos`
(README, "Benchmarks"; results in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from lendstream.gateway_sim import GatewaySimulator, SimulatorConfig, serving
from tests import oracle
from tests import saga_scenario as scenario
from tests.harness import Pipeline, WorkerProcess
from tests.traffic import build
from tests.verify import assert_invalid_are_dead, assert_read_models_match

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

NAMES = ("w1", "w2", "w3")
EVENTS = int(os.environ.get("SCALE_TEST_EVENTS", "100000"))
SAGA_LOANS = int(os.environ.get("SCALE_TEST_SAGA_LOANS", "1500"))


async def stop_gracefully(worker: WorkerProcess) -> None:
    """SIGTERM, in a thread (the test's event loop may be serving the gateway simulator); the
    worker must exit by itself, with 0, before the harness's deadline."""
    await asyncio.to_thread(worker.stop)
    assert worker.proc.returncode == 0, (
        f"{worker.name} did not stop cleanly on SIGTERM (exit {worker.proc.returncode}):\n"
        f"{worker.log_tail()}"
    )


async def test_three_workers_through_sigkill_and_sigterm_match_the_oracle(
    pipeline: Pipeline,
) -> None:
    traffic = build(seed=23, loans=EVENTS // 25, min_events=EVENTS)
    assert sum(map(len, traffic.lifecycles)) >= EVENTS
    await pipeline.create_topics()
    await pipeline.produce(traffic.stream)
    workers = {name: pipeline.start_worker(name) for name in NAMES}

    await pipeline.wait_for_share(0.15, timeout=300)
    workers["w2"].kill()
    await pipeline.wait_for_share(0.30, timeout=300)
    await stop_gracefully(workers["w3"])
    reached = await pipeline.wait_for_share(0.45, timeout=300)
    assert reached < 1.0, "the run ended before the restarts; make it longer"
    for name in ("w2", "w3"):
        pipeline.start_worker(name)
    await pipeline.wait_caught_up(timeout=600)

    await assert_read_models_match(pipeline, traffic)
    await assert_invalid_are_dead(pipeline, traffic)
    paid = await pipeline.fetch(
        "SELECT loan_id, count(*) AS n FROM event_log WHERE type = 'LoanPaidOut' GROUP BY loan_id"
    )
    expected = {k for k, row in oracle.fold_all(traffic.lifecycles).items() if row["paid_out_at"]}
    assert all(r["n"] == 1 for r in paid), [r for r in paid if r["n"] != 1][:5]
    assert {r["loan_id"] for r in paid} == expected
    pipeline.assert_no_crash()


async def test_three_workers_with_the_saga_pay_each_payout_once(pipeline: Pipeline) -> None:
    sim = GatewaySimulator(SimulatorConfig(seed=8))
    traffic = scenario.loans(SAGA_LOANS, seed=8)
    finished = "SELECT count(*) AS n FROM saga_instances WHERE status <> 'running'"

    def at_least(count: int) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda rows: bool(rows) and rows[0]["n"] >= count

    async with serving(sim) as url:
        await pipeline.create_topics()
        settings = scenario.saga_settings(url)
        workers = {name: pipeline.start_worker(name, **settings) for name in NAMES}
        start = time.monotonic()
        await scenario.feed(pipeline, traffic)

        await pipeline.wait_for(finished, at_least(SAGA_LOANS // 5), 300, "a fifth of the sagas")
        workers["w2"].kill()
        await pipeline.wait_for(finished, at_least(SAGA_LOANS * 2 // 5), 300, "two fifths")
        await stop_gracefully(workers["w3"])
        rows = await pipeline.wait_for(finished, at_least(SAGA_LOANS * 3 // 5), 300, "3/5")
        assert rows[0]["n"] < SAGA_LOANS, "the sagas ended before the restarts; use more loans"
        for name in ("w2", "w3"):
            pipeline.start_worker(name, **settings)

        counts = await scenario.settle_and_check(pipeline, sim, traffic, True, 600)
        print(f"{SAGA_LOANS} loans on 3 workers in {scenario.elapsed(start)}s: {counts}")
    pipeline.assert_no_crash()
