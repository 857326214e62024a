"""The pipelined batch loop (`batch.Pipeline`) and the table read through not-yet-written
values (`batch.load_states`). The queue and the table are stand-ins: what is tested is the
order of prepare, commit and ack, not Kafka or RocksDB (the integration and chaos tests run
the same loop against the real broker and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from lendstream.agents import batch


class Batches:
    """`BatchQueue.take` and `ack` over a fixed list of batches; then waits for ever."""

    def __init__(self, *batches: list[str]) -> None:
        self.batches = list(batches)
        self.acked: list[list[str]] = []
        self.log: list[str] = []

    async def take(self, max_events: int, within: float) -> list[str]:
        if not self.batches:
            await asyncio.Event().wait()
        return self.batches.pop(0)

    def ack(self, events: list[str]) -> None:
        self.log.append(f"ack {events[0]}")
        self.acked.append(events)


class Stopped(Exception):
    """Raised by the stand-in for `fail_stop` (the real one ends the process)."""


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    called: list[str] = []

    def fail_stop(what: str, reason: str | None = None) -> None:
        called.append(what)
        raise Stopped(what)

    monkeypatch.setattr(batch, "fail_stop", fail_stop)
    return called


def preparing(queue: Batches, commit_seconds: float, failing: str | None = None) -> Any:
    async def prepare(events: list[str]) -> batch.Prepared:
        name = events[0]
        queue.log.append(f"prepare {name}")

        async def finish() -> None:
            queue.log.append(f"commit {name}")
            await asyncio.sleep(commit_seconds)
            if name == failing:
                raise RuntimeError("PostgreSQL said no")
            queue.log.append(f"committed {name}")

        return batch.Prepared(finish, drop=lambda: queue.log.append(f"drop {name}"))

    return prepare


async def run_until(queue: Batches, prepare: Any, acked: int) -> None:
    await run_until_with(batch.Pipeline(prepare, "loan-processor"), queue, acked)


async def test_the_next_batch_is_prepared_while_the_previous_one_commits() -> None:
    queue = Batches(["a"], ["b"], ["c"])
    await run_until(queue, preparing(queue, commit_seconds=0.05), acked=3)
    assert queue.acked == [["a"], ["b"], ["c"]]
    log = queue.log
    assert log.index("prepare b") < log.index("committed a")  # overlapped
    assert log.index("committed a") < log.index("commit b")  # commits one after another
    assert log.index("committed b") < log.index("commit c")
    for name in "abc":  # each batch acked only after its own commit
        assert log.index(f"committed {name}") < log.index(f"ack {name}")


async def test_a_failed_commit_stops_before_anything_later_is_committed_or_acked(
    stops: list[str],
) -> None:
    queue = Batches(["a"], ["b"], ["c"])
    await run_until(queue, preparing(queue, commit_seconds=0.02, failing="a"), acked=3)
    assert stops and set(stops) == {"loan-processor"}
    assert queue.acked == []
    assert "commit b" not in queue.log


async def test_a_cancelled_agent_lets_the_commit_in_flight_end_and_drops_what_it_prepared() -> None:
    queue = Batches(["a"], ["b"])
    await cancel_once_b_is_prepared(
        batch.Pipeline(preparing(queue, commit_seconds=0.1), "loan-processor"), queue
    )
    assert "drop b" in queue.log  # its values must not be read as newer than the table's
    await asyncio.sleep(0.2)
    assert queue.acked == [["a"]]
    assert "commit b" not in queue.log


async def test_a_restarted_agent_waits_for_the_commit_in_flight_before_committing() -> None:
    queue = Batches(["a"], ["b"])
    pipeline = batch.Pipeline(preparing(queue, commit_seconds=0.2), "loan-processor")
    await cancel_once_b_is_prepared(pipeline, queue)
    queue.batches.append(["c"])  # Faust restarts the agent; "a" is still committing
    await run_until_with(pipeline, queue, acked=2)
    log = queue.log
    assert queue.acked == [["a"], ["c"]]
    assert log.index("committed a") < log.index("commit c")


async def cancel_once_b_is_prepared(pipeline: batch.Pipeline, queue: Batches) -> None:
    """Run `pipeline` and cancel it, as Faust stops an agent, while it waits for "a"'s commit
    with "b" prepared."""
    loop = asyncio.ensure_future(pipeline.run(queue, 10, 0.1))  # type: ignore[arg-type]
    while "prepare b" not in queue.log:
        await asyncio.sleep(0.005)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


async def run_until_with(pipeline: batch.Pipeline, queue: Batches, acked: int) -> None:
    loop = asyncio.ensure_future(pipeline.run(queue, 10, 0.1))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if len(queue.acked) >= acked or loop.done():
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


class Table:
    """`table.get` of a Faust table, from a dict."""

    def __init__(self, values: Mapping[bytes, bytes]) -> None:
        self.values = dict(values)

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)


class Event:
    """Only what `as_current` needs: something that can be weakly referenced."""


async def test_load_states_reads_values_not_yet_written_newest_first() -> None:
    table = Table({b"L1": b"table-1", b"L2": b"table-2", b"L3": b"table-3"})
    unwritten = [{"L1": b"batch-1", "L2": b"batch-1"}, {"L1": b"batch-2"}]

    async def nothing_newer(keys: list[str], seqs: list[int]) -> list[Any]:
        return []

    states, from_postgres = await batch.load_states(
        table,  # type: ignore[arg-type]
        {key: Event() for key in ("L1", "L2", "L3", "L4")},  # type: ignore[misc]
        lambda key, raw: raw,
        lambda state: 0,
        nothing_newer,
        "loan_id",
        unwritten,
    )
    assert states == {"L1": b"batch-2", "L2": b"batch-1", "L3": b"table-3", "L4": None}
    assert from_postgres == set()
