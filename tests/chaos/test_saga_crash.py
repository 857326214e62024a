"""The payout saga survives SIGKILL (issue 4, acceptance 3): the 2,000-loan run of
`tests/integration/sagas/test_payout_saga.py`, with the worker killed at random moments at
least three times (every second restart on a wiped data dir, so the tables come back from their
changelogs and PostgreSQL alone). The same checks hold, and every saga ends in exactly one
terminal status."""

from __future__ import annotations

import os
import random
import time

import pytest

from lendstream.gateway_sim import GatewaySimulator, SimulatorConfig, serving
from tests import saga_scenario as scenario
from tests.harness import Pipeline

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

LOANS = int(os.environ.get("SAGA_TEST_LOANS", "2000"))
KILLS = 3


async def test_saga_survives_repeated_sigkill(pipeline: Pipeline) -> None:
    sim = GatewaySimulator(SimulatorConfig(transient_rate=0.2, permanent_rate=0.02, seed=5,
                                           hang_seconds=1.5))  # fmt: skip
    traffic = scenario.loans(LOANS, seed=5)
    rng = random.Random(5)
    async with serving(sim) as url:
        await pipeline.create_topics()
        start = time.monotonic()
        await scenario.feed(pipeline, traffic)
        kills = await pipeline.crash_repeatedly(rng, KILLS, **scenario.saga_settings(url))
        assert kills == KILLS, f"the run ended after {kills} kills; make it longer"
        counts = await scenario.settle_and_check(pipeline, sim, traffic, False, 600)
        print(f"{LOANS} loans, {kills} kills, {scenario.elapsed(start)}s: {counts}")
