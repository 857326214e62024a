"""`lendstream dev` without starting anything: the payout progress line, the simulator's
options, bad gateway rates, how simulated traffic mixes repayments and new loans."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from lendstream.cli import _parser, main
from lendstream.devstack import (
    SAGA_STATUSES,
    SimulatorPayouts,
    next_chunk,
    payouts_line,
    simulator_args,
)
from lendstream.gateway_sim import SimulatorConfig
from lendstream.simulation import Produced
from tests.unit.test_settings import clean_environment  # noqa: F401  (autouse: no LENDSTREAM_*)


def test_the_payouts_line_shows_sagas_per_status_and_the_simulators_tally() -> None:
    sagas = {"running": 3, "completed": 120, "compensated": 2, "failed": 9}
    line = payouts_line(sagas, SimulatorPayouts(accepted=121, requests=140), simulated=True)
    assert line == (
        "payout sagas: running=3 completed=120 compensated=2 failed=9 | "
        "gateway simulator: 121 payouts accepted, 140 requests"
    )


def test_the_payouts_line_says_what_it_cannot_show() -> None:
    empty = dict.fromkeys(SAGA_STATUSES, 0)
    assert payouts_line(empty, None, simulated=False) == (
        "payout sagas: running=0 completed=0 compensated=0 failed=0"
    )
    assert payouts_line(empty, None, simulated=True).endswith("gateway simulator not answering")
    assert payouts_line(None, None, simulated=False) == (
        "payouts: saga off (LENDSTREAM_PAYOUT_SAGA=false)"
    )


def test_the_simulator_is_started_with_the_dev_failure_rates() -> None:
    config = SimulatorConfig(transient_rate=0.2, permanent_rate=0.03, seed=7, hang_seconds=4.5)
    args = _parser().parse_args(["gateway-sim", *simulator_args(config)])
    assert (args.transient_rate, args.permanent_rate, args.seed, args.hang_seconds) == (
        0.2, 0.03, 7, 4.5,
    )  # fmt: skip


def test_dev_has_gateway_failure_rates_by_default() -> None:
    args = _parser().parse_args(["dev", "--simulate"])
    assert (args.gateway_transient_rate, args.gateway_permanent_rate) == (0.05, 0.01)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--gateway-transient-rate", "1.5"], "--gateway-transient-rate must be between 0 and 1"),
        (["--gateway-permanent-rate", "-0.1"], "--gateway-permanent-rate must be between 0 and 1"),
        (
            ["--gateway-transient-rate", "0.7", "--gateway-permanent-rate", "0.4"],
            "--gateway-transient-rate + --gateway-permanent-rate must not exceed 1",
        ),
    ],
)
def test_bad_gateway_rates_are_one_line_and_exit_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1


def message(n: int) -> Produced:
    return Produced("t", str(n), {"n": n})


def test_due_repayments_come_first_but_leave_room_for_new_loans() -> None:
    due = deque(message(n) for n in range(100))
    originations = (message(-n) for n in itertools.count(1))
    chunk = next_chunk(due, originations, 20)
    assert chunk == [message(n) for n in range(18)] + [message(-1), message(-2)]
    assert len(due) == 82
    chunk = next_chunk(deque([message(5)]), originations, 3)
    assert chunk == [message(5), message(-3), message(-4)]
    assert next_chunk(deque(), originations, 1) == [message(-5)]
    assert next_chunk(deque([message(6)]), originations, 1) == [message(-6)]  # always one new
