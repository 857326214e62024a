"""Reading a worker's `/metrics` and `/health` in tests."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers (not listening yet, or stopped)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


@dataclass
class Scrape:
    families: list[Metric]

    def values(self, name: str, **match: str) -> dict[Labels, float]:
        """Samples called `name` whose labels include `match`, by their full label set."""
        return {
            frozenset(s.labels.items()): s.value
            for family in self.families
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
        }

    def value(self, name: str, **labels: str) -> float:
        found = self.values(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}"
        return next(iter(found.values()))

    def by_partition(self, name: str, topic: str) -> dict[int, float]:
        return {int(dict(k)["partition"]): v for k, v in self.values(name, topic=topic).items()}


def scrape(port: int) -> Scrape:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body[:500]
    return Scrape(list(text_string_to_metric_families(body.decode())))


async def fresh_scrape(port: int, probe_started_after: float, timeout: float = 60.0) -> Scrape:
    """A scrape whose lag gauges come from a probe that started after `probe_started_after`
    (a time.time() value): everything it read from Kafka and PostgreSQL is newer than that."""
    deadline = time.monotonic() + timeout
    while True:
        current = await asyncio.to_thread(scrape, port)
        started = current.values("lendstream_lag_probe_timestamp_seconds")
        if started and next(iter(started.values())) >= probe_started_after:
            return current
        assert time.monotonic() < deadline, f"no lag probe after {probe_started_after}"
        await asyncio.sleep(0.1)
