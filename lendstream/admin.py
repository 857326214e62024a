"""Topic administration against a cluster: the one path that reads and creates lendstream's topics.

`lendstream topics plan|apply`, `lendstream worker`, `lendstream dev` and the tests all go
through `plan_topics` / `apply_topics` here, with the topic settings of `lendstream.topology`:

- `plan_topics` reads what exists (list, describe, describe_configs) and compares; it creates
  nothing. It never asks for the metadata of a topic that does not exist (brokers that
  auto-create topics, like Tansu, would create it with their own partition count).
- `apply_topics` creates what is missing, with its configs, and nothing else: it never deletes,
  never alters an existing topic, and running it twice changes nothing the second time. A
  partition-count mismatch (or too few brokers for the replication factor) stops it before it
  creates anything, with `TopologyError`.
- `ensure_topics` is what a worker does at start: `apply_topics` when `LENDSTREAM_CREATE_TOPICS`
  is true (the default, for `dev` and single-machine use), otherwise only a check that every
  topic exists with the right partition count — production runs `lendstream topics apply` once
  (a deploy job) and gives workers no right to create topics (docs/operations.md).

Topics must exist with `LENDSTREAM_PARTITIONS` partitions before anything produces to them: a
broker that auto-creates topics would otherwise pick its own partition count and break the
co-partitioning of the loan-keyed topics.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from lendstream.security import kafka_client_options
from lendstream.settings import ENV_PREFIX, Settings
from lendstream.topology import (
    Action,
    Change,
    ExistingTopic,
    PlannedTopic,
    TopologyError,
    check_brokers,
    desired_topics,
    errors,
    plan_changes,
)

log = logging.getLogger(__name__)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for `LENDSTREAM_KAFKA` with its TLS/SASL settings."""
    settings.require("kafka")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def existing_topics(
    admin: AIOKafkaAdminClient, names: Iterable[str]
) -> dict[str, ExistingTopic]:
    """Partitions, replication and configs of those of `names` that exist."""
    present = sorted(set(names) & set(await admin.list_topics()))
    if not present:
        return {}
    described = {t["topic"]: t for t in await admin.describe_topics(present)}
    configs = await _topic_configs(admin, present)
    result = {}
    for name in present:
        partitions = described[name]["partitions"]
        replicas = len(partitions[0]["replicas"]) if partitions else 0
        result[name] = ExistingTopic(name, len(partitions), replicas, configs.get(name, {}))
    return result


async def _topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        # resources: (error_code, error_message, resource_type, resource_name, config_entries);
        # each entry starts with (config_name, config_value, …) in every protocol version.
        for error_code, error_message, _type, name, entries in response.resources:
            if error_code:
                raise TopologyError(
                    f"cannot read the configs of topic {name}: {for_code(error_code).__name__} "
                    f"{error_message or ''}".rstrip()
                )
            configs[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return configs


async def _plan(admin: AIOKafkaAdminClient, settings: Settings) -> list[Change]:
    wanted = desired_topics(settings)
    existing = await existing_topics(admin, [t.name for t in wanted])
    brokers = len((await admin.describe_cluster())["brokers"])
    return check_brokers(plan_changes(wanted, existing), brokers)


async def plan_topics(settings: Settings) -> list[Change]:
    """What `apply_topics` would do to each topic; changes nothing."""
    async with admin_client(settings) as admin:
        return await _plan(admin, settings)


async def apply_topics(settings: Settings) -> list[Change]:
    """Create the missing topics; returns the plan that was applied.

    Raises `TopologyError` (creating nothing) when a topic cannot match the plan.
    """
    async with admin_client(settings) as admin:
        changes = await _plan(admin, settings)
        problems = errors(changes)
        if problems:
            raise TopologyError(f"{problems[0]}" + _and_more(problems))
        missing = [c.want for c in changes if c.action is Action.CREATE]
        if missing:
            await _create(admin, missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
        for change in changes:
            if change.action is Action.DIFFERS:
                log.warning("topic %s differs: %s", change.want.name, "; ".join(change.notes))
        return changes


async def _create(admin: AIOKafkaAdminClient, topics: list[PlannedTopic]) -> None:
    response = await admin.create_topics(
        [
            NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=dict(t.configs))
            for t in topics
        ]
    )
    failed = []
    for name, error_code, error_message in response.topic_errors:
        error = for_code(error_code) if error_code else None
        if error is not None and error is not TopicAlreadyExistsError:  # a racing creator won
            failed.append(f"{name}: {error.__name__} {error_message or ''}".rstrip())
    if failed:
        raise TopologyError("cannot create topic " + failed[0] + _and_more(failed))


async def ensure_topics(settings: Settings) -> list[str]:
    """At worker start: create the missing topics, or (with `LENDSTREAM_CREATE_TOPICS=false`)
    check that they all exist. Returns the names created now.

    Raises `TopologyError` when a topic has the wrong partition count or is missing and may not
    be created.
    """
    if settings.create_topics:
        changes = await apply_topics(settings)
        return [c.want.name for c in changes if c.action is Action.CREATE]
    changes = await plan_topics(settings)
    missing = [c.want.name for c in changes if c.action is Action.CREATE]
    problems = errors(changes) or [
        f"topic {name} does not exist and {ENV_PREFIX}CREATE_TOPICS is false: "
        "run `lendstream topics apply`"
        for name in missing
    ]
    if problems:
        raise TopologyError(problems[0] + _and_more(problems))
    return []


def _and_more(problems: list[str]) -> str:
    return f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
