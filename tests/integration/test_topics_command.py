"""`lendstream topics plan|apply` against the real embedded broker (issue 8, done-when 3):
plan prints what it would create and creates nothing, apply creates it, a second apply changes
nothing; a partition mismatch stops it with one line; workers that may not create topics
refuse to start without them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lendstream.admin import admin_client, ensure_topics, existing_topics
from lendstream.embedded import Broker
from lendstream.settings import Settings
from lendstream.topology import TopologyError, desired_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def lendstream(
    broker: Broker, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    environment.update(LENDSTREAM_KAFKA=broker.url, **env)
    return subprocess.run(
        [sys.executable, "-m", "lendstream", *args],
        env=environment, cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def cluster_topics(settings: Settings) -> dict[str, object]:
    async def read() -> dict[str, object]:
        async with admin_client(settings) as admin:
            return dict(await existing_topics(admin, [t.name for t in desired_topics(settings)]))

    return asyncio.run(read())


def test_plan_then_apply_then_apply_again(broker: Broker, tmp_path: Path) -> None:
    settings = Settings(kafka=broker.url, partitions=6, _env_file=None)  # type: ignore[call-arg]
    wanted = desired_topics(settings)

    plan = lendstream(broker, tmp_path, "topics", "plan", LENDSTREAM_PARTITIONS="6")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-1].startswith(f"{len(wanted)} to create, 0 up to date")
    for topic in wanted:
        assert f"{topic.name} " in plan.stdout
    assert cluster_topics(settings) == {}, "plan must not create anything"

    first = lendstream(broker, tmp_path, "topics", "apply", LENDSTREAM_PARTITIONS="6")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith(f"{len(wanted)} created, 0 up to date")
    created = cluster_topics(settings)
    assert sorted(created) == sorted(t.name for t in wanted)
    for topic in wanted:
        have = created[topic.name]
        assert have.partitions == 6  # type: ignore[attr-defined]
        assert have.replication_factor == 1  # type: ignore[attr-defined]
        for key, value in topic.configs.items():
            assert have.configs.get(key) == value, (topic.name, key)  # type: ignore[attr-defined]

    second = lendstream(broker, tmp_path, "topics", "apply", LENDSTREAM_PARTITIONS="6")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == (
        f"0 created, {len(wanted)} up to date, 0 differ (not changed), 0 errors"
    )
    assert cluster_topics(settings) == created


def test_a_partition_mismatch_stops_apply_with_one_line(broker: Broker, tmp_path: Path) -> None:
    assert lendstream(broker, tmp_path, "topics", "apply").returncode == 0  # 8 partitions
    plan = lendstream(broker, tmp_path, "topics", "plan", LENDSTREAM_PARTITIONS="16")
    assert plan.returncode == 1
    assert "has 8 partitions, LENDSTREAM_PARTITIONS is 16" in plan.stdout
    apply = lendstream(broker, tmp_path, "topics", "apply", LENDSTREAM_PARTITIONS="16")
    assert apply.returncode == 2
    assert apply.stderr.startswith("lendstream: loan-events has 8 partitions"), apply.stderr
    assert apply.stderr.count("\n") == 1 and "Traceback" not in apply.stderr


def test_a_worker_that_may_not_create_topics_needs_them(broker: Broker, tmp_path: Path) -> None:
    settings = Settings(kafka=broker.url, create_topics=False, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(
        TopologyError, match=r"does not exist and LENDSTREAM_CREATE_TOPICS is false"
    ):
        asyncio.run(ensure_topics(settings))
    assert cluster_topics(settings) == {}

    worker = lendstream(
        broker, tmp_path, "worker", LENDSTREAM_CREATE_TOPICS="false",
        LENDSTREAM_PG_DSN="postgresql://u@127.0.0.1:9/x",
    )  # fmt: skip
    assert worker.returncode == 2
    assert "run `lendstream topics apply`" in worker.stderr
    assert worker.stderr.count("\n") == 1, worker.stderr

    created = asyncio.run(ensure_topics(settings.model_copy(update={"create_topics": True})))
    assert sorted(created) == sorted(t.name for t in desired_topics(settings))
    assert asyncio.run(ensure_topics(settings)) == []
