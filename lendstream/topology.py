"""The Kafka topics lendstream needs, with their production settings — declared in one place.

`desired_topics(settings)` lists every topic: the event topics of `lendstream.topics` and the
changelog topics Faust keeps for the tables of `lendstream.tables`. All have
`LENDSTREAM_PARTITIONS` partitions (the loan-keyed topics and the tables must be
co-partitioned) and `LENDSTREAM_REPLICATION_FACTOR` replicas, and:

| kind | topics | cleanup / retention |
|---|---|---|
| event log | the topics of `lendstream.topics.ALL`, `dead-letters`, `treasury-commands` | delete, `retention.ms=-1`, `retention.bytes=-1`: kept forever, because `projections rebuild` and a new table replay them from offset 0 |
| changelog | `lendstream-<table>-changelog` | `cleanup.policy=compact`: the latest value per key is enough to restore a table |
| outbox | `customer-notifications` | delete after 7 days: read by the notification service, never replayed by lendstream |

Every topic gets `min.insync.replicas` (`LENDSTREAM_MIN_INSYNC_REPLICAS`; by default 2 when the
replication factor is 3 or more, else 1) and `unclean.leader.election.enable=false`: with the
producers' `acks=all`, an acknowledged write is on at least that many replicas and a replica
that missed writes never becomes leader.

`plan_changes` compares this with what a cluster has (pure; `lendstream.admin` does the I/O):
missing topics are created, a different partition count is an error (adding partitions moves
keys to other partitions, which breaks co-partitioning and the positions stored in
PostgreSQL; Tansu cannot add partitions at all), and other differences are reported, never
changed silently.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lendstream.settings import ENV_PREFIX, Settings
from lendstream.topics import ALL, CUSTOMER_NOTIFICATIONS_TOPIC, DEAD_LETTERS_TOPIC
from lendstream.topics.treasury import COMMANDS_TOPIC as TREASURY_COMMANDS_TOPIC

FOREVER = "-1"
NOTIFICATION_RETENTION_MS = str(7 * 24 * 3600 * 1000)


class TopologyError(Exception):
    """The cluster's topics cannot be made to match the plan; one line saying what to do."""


class Action(StrEnum):
    CREATE = "create"
    OK = "ok"
    DIFFERS = "differs"
    ERROR = "error"


@dataclass(frozen=True)
class PlannedTopic:
    """One topic as lendstream wants it."""

    name: str
    kind: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(frozen=True)
class ExistingTopic:
    """One topic as the cluster has it (`configs`: what describe_configs reported)."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """What applying the plan does to one topic, and why."""

    want: PlannedTopic
    action: Action
    notes: tuple[str, ...] = ()


def min_insync_replicas(settings: Settings) -> int:
    if settings.min_insync_replicas is not None:
        return settings.min_insync_replicas
    return 2 if settings.replication_factor >= 3 else 1


def changelog_topic(table: str) -> str:
    """Faust's name for a table's changelog: `<app id>-<table>-changelog`."""
    from lendstream.app import APP_ID

    return f"{APP_ID}-{table}-changelog"


def table_names() -> list[str]:
    """`NAME` of every table module in `lendstream.tables` (one table per file)."""
    import lendstream.tables as package

    names = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if isinstance(name, str):
            names.append(name)
    return names


def desired_topics(settings: Settings, tables: Iterable[str] | None = None) -> list[PlannedTopic]:
    """Every topic lendstream needs, with the settings it should have in production."""
    common = {
        "min.insync.replicas": str(min_insync_replicas(settings)),
        "unclean.leader.election.enable": "false",
    }
    event_log = {
        **common,
        "cleanup.policy": "delete",
        "retention.ms": FOREVER,
        "retention.bytes": FOREVER,
    }
    outbox = {**common, "cleanup.policy": "delete", "retention.ms": NOTIFICATION_RETENTION_MS}
    changelog = {**common, "cleanup.policy": "compact"}
    kinds: list[tuple[str, str, dict[str, str]]] = [
        *[(spec.name, "event log", event_log) for spec in ALL],
        (DEAD_LETTERS_TOPIC, "event log", event_log),
        (TREASURY_COMMANDS_TOPIC, "event log", event_log),
        (CUSTOMER_NOTIFICATIONS_TOPIC, "outbox", outbox),
        *[
            (changelog_topic(t), "changelog", changelog)
            for t in (table_names() if tables is None else tables)
        ],
    ]
    return [
        PlannedTopic(name, kind, settings.partitions, settings.replication_factor, configs)
        for name, kind, configs in kinds
    ]


def compare(want: PlannedTopic, have: ExistingTopic | None) -> Change:
    """The change one topic needs: create it, nothing, a reported difference, or an error."""
    if have is None:
        return Change(want, Action.CREATE)
    if have.partitions != want.partitions:
        return Change(
            want,
            Action.ERROR,
            (
                f"has {have.partitions} partitions, {ENV_PREFIX}PARTITIONS is {want.partitions}: "
                "partitions cannot be changed in place (set the variable to match, or migrate "
                "to new topics, see docs/operations.md)",
            ),
        )
    notes = []
    if have.replication_factor != want.replication_factor:
        notes.append(
            f"replication factor is {have.replication_factor}, want {want.replication_factor} "
            "(reassign partitions with kafka-reassign-partitions.sh)"
        )
    for key, value in want.configs.items():
        current = have.configs.get(key)
        if current != value:
            notes.append(f"{key} is {current if current is not None else 'unset'}, want {value}")
    return Change(want, Action.DIFFERS if notes else Action.OK, tuple(notes))


def plan_changes(
    wanted: Iterable[PlannedTopic], existing: Mapping[str, ExistingTopic]
) -> list[Change]:
    return [compare(want, existing.get(want.name)) for want in wanted]


def check_brokers(changes: list[Change], brokers: int) -> list[Change]:
    """Turn creations the cluster cannot satisfy (too few brokers) into errors."""
    checked = []
    for change in changes:
        rf = change.want.replication_factor
        if change.action is Action.CREATE and rf > brokers:
            change = Change(
                change.want,
                Action.ERROR,
                (
                    f"needs {rf} replicas ({ENV_PREFIX}REPLICATION_FACTOR) but the cluster has "
                    f"{brokers} broker{'s' if brokers != 1 else ''}",
                ),
            )
        checked.append(change)
    return checked


def errors(changes: Iterable[Change]) -> list[str]:
    return [f"{c.want.name} {c.notes[0]}" for c in changes if c.action is Action.ERROR]


def format_plan(changes: list[Change], applied: bool = False) -> str:
    """A table of every topic with its action; differences and errors indented below it.

    `applied`: the plan was carried out (creations are reported as done).
    """
    create = "created" if applied else Action.CREATE.value
    width = max((len(c.want.name) for c in changes), default=5)
    lines = [f"{'topic':<{width}}  {'kind':<9}  partitions  replicas  action"]
    for c in changes:
        w = c.want
        lines.append(
            f"{w.name:<{width}}  {w.kind:<9}  {w.partitions:>10}  {w.replication_factor:>8}  "
            f"{create if c.action is Action.CREATE else c.action.value}"
        )
        if c.action is Action.CREATE:
            lines.append("    " + " ".join(f"{k}={v}" for k, v in sorted(w.configs.items())))
        lines.extend(f"    {note}" for note in c.notes)
    counts = {a: sum(1 for c in changes if c.action is a) for a in Action}
    lines.append(
        f"{counts[Action.CREATE]} {'created' if applied else 'to create'}, "
        f"{counts[Action.OK]} up to date, "
        f"{counts[Action.DIFFERS]} differ (not changed), {counts[Action.ERROR]} errors"
    )
    return "\n".join(lines)
