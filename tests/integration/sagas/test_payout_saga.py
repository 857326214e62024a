"""The payout saga end to end (issue 4, acceptance 2): 2,000 loans through a real worker,
broker, PostgreSQL and gateway simulator failing 20% of calls transiently and 2% permanently.
The checks are in `tests/saga_scenario.py`."""

from __future__ import annotations

import os
import time

import pytest

from lendstream.gateway_sim import GatewaySimulator, SimulatorConfig, serving
from tests import saga_scenario as scenario
from tests.harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LOANS = int(os.environ.get("SAGA_TEST_LOANS", "2000"))


async def test_two_thousand_loans_through_a_failing_gateway(pipeline: Pipeline) -> None:
    sim = GatewaySimulator(SimulatorConfig(transient_rate=0.2, permanent_rate=0.02, seed=4,
                                           hang_seconds=1.5))  # fmt: skip
    traffic = scenario.loans(LOANS, seed=4)
    async with serving(sim) as url:
        await pipeline.create_topics()
        pipeline.start_worker(**scenario.saga_settings(url))
        start = time.monotonic()
        await scenario.feed(pipeline, traffic)
        counts = await scenario.settle_and_check(pipeline, sim, traffic, True, 420)
        print(f"{LOANS} loans in {scenario.elapsed(start)}s: {counts}")
    pipeline.assert_no_crash()
