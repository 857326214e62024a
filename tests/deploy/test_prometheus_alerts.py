"""A real Prometheus scrapes two workers and evaluates the alert rules of deploy/prometheus.

The rules are the real file with two changes derived from it (not rewritten by hand): the lag
alert's threshold becomes 2 seconds and its `for:` 2 seconds, and WorkerDown's `for:` 1 second,
so that they fire within the test. promtool tests the real file unchanged
(tests/deploy/test_prometheus_rules.py).

One worker is stopped (SIGSTOP) while a burst arrives. Its partitions wait (the session timeout
is long, so the group does not move them), and the other worker — which exports the lag of the
whole group — shows their lag growing: LendstreamConsumerLagHigh fires, and so does
LendstreamWorkerDown for the stopped one. After SIGCONT the worker catches up and both alerts
resolve.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lendstream.embedded import free_port
from tests.deploy.metric_names import RULES
from tests.deploy.prometheus_server import PrometheusServer, start_prometheus
from tests.harness import Pipeline, WorkerProcess
from tests.scrape import http_get, scrape
from tests.traffic import build

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

LAG_ALERT = "LendstreamConsumerLagHigh"
DOWN_ALERT = "LendstreamWorkerDown"
SESSION_TIMEOUT = 20.0  # longer than the test keeps a worker stopped (a few seconds)


def derived_rules(dest: Path) -> Path:
    """The real rules with the lag alert at 2 s for 2 s, and WorkerDown for 1 s."""
    rules = yaml.safe_load(RULES.read_text())
    changed = set()
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        if rule.get("alert") == LAG_ALERT:
            rule["expr"], count = re.subn(r">\s*\d+(\.\d+)?\s*$", "> 2", rule["expr"].strip())
            assert count == 1, f"no threshold to shorten in {rule['expr']!r}"
            rule["for"] = "2s"
            changed.add(LAG_ALERT)
        elif rule.get("alert") == DOWN_ALERT:
            rule["for"] = "1s"
            changed.add(DOWN_ALERT)
    assert changed == {LAG_ALERT, DOWN_ALERT}
    dest.write_text(yaml.safe_dump(rules))
    return dest


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0,
                     detail: Callable[[], object] = lambda: "") -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s: {detail()}")
        await asyncio.sleep(0.25)


def processed_any(port: int) -> bool:
    return sum(scrape(port).values("lendstream_events_total").values()) > 0


async def start_two_workers(pipeline: Pipeline) -> dict[str, tuple[WorkerProcess, int]]:
    """Two workers in one group, each with partitions of its own (checked by what it did)."""
    await pipeline.create_topics()
    workers = {}
    for name in ("a", "b"):
        port = free_port()
        worker = pipeline.start_worker(name, web_port=port, probe_interval=0.5,
                                       kafka_session_timeout=SESSION_TIMEOUT)  # fmt: skip
        workers[name] = (worker, port)
    for seed in range(20, 30):
        await wait_until(lambda: all(http_get(f"http://127.0.0.1:{p}/health")[0] == 200
                                     for _, p in workers.values()), "ready")  # fmt: skip
        await pipeline.produce(build(seed=seed, loans=100, min_events=0, invalid=0).stream)
        await pipeline.wait_caught_up(timeout=180)
        if all(processed_any(port) for _, port in workers.values()):
            return workers
    raise AssertionError("the group never gave both workers partitions")


def firing(prometheus: PrometheusServer, alert: str, **labels: str) -> bool:
    return any(state == "firing" and all(got.get(k) == v for k, v in labels.items())
               for got, state in prometheus.alert_states(alert))  # fmt: skip


async def test_lag_alert_fires_while_a_worker_is_stopped_and_resolves(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    workers = await start_two_workers(pipeline)
    stopped, stopped_port = workers["b"]
    targets = [f"127.0.0.1:{port}" for _, port in workers.values()]
    prometheus = start_prometheus(tmp_path / "prometheus", targets,
                                  derived_rules(tmp_path / "rules.yml"))  # fmt: skip
    try:
        await wait_until(lambda: len(prometheus.query('up{job="lendstream"} == 1')) == 2,
                         "both workers scraped")  # fmt: skip
        await wait_until(lambda: bool(prometheus.query("lendstream:consumer_lag_seconds:max_by_topic")),
                         "lag recorded")  # fmt: skip
        assert prometheus.alert_states(LAG_ALERT) == []

        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            await pipeline.produce(build(seed=40, loans=300, min_events=3000).stream)
            await wait_until(lambda: firing(prometheus, LAG_ALERT), f"{LAG_ALERT} firing")
            await wait_until(lambda: firing(prometheus, DOWN_ALERT,
                                            instance=f"127.0.0.1:{stopped_port}"),
                             f"{DOWN_ALERT} firing")  # fmt: skip
            assert not await pipeline.caught_up()
        finally:
            os.kill(stopped.pid, signal.SIGCONT)

        await pipeline.wait_caught_up(timeout=180)
        await wait_until(
            lambda: prometheus.alert_states(LAG_ALERT) == [],
            f"{LAG_ALERT} resolved",
            detail=lambda: prometheus.query("lendstream_consumer_lag_seconds > 0"),
        )
        await wait_until(lambda: prometheus.alert_states(DOWN_ALERT) == [],
                         f"{DOWN_ALERT} resolved")  # fmt: skip
        assert all(worker.alive() for worker, _ in workers.values())
    finally:
        prometheus.stop()
