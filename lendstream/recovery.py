"""A fix for a message-loss race in faust-streaming's table recovery (seen in 0.15.3).

When recovery ends, Faust resumes the source partitions, then seeks them to the committed
offsets (a round trip per partition, about a second here), then resumes the flow control —
which clears the stream queues. The consumer's flow is already active from reading the
changelogs, so records fetched from the committed offsets during the seek are delivered into
the stream queues, marked as read, and then cleared; their re-fetched copies are dropped as
already read. The crash test lost hundreds of messages per partition after every restart with a
changelog restore. The race is in Faust, not in the broker.

`FixedRecovery` keeps the source partitions paused until they have been sought and the queues
cleared, and only then resumes fetching them; partitions without a committed offset, which
aiokafka does not seek at all, are sought to their start. `agents.contiguity` checks, against our own
durable positions, that no message is ever skipped, whatever the cause.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.tables.recovery import Recovery


class FixedRecovery(Recovery):
    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self.app.on_rebalance_complete.send()
        await self._seek_then_resume(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        await self._seek_then_resume(generation_id)

    async def _seek_uncommitted_to_start(self, consumer: Any, sources: set[Any]) -> None:
        """Seek the source partitions that have no committed offset to their start.

        aiokafka's `seek_to_committed` leaves such a partition where its fetcher was (it seeks
        only to a committed offset > 0), which after a recovery is past records that were
        fetched and then cleared with the stream queues: they were never delivered again, and
        when nothing came after them the partition stalled silently (seen in the crash test).
        The start is where `auto_offset_reset=earliest` would begin anyway; what was already
        processed there is redelivered and deduplicated.
        """
        uncommitted = [tp for tp in sources if consumer._read_offset.get(tp) is None]
        for tp in sorted(uncommitted):
            await consumer.seek(tp, 0)
        if uncommitted:
            self.log.info(
                "Sought %d partitions without a committed offset to their start.", len(uncommitted)
            )

    async def _seek_then_resume(self, generation_id: int) -> None:
        app: Any = self.app
        consumer = app.consumer
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        assignment = consumer.assignment()
        sources = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        consumer.pause_partitions(sources)
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            await self._seek_uncommitted_to_start(consumer, sources)
        self.completed.set()
        app.flow_control.resume()  # clears the stream queues
        consumer.resume_flow()
        consumer.resume_partitions(sources)
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")
