"""`lendstream.kafka.leave_group_first_on_close` with a stand-in for aiokafka's group
coordinator (a real worker's LeaveGroup on SIGTERM is exercised against the broker by
`tests/chaos/test_scale_out.py` and measured by `python -m tests.bench --scale-chaos`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

from lendstream import kafka
from lendstream.kafka import leave_group_first_on_close


class FakeCoordinator:
    group_id = "lendstream"

    def __init__(self, generation: int, member_id: str = "m-1", fail: bool = False) -> None:
        self.generation = generation
        self.member_id = member_id
        self._group_instance_id: str | None = None
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.fail = fail
        self.events: list[str] = []
        self.sent: list[Any] = []
        self.join_answered = asyncio.Event()
        self._coordination_task = asyncio.ensure_future(self._coordination_routine())

    async def _coordination_routine(self) -> None:
        await self.join_answered.wait()  # a JoinGroup the broker holds back
        self.events.append("coordination ended")

    async def _send_req(self, request: Any) -> None:
        if self.fail:
            raise KafkaConnectionError("closed")
        self.sent.append(request)
        self.events.append("left")
        self.join_answered.set()  # the broker answers a pending JoinGroup of a leaving member

    async def _stop_heartbeat_task(self) -> None:
        self.events.append("heartbeat stopped")

    async def _stop_commit_offsets_refresh_task(self) -> None:
        pass

    def reset_generation(self) -> None:
        self.generation = -1
        self.member_id = JoinGroupRequest.UNKNOWN_MEMBER_ID


@pytest.mark.parametrize("generation", [0, 1, -1])  # -1: rejoining after a rebalance began
async def test_a_member_leaves_before_the_pending_join_is_waited_for(generation: int) -> None:
    coordinator = FakeCoordinator(generation)
    leave_group_first_on_close(coordinator)
    await asyncio.wait_for(coordinator.close(), 1)
    [request] = coordinator.sent
    assert isinstance(request, LeaveGroupRequest)
    assert (request._group, request._member_id) == ("lendstream", "m-1")
    assert coordinator.events == ["left", "coordination ended", "heartbeat stopped"]
    assert coordinator._closing.done() and coordinator.generation == -1


async def test_a_consumer_that_is_no_member_or_static_does_not_leave() -> None:
    static = FakeCoordinator(1)
    static._group_instance_id = "w1"
    for coordinator in (FakeCoordinator(0, member_id=JoinGroupRequest.UNKNOWN_MEMBER_ID), static):
        coordinator.join_answered.set()
        leave_group_first_on_close(coordinator)
        await coordinator.close()
        assert not coordinator.sent


async def test_a_failed_leave_is_logged_and_the_close_ends_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "LEAVE_TIMEOUT_SECONDS", 0.05)
    coordinator = FakeCoordinator(0, fail=True)
    leave_group_first_on_close(coordinator)
    await asyncio.wait_for(coordinator.close(), 1)  # the held-back join is cancelled
    assert coordinator._coordination_task.cancelled()
    assert coordinator.events == ["heartbeat stopped"]


async def test_closing_twice_is_a_no_op() -> None:
    coordinator = FakeCoordinator(1)
    leave_group_first_on_close(coordinator)
    await coordinator.close()
    await coordinator.close()
    assert len(coordinator.sent) == 1
