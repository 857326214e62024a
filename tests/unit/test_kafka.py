"""`lendstream.kafka.leave_group_in_any_generation` with a stand-in for aiokafka's group
coordinator (a real worker's LeaveGroup on SIGTERM is exercised against the broker by
`tests/chaos/test_scale_out.py` and measured by `python -m tests.bench --scale-chaos`)."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

from lendstream.kafka import leave_group_in_any_generation


class FakeCoordinator:
    group_id = "lendstream"

    def __init__(self, generation: int, member_id: str = "m-1", fail: bool = False) -> None:
        self.generation = generation
        self.member_id = member_id
        self._group_instance_id: str | None = None
        self.fail = fail
        self.sent: list[Any] = []
        self.left_as_aiokafka_does = False

    async def _send_req(self, request: Any) -> None:
        if self.fail:
            raise KafkaConnectionError("closed")
        self.sent.append(request)

    async def _maybe_leave_group(self) -> None:
        self.left_as_aiokafka_does = True

    def reset_generation(self) -> None:
        self.generation = -1
        self.member_id = JoinGroupRequest.UNKNOWN_MEMBER_ID


async def test_a_member_of_generation_zero_sends_leave_group() -> None:
    coordinator = FakeCoordinator(generation=0)
    leave_group_in_any_generation(coordinator)
    await coordinator._maybe_leave_group()
    [request] = coordinator.sent
    assert isinstance(request, LeaveGroupRequest)
    assert (request._group, request._member_id) == ("lendstream", "m-1")
    assert coordinator.generation == -1 and not coordinator.left_as_aiokafka_does


async def test_later_generations_non_members_and_static_members_leave_as_aiokafka_does() -> None:
    static = FakeCoordinator(generation=0)
    static._group_instance_id = "w1"
    for coordinator in (
        FakeCoordinator(generation=3),
        FakeCoordinator(generation=0, member_id=JoinGroupRequest.UNKNOWN_MEMBER_ID),
        static,
    ):
        leave_group_in_any_generation(coordinator)
        await coordinator._maybe_leave_group()
        assert coordinator.left_as_aiokafka_does and not coordinator.sent


async def test_a_failed_leave_is_logged_and_the_close_goes_on() -> None:
    coordinator = FakeCoordinator(generation=0, fail=True)
    leave_group_in_any_generation(coordinator)
    await coordinator._maybe_leave_group()  # does not raise
    assert coordinator.generation == -1
