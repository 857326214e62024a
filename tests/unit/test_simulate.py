"""`lendstream simulate` without a broker: finding the broker, the progress line, bad input."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from lendstream.cli import main
from lendstream.devstack import ENDPOINTS_FILE, dev_endpoints
from lendstream.settings import Settings
from lendstream.simulate import NoBroker, ProduceReport, broker_for, progress_line
from lendstream.simulation import Simulation
from tests.unit.test_settings import clean_environment  # noqa: F401  (autouse: no LENDSTREAM_*)


def settings(tmp_path: Path, kafka: str | None = None) -> Settings:
    return Settings(kafka=kafka, data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]


def write_endpoints(tmp_path: Path, pid: int) -> None:
    endpoints = {"kafka": "kafka://127.0.0.1:4567", "pg_dsn": "postgresql://x", "pid": pid}
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(endpoints))


def test_the_configured_broker_comes_first(tmp_path: Path) -> None:
    write_endpoints(tmp_path, os.getpid())
    assert broker_for(settings(tmp_path, "kafka://k1:9092")) == ["k1:9092"]


def test_without_a_configured_broker_the_running_dev_stack_is_used(tmp_path: Path) -> None:
    write_endpoints(tmp_path, os.getpid())
    assert broker_for(settings(tmp_path)) == ["127.0.0.1:4567"]


def test_a_dev_stack_that_is_gone_is_no_broker(tmp_path: Path) -> None:
    write_endpoints(tmp_path, 2**22 + 12345)  # above any pid_max default: no such process
    assert dev_endpoints(tmp_path) is None
    with pytest.raises(NoBroker, match="LENDSTREAM_KAFKA"):
        broker_for(settings(tmp_path))


def test_the_progress_line_says_what_was_produced() -> None:
    sim = Simulation(seed=1, dau=100)
    list(itertools.islice(sim, 500))
    line = progress_line(sim, ProduceReport(events=500, seconds=2.0))
    assert "500 events in 2.0s (250/s)" in line
    assert f"loans {sim.loans_started:,}" in line


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dau", "0", "--duration", "5"], "--dau must be at least 1"),
        (["--dau", "10"], "--duration SECONDS (> 0) is needed"),
        (["--dau", "10", "--duration", "5", "--rate", "0"], "--rate must be positive"),
        (["--dau", "10", "--backlog", "0"], "--backlog must be at least 1"),
        (["--dau", "10", "--duration", "5"], "no broker: set LENDSTREAM_KAFKA"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1
