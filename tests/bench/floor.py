"""The Faust floor: a worker whose agent does nothing but count, on the same topics, app class
and settings as the loan processor (`take_events` batches, acks, offset commits) — what Faust
itself costs per message before lendstream does any work.

Run by the benchmark as `python -m tests.bench.floor EVENTS OUT.json` with the worker's
`LENDSTREAM_*` environment; it writes the rate to OUT.json and exits once it has seen EVENTS
messages. `--per-message` iterates the stream message by message instead of in batches.

`--batched-drain` measures what is left when Faust's per-message delivery is bypassed: the
consumer's drain loop takes each fetched batch (per partition lists of records) as a whole
instead of handing every message to the conductor and the stream one at a time — the same
Faust consumer, group membership, assignment and fetcher, no agent iteration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import faust
from faust.types import StreamT

from lendstream.app import LendstreamApp, _Consumer, _Transport
from lendstream.settings import load_settings
from lendstream.topics import LOAN_KEYED


class Counter:
    """Counts messages; writes the rate and ends the process after `events`."""

    def __init__(self, events: int, out: Path) -> None:
        self.events, self.out = events, out
        self.count, self.first_at, self.first_batch = 0, 0.0, 0

    def __call__(self, n: int) -> None:
        if not self.count:
            self.first_at, self.first_batch = time.monotonic(), n
        self.count += n
        if self.count >= self.events:
            seconds = time.monotonic() - self.first_at
            rate = (self.count - self.first_batch) / max(seconds, 1e-9)
            self.out.write_text(
                json.dumps({"events": self.count, "seconds": seconds, "rate": rate})
            )
            logging.shutdown()
            os._exit(0)


def batched_app(count: Counter) -> type[LendstreamApp]:
    """The app class, with a consumer that counts whole fetched batches."""

    class BatchedConsumer(_Consumer):
        async def _drain_messages(self, fetcher: Any) -> None:
            while not (self.should_stop or fetcher.should_stop):
                records, _ = await self._wait_next_records(1.0)
                for messages in (records or {}).values():
                    count(len(messages))

    class BatchedTransport(_Transport):
        Consumer = BatchedConsumer

    class BatchedApp(LendstreamApp):
        def _new_transport(self) -> Any:
            return BatchedTransport(self.conf.broker_consumer, self)

    return BatchedApp


def build(count: Counter, per_message: bool, batched_drain: bool) -> faust.App:
    settings = load_settings()
    app_class = batched_app(count) if batched_drain else LendstreamApp
    app = app_class(
        settings.app_id,
        broker=settings.kafka,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4 * settings.batch_max, 4096),
        worker_redirect_stdouts=False,
        autodiscover=False,
    )
    topic = app.topic(*[s.name for s in LOAN_KEYED], key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="floor")
    async def floor(stream: StreamT) -> None:
        if per_message:
            async for _event in stream.events():
                count(1)
        else:
            async for batch in stream.take_events(settings.batch_max, within=settings.batch_within):
                count(len(batch))

    return app


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.floor", description=__doc__)
    p.add_argument("events", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--per-message", action="store_true")
    p.add_argument("--batched-drain", action="store_true")
    args = p.parse_args()
    app = build(Counter(args.events, args.out), args.per_message, args.batched_drain)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
