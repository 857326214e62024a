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
import time
from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP, CollectionT, Message
from faust.utils.tracing import finish_span
from mode import Service

from lendstream.delivery import ChangelogBatches

#: Changelog records that may wait in `ChangelogBatches` (about 1-2 KB each for the loans).
CHANGELOG_QUEUE_RECORDS = 50_000


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


class _ChangelogRecord:
    """What a table's `apply_changelog_batch` reads of a changelog event: its message (the raw
    key and value, partition and offset), not the decoded event Faust would build. `key` and
    `value` are the raw bytes, which is what Faust decodes them to for lendstream's tables
    (`key_type=bytes`, `value_type=bytes`: the raw serializer)."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    @property
    def key(self) -> bytes | None:
        return self.message.key

    @property
    def value(self) -> bytes | None:
        return self.message.value


class BatchedRecovery(FixedRecovery):
    """Recovery that applies changelog records a whole fetched batch at a time.

    Faust's `_slurp_changelogs` takes each changelog record on its own from the tables' changelog
    queue — a decoded event, an `asyncio.wait_for` (a task) per record, two debug f-strings, and
    a full scan of every partition's remaining count (`need_recovery`) — 170 to 220 µs per record
    here (4,500 to 5,900 records/s restored, docs/performance.md). With batched delivery the
    consumer's drain loop puts each fetched batch of a changelog partition on `changelog_batches`
    whole (`delivery.BatchDeliveryConsumer`); this loop does per batch what Faust's does per
    record, with the same bookkeeping: the offsets read per active and standby partition (records
    at or below them are skipped), the tables' buffers (applied with `apply_changelog_batch` when
    `recovery_buffer_size` / `standby_buffer_size` is reached, and all of them at the end), the
    timings behind the remaining-time estimate, the end-of-recovery signal and the standbys'
    readiness.

    Differences from Faust's loop, on purpose: a record of a partition that is neither active nor
    standby (assigned away meanwhile) is dropped — Faust's loop applies it to the table of the
    previous record (its "XXX bug"); and there is no aborted-transaction detection, because
    lendstream never produces in transactions (Tansu has none; `processing_guarantee` is
    at-least-once). A table's `on_changelog_event` callback is not called (lendstream's tables
    have none). Failure behaviour is Faust's: an error is logged and the loop goes on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changelog_batches = ChangelogBatches(self.app, CHANGELOG_QUEUE_RECORDS)

    @Service.task
    async def _slurp_changelogs(self) -> None:
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                batch = await self.changelog_batches.get(timeout=5.0)
                if batch is None:
                    if self.should_stop:
                        return
                elif batch:
                    self._apply_batch(batch)
                self._maybe_signal_recovery_end()
                self._maybe_standbys_ready()
            except Exception as exc:  # as Faust's loop: logged, recovery goes on
                self.log.warning("Error in recovery %r", exc)

    def _apply_batch(self, batch: list[Message]) -> None:
        """Buffer the records of one partition's fetch that are newer than those read, and
        apply the table's buffer once it is full."""
        tp: TP = batch[0].tp
        now = time.monotonic()
        if tp in self.active_tps:
            offsets, active = self.active_offsets, True
            self._active_events_received_at[tp] = now
        elif tp in self.standby_tps:
            offsets, active = self.standby_offsets, False
            self._standby_events_received_at[tp] = now
        else:
            self.log.warning("Recovery: dropped %d records of unassigned %r", len(batch), tp)
            return
        table: CollectionT = self.tp_to_table[tp]
        seen = offsets.get(tp)
        fresh = [m for m in batch if seen is None or m.offset > seen]
        if not fresh:
            return
        offsets[tp] = fresh[-1].offset
        buffer: list[Any] = self.buffers[table]  # read only for `.message`
        buffer.extend(_ChangelogRecord(message) for message in fresh)
        size = self.buffer_sizes.setdefault(
            tp, table.recovery_buffer_size if active else table.standby_buffer_size
        )
        if len(buffer) >= size:
            table.apply_changelog_batch(buffer)
            buffer.clear()
            self._last_flush_at = now
        if active:
            self._note_processing_time(len(fresh))

    def _note_processing_time(self, records: int) -> None:
        """Per-record time since the last active batch, for Faust's remaining-time estimate."""
        now = time.monotonic()
        last = getattr(self, "_last_active_event_processed_at", None)  # set at recovery start
        if last is not None:
            self._processing_times.append((now - last) / records)
            if len(self._processing_times) > self.num_samples_required_for_estimate:
                self._processing_times.popleft()
        self._last_active_event_processed_at = now

    def _maybe_signal_recovery_end(self) -> None:
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            self.signal_recovery_end.set()

    def _maybe_standbys_ready(self) -> None:
        standbys_ready = self._standbys_span is None and self.tables.standbys_ready
        if not standbys_ready and not self.standby_remaining_total():
            if self._standbys_span:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()
