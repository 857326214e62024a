"""Topic settings for production (issue 8): what lendstream wants, and how a cluster's topics
compare with it. Pure; `tests/integration/test_topics_command.py` runs it against the broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from lendstream.settings import Settings
from lendstream.topics import ALL, CUSTOMER_NOTIFICATIONS_TOPIC, DEAD_LETTERS_TOPIC
from lendstream.topology import (
    Action,
    ExistingTopic,
    check_brokers,
    compare,
    desired_topics,
    errors,
    format_plan,
    min_insync_replicas,
    plan_changes,
)
from tests.offline_app import offline_app


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def by_name(**values: object) -> dict[str, object]:
    return {t.name: t for t in desired_topics(settings(**values))}


def test_every_topic_has_the_configured_partitions_and_replication() -> None:
    topics = desired_topics(settings(partitions=12, replication_factor=3))
    assert {(t.partitions, t.replication_factor) for t in topics} == {(12, 3)}
    assert len({t.name for t in topics}) == len(topics)


def test_the_topics_read_models_are_rebuilt_from_are_kept_forever() -> None:
    topics = by_name()
    for name in [spec.name for spec in ALL] + [DEAD_LETTERS_TOPIC]:
        configs = topics[name].configs  # type: ignore[attr-defined]
        assert configs["cleanup.policy"] == "delete"
        assert configs["retention.ms"] == "-1"
        assert configs["retention.bytes"] == "-1"


def test_changelogs_are_compacted_and_notifications_expire() -> None:
    topics = by_name()
    changelog = topics["lendstream-loans-changelog"].configs  # type: ignore[attr-defined]
    assert changelog["cleanup.policy"] == "compact"
    assert "retention.ms" not in changelog
    notifications = topics[CUSTOMER_NOTIFICATIONS_TOPIC].configs  # type: ignore[attr-defined]
    assert int(notifications["retention.ms"]) == 7 * 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("replication", "explicit", "expected"),
    [(1, None, 1), (2, None, 1), (3, None, 2), (5, None, 2), (5, 3, 3), (3, 3, 3)],
)
def test_min_insync_replicas(replication: int, explicit: int | None, expected: int) -> None:
    chosen = settings(replication_factor=replication, min_insync_replicas=explicit)
    assert min_insync_replicas(chosen) == expected
    for topic in desired_topics(chosen):
        assert topic.configs["min.insync.replicas"] == str(expected)
        assert topic.configs["unclean.leader.election.enable"] == "false"


def test_the_topology_covers_every_topic_the_worker_app_declares(tmp_path: Path) -> None:
    """A new table or source topic of the app must appear in `desired_topics` (else
    `topics apply` would not create it and production workers could not start)."""
    app = offline_app(tmp_path)
    declared = {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    for agent in app.agents.values():
        declared |= set(agent.channel.topics)  # type: ignore[attr-defined]
    planned = {t.name for t in desired_topics(settings())}
    assert declared, "the app declares no topic: the check looks in the wrong place"
    assert declared <= planned, f"not in lendstream/topology.py: {sorted(declared - planned)}"


WANT = desired_topics(settings(partitions=8))[0]


def existing(**changes: object) -> ExistingTopic:
    values: dict[str, object] = {
        "name": WANT.name,
        "partitions": 8,
        "replication_factor": 1,
        "configs": {**WANT.configs, "segment.ms": "604800000"},  # others are ignored
    }
    values.update(changes)
    return ExistingTopic(**values)  # type: ignore[arg-type]


def test_a_missing_topic_is_created() -> None:
    assert compare(WANT, None).action is Action.CREATE


def test_a_matching_topic_is_left_alone() -> None:
    change = compare(WANT, existing())
    assert (change.action, change.notes) == (Action.OK, ())


def test_a_different_partition_count_is_an_error_naming_the_variable() -> None:
    change = compare(WANT, existing(partitions=4))
    assert change.action is Action.ERROR
    assert errors([change]) == [f"{WANT.name} {change.notes[0]}"]
    assert "has 4 partitions, LENDSTREAM_PARTITIONS is 8" in change.notes[0]


def test_config_and_replication_differences_are_reported_not_errors() -> None:
    configs = {**WANT.configs, "retention.ms": "604800000"}
    del configs["min.insync.replicas"]
    change = compare(WANT, existing(configs=configs, replication_factor=3))
    assert change.action is Action.DIFFERS
    assert change.notes == (
        "replication factor is 3, want 1 (reassign partitions with kafka-reassign-partitions.sh)",
        "min.insync.replicas is unset, want 1",
        "retention.ms is 604800000, want -1",
    )


def test_creating_with_more_replicas_than_brokers_is_an_error() -> None:
    wanted = desired_topics(settings(replication_factor=3))
    changes = check_brokers(plan_changes(wanted, {}), brokers=1)
    assert {c.action for c in changes} == {Action.ERROR}
    assert (
        "needs 3 replicas (LENDSTREAM_REPLICATION_FACTOR) but the cluster has 1 broker"
        in (errors(changes)[0])
    )
    assert check_brokers(plan_changes(wanted, {}), brokers=3) == plan_changes(wanted, {})


def test_the_plan_reads_as_a_table_with_a_summary() -> None:
    wanted = desired_topics(settings())
    changes = plan_changes(wanted, {WANT.name: existing()})
    text = format_plan(changes)
    lines = text.splitlines()
    assert lines[0].split() == ["topic", "kind", "partitions", "replicas", "action"]
    assert lines[1].split() == [WANT.name, "event", "log", "8", "1", "ok"]
    assert (
        lines[-1] == f"{len(wanted) - 1} to create, 1 up to date, 0 differ (not changed), 0 errors"
    )
    assert "retention.ms=-1" in text
    applied = format_plan(changes, applied=True)
    assert applied.splitlines()[-1].startswith(f"{len(wanted) - 1} created, 1 up to date")
