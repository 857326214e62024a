"""`lendstream loan L --as-of T` and a plain SQL filter on `loan_history` show the loan as of T."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import orjson
import pytest

from lendstream.devstack import worker_env
from lendstream.simulation import interleave, population
from tests import oracle
from tests.harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

AS_OF_SQL = """
SELECT * FROM loan_history
WHERE loan_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
"""


def cli_loan(pipeline: Pipeline, loan_id: str, as_of: datetime) -> dict[str, object] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(worker_env(pipeline.settings))
    done = subprocess.run(
        [sys.executable, "-m", "lendstream", "loan", loan_id, "--as-of", as_of.isoformat(), "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode == 2 and "not found" in done.stderr:
        return None
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


async def test_loan_as_of_matches_the_events_up_to_that_time(pipeline: Pipeline) -> None:
    lifecycles = [lc for lc in population(seed=3, loans=40) if len(lc) >= 6][:5]
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce(interleave(3, lifecycles))
    await pipeline.wait_caught_up(timeout=120)

    for events in lifecycles:
        loan_id = events[0].key
        times = [oracle._ts(e.value["occurred_at"]) for e in events]
        probes = [
            times[0] - timedelta(seconds=1),
            times[2],
            times[3] + timedelta(seconds=1),
            times[-1],
        ]
        for as_of in probes:
            upto = [e for e, t in zip(events, times, strict=True) if t <= as_of]
            expected = oracle.fold_loan(upto) if upto else None
            sql = await pipeline.fetch(AS_OF_SQL, loan_id, as_of)
            cli = cli_loan(pipeline, loan_id, as_of)
            if expected is None:
                assert sql == [] and cli is None
                continue
            assert len(sql) == 1
            for column in (
                "status",
                "repaid_cents",
                "outstanding_cents",
                "version",
                "approved_amount_cents",
            ):
                assert sql[0][column] == expected[column], (loan_id, as_of, column)
                assert cli is not None and cli[column] == expected[column], (loan_id, as_of, column)
