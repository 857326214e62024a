"""PostgreSQL outage (issue 3, acceptance 5): the database stops for more than 20 s in the middle
of a run and starts again. The worker is not poisoned by it: no dead letters come of it, it
never stops itself, `/health` says 503 with the reason while PostgreSQL is away, and the read
models are exact at the end.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from lendstream.embedded import Broker, Postgres, start_postgres
from lendstream.settings import Settings
from tests.harness import Pipeline
from tests.traffic import build
from tests.verify import assert_invalid_are_dead, assert_read_models_match

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]
OUTAGE_SECONDS = 22.0


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Postgres]:
    server = start_postgres(tmp_path / "pg", remove_on_stop=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def outage_pipeline(broker: Broker, own_postgres: Postgres, tmp_path: Path) -> Iterator[Pipeline]:
    settings = Settings(
        kafka=broker.url, pg_dsn=own_postgres.dsn, data_dir=tmp_path / "data", partitions=8, payout_saga=False,
        kafka_session_timeout=6.0, kafka_heartbeat_interval=1.0, _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip
    pipe = Pipeline(settings, tmp_path)
    try:
        yield pipe
    finally:
        pipe.stop_all()


def health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def test_postgres_outage_pauses_and_resumes_without_dead_letters(
    outage_pipeline: Pipeline, own_postgres: Postgres
) -> None:
    pipeline = outage_pipeline
    traffic = build(seed=51, loans=1500, min_events=30_000)
    half = len(traffic.stream) // 2
    await pipeline.create_topics()
    worker = pipeline.start_worker()
    assert worker.settings is not None
    await pipeline.produce(traffic.stream[:half])  # type: ignore[arg-type]
    await pipeline.wait_for_progress()

    own_postgres.pause()
    stopped = time.monotonic()
    await pipeline.produce(traffic.stream[half:])  # type: ignore[arg-type]
    answers = []
    while time.monotonic() - stopped < OUTAGE_SECONDS:
        answers.append(await asyncio.to_thread(health, worker.settings.web_port))
        await asyncio.sleep(1.0)
    own_postgres.resume()

    later = answers[len(answers) // 2 :]  # the worker notices at its next PostgreSQL call
    assert later and all(code == 503 for code, _ in later), answers
    assert any("PostgreSQL" in str(body["reasons"]) for _, body in later), later[-1]
    await pipeline.wait_caught_up(timeout=300)
    assert health(worker.settings.web_port)[0] == 200
    assert worker.alive(), "the worker stopped during the outage"
    await assert_read_models_match(pipeline, traffic)
    await assert_invalid_are_dead(pipeline, traffic)
    pipeline.assert_no_crash()
