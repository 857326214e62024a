"""`app.client_fetch_state`: the stall watch's account of a stuck partition in the client."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka.structs import TopicPartition

from lendstream.app import client_fetch_state
from tests.offline_app import offline_app

TP = TopicPartition("payout-events", 1)


def consumer_with(position: int, paused: bool, buffered: bool) -> Any:
    """The few attributes of Faust's consumer and aiokafka's client the function reads."""
    state = SimpleNamespace(position=position, has_valid_position=True, paused=paused)
    assignment = SimpleNamespace(state_value=lambda tp: state)
    client = SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)),
        _fetcher=SimpleNamespace(_records={TP: object()} if buffered else {}),
    )
    return SimpleNamespace(_thread=SimpleNamespace(_consumer=client), _paused_partitions=set())


def test_it_says_where_the_client_stands_on_the_partition() -> None:
    app: Any = SimpleNamespace(consumer=consumer_with(3467, paused=False, buffered=False))
    assert client_fetch_state(app, *TP) == (
        "client position 3467, not paused, no fetched records waiting in the client"
    )
    app.consumer = consumer_with(3557, paused=True, buffered=True)
    assert client_fetch_state(app, *TP) == (
        "client position 3557, paused, fetched records waiting in the client"
    )


def test_a_client_it_cannot_read_is_unknown_not_an_error(tmp_path: Path) -> None:
    app = offline_app(tmp_path)  # never started: no consumer thread
    assert client_fetch_state(app, *TP) == "client fetch state unknown"
