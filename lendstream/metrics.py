"""All Prometheus metrics of lendstream (contract §7), on one registry that tests can replace."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY

PREFIX = "lendstream_"
OUTCOMES = ("applied", "duplicate", "parked", "retried", "dead")
# 0.1 s steps up to 1 s: enough to tell whether a 500 ms p99 is met (issue 6)
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)


class Metrics:
    """The metrics object agents and writers record through (one per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.consumer_lag_messages = Gauge(
            PREFIX + "consumer_lag_messages",
            "Messages not yet processed by the consumer group",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            PREFIX + "consumer_lag_seconds",
            "Age of the oldest unprocessed message (0 when caught up)",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.events = Counter(
            PREFIX + "events",
            "Events consumed, by outcome (applied, duplicate, parked, retried, dead)",
            ["topic", "type", "outcome"],
            registry=r,
        )
        self.end_to_end = Histogram(
            PREFIX + "end_to_end_seconds",
            "Kafka append time to PostgreSQL commit",
            ["projection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Gauge(
            PREFIX + "dead_letters",
            "Dead letters by topic and status",
            ["topic", "status"],
            registry=r,
        )
        self.saga_instances = Gauge(
            PREFIX + "saga_instances", "Saga instances by status", ["saga", "status"], registry=r
        )
        self.table_recovery_remaining = Gauge(
            PREFIX + "table_recovery_remaining",
            "Changelog records left to restore",
            ["table"],
            registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "projection_batch_size",
            "Messages per projection transaction",
            ["projection"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            PREFIX + "projection_commit_seconds",
            "Duration of one projection transaction",
            ["projection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pg_unavailable = Counter(
            PREFIX + "postgres_unavailable",
            "Projection commits that failed because PostgreSQL was unreachable",
            ["projection"],
            registry=r,
        )
        self.ingest_requests = Counter(
            PREFIX + "ingest_requests",
            "HTTP ingest requests by topic (or 'unknown') and answer status",
            ["topic", "status"],
            registry=r,
        )
        self.ingest_events = Counter(
            PREFIX + "ingest_events",
            "Events in HTTP ingest requests, by outcome (produced, duplicate, invalid)",
            ["topic", "outcome"],
            registry=r,
        )
        # Observability (lendstream.observability): measured by each worker every
        # LENDSTREAM_PROBE_INTERVAL, for the whole consumer group, not per message.
        self.consumer_position = Gauge(
            PREFIX + "consumer_position",
            "Next offset the group processes: the later of its Kafka commit and the "
            "projections' PostgreSQL position",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.partition_end_offset = Gauge(
            PREFIX + "partition_end_offset",
            "High watermark (from a fetch) of a partition the worker consumes",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_probe_timestamp = Gauge(
            PREFIX + "lag_probe_timestamp_seconds",
            "Start time of the probe the consumer_* gauges come from",
            registry=r,
        )
        self.probe_failures = Counter(
            PREFIX + "probe_failures",
            "Failed probes of the metrics collector, by target (kafka, postgres)",
            ["target"],
            registry=r,
        )
        self.dead_letters_retrying = Gauge(
            PREFIX + "dead_letters_retrying",
            "Parked dead letters waiting for a retry after a transient failure (part of "
            "dead_letters{status='parked'})",
            ["topic"],
            registry=r,
        )
        self.saga_overdue = Gauge(
            PREFIX + "saga_instances_overdue",
            "Running saga instances past their deadline",
            ["saga"],
            registry=r,
        )
        self.saga_retrying = Gauge(
            PREFIX + "saga_instances_retrying",
            "Running saga instances whose last attempt failed (being retried)",
            ["saga"],
            registry=r,
        )
        self.projection_last_advance = Gauge(
            PREFIX + "projection_last_advance_timestamp_seconds",
            "When the projection's position in PostgreSQL last moved forward",
            ["projection"],
            registry=r,
        )
        self.pg_pool_connections = Gauge(
            PREFIX + "pg_pool_connections",
            "PostgreSQL pool connections by state (in_use, idle)",
            ["state"],
            registry=r,
        )
        self.pg_pool_max = Gauge(
            PREFIX + "pg_pool_max_connections", "PostgreSQL pool size limit", registry=r
        )
        self.worker_ready = Gauge(
            PREFIX + "worker_ready", "1 when /health answers 200 (ready), else 0", registry=r
        )
