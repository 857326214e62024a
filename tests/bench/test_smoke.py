"""The benchmark at a tiny size, so that its code cannot rot (the figures are not checked:
speed belongs to the benchmark run, not to tests)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import fields
from pathlib import Path

import pytest

from lendstream.embedded import Broker, Postgres
from lendstream.pg import drop_schema
from tests.bench.measure import Options, Results, run_benchmark
from tests.bench.report import format_table, rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STAGES = ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)")


def test_every_stage_runs_on_a_small_backlog(
    broker: Broker, postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several batches, as in a real run: a catch-up done in its first batch has no rate after
    # start-up (the start-up ends when the first batch is committed).
    monkeypatch.setenv("LENDSTREAM_BATCH_MAX", "1000")
    schema = f"b_{uuid.uuid4().hex[:12]}"
    options = Options(events=5_000, dau=300, latency_rate=500, latency_seconds=2,
                      stage_timeout=240)  # fmt: skip
    try:
        results = asyncio.run(
            run_benchmark(
                options,
                broker.url,
                postgres.dsn,
                tmp_path,
                print,
                schema=schema,
                service_pids={"broker": broker.proc.pid, "postgres": postgres.pid},
            )
        )
    finally:
        for suffix in ("", "__rebuild", "_scale"):
            asyncio.run(drop_schema(postgres.dsn, schema + suffix))

    assert isinstance(results, Results)
    for name in (f.name for f in fields(Results) if f.name != "profile"):  # profile: optional
        assert getattr(results, name) not in (None, {}), f"{name} was not measured"
    assert results.backlog["events"] == 5_000
    assert results.ceiling["events"] == 5_000
    assert results.catch_up is not None and results.catch_up.events == 5_000
    assert set(results.catch_up.cpu_us_per_event) == {"workers", "broker", "postgres"}
    assert results.latency is not None and results.latency.events > 0
    assert results.restore is not None and results.restore.records > 0
    assert results.scale_out is not None and results.scale_out.workers == 2
    assert results.rebuild is not None
    assert set(results.rebuild.cpu_us_per_event) == {"rebuild", "broker", "postgres"}
    assert 0 < results.rebuild.fold_seconds <= results.rebuild.seconds
    assert results.floor["events"] >= 5_000 + results.latency.events
    assert results.floor_batched["events"] >= 5_000 + results.latency.events
    assert results.rebuild.events == 5_000 + results.latency.events
    table = format_table(results)
    assert all(stage in table for stage in STAGES), table
    assert all(row.value == row.value for row in rows(results)), "a figure is NaN"
    json.dumps(results.as_json(), default=str)
