"""`tests.bench.components` at a tiny size, so that it cannot rot when the loan processor's hot
path changes (the figures are not checked: speed belongs to the benchmark run, not to tests)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from lendstream.embedded import Postgres
from tests.bench import components

EVENTS, BATCH, DAU = 400, 100, 50


@pytest.fixture(scope="module")
def measured() -> tuple[dict[str, float], list[components.BatchRows]]:
    return components.run(components.traffic(EVENTS, DAU), BATCH)


@pytest.mark.timeout(120)
def test_every_phase_is_measured(
    measured: tuple[dict[str, float], list[components.BatchRows]],
) -> None:
    spent, payloads = measured
    assert list(spent) == list(components.PHASES)
    assert all(isinstance(s, float) and s >= 0 for s in spent.values()), spent
    assert len(payloads) == EVENTS // BATCH
    assert sum(len(p.rows.event_log) for p in payloads) > 0, "no event was applied"
    assert sum(len(p.states) for p in payloads) > 0, "no loan state changed"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_every_statement_kind_is_measured_on_postgres(
    measured: tuple[dict[str, float], list[components.BatchRows]], postgres: Postgres
) -> None:
    _, payloads = measured
    schema = f"c_{uuid.uuid4().hex[:12]}"
    spent = asyncio.run(components.write_to_postgres(postgres.dsn, payloads, postgres.pid, schema))
    for kind in (
        "all statements, one transaction per batch",
        "server CPU (PostgreSQL processes)",
        "INSERT loan_state",
        "INSERT event_log",
        "event_log by COPY + INSERT SELECT (alternative)",
        "event_log by unnest arrays (alternative)",
    ):
        assert kind in spent, sorted(spent)
