"""The rebuild's refusals, without a broker: truncated input and a silent fold process."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from lendstream.projections import rebuild as rebuild_module
from lendstream.projections.rebuild import (
    ProcessFolds,
    RebuildStalled,
    TruncatedInput,
    refuse_truncated,
)
from lendstream.settings import Settings


def test_partitions_that_start_at_zero_pass() -> None:
    refuse_truncated({TopicPartition("loan-events", 0): 0, TopicPartition("loan-events", 1): 0})


def test_every_truncated_partition_is_named_in_order() -> None:
    firsts = {
        TopicPartition("payment-events", 2): 1_500,
        TopicPartition("loan-events", 0): 0,
        TopicPartition("loan-events", 3): 7,
    }
    with pytest.raises(TruncatedInput) as refused:
        refuse_truncated(firsts)
    message = str(refused.value)
    assert "loan-events[3] starts at offset 7; payment-events[2] starts at offset 1,500." in message
    assert "loan-events[0]" not in message
    assert "--from-retained" in message


async def test_a_fold_process_that_stays_silent_fails_the_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live fold process that sends nothing (it hangs) in the swap round is a stall once the
    stall timeout and the margin passed: the rebuild does not wait for ever while it holds the
    live worker's position locks."""
    monkeypatch.setattr(rebuild_module, "SILENCE_MARGIN_SECONDS", 0.0)
    settings = Settings(rebuild_stall_timeout=0.2, _env_file=None)  # type: ignore[call-arg]
    rebuild: Any = SimpleNamespace(settings=settings, progress=None)
    folds = ProcessFolds(rebuild, [], workers=1)
    ours, theirs = multiprocessing.Pipe()
    child: Any = SimpleNamespace(name="rebuild-fold-0", pid=4242)
    folds.children.append((child, ours))
    try:
        with pytest.raises(RebuildStalled, match=r"rebuild-fold-0 \(pid 4242\) reported nothing"):
            await folds.round(None, {}, swap=True)
        assert theirs.recv() == ("round", {})
    finally:
        ours.close()
        theirs.close()
        folds.threads.shutdown()
