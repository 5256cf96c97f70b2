"""What an existing Kafka topic's settings do to the records written to it: an operator's cluster may
have made the audit topic so that it loses them (compacted) or refuses every write keytrail makes
(min.insync.replicas above its replicas). Read with DescribeConfigs and the topic's metadata; a broker
that does not answer DescribeConfigs (too old, no DESCRIBE_CONFIGS right) is taken as fit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

__all__ = ["TopicUnfit", "batch_bytes", "check_topic", "shape_shortfall", "unfit_reasons"]

log = logging.getLogger(__name__)


class TopicUnfit(RuntimeError):
    """The topic exists set up to lose records or refuse every write: it stays so until an operator
    changes it, unlike a broker out of reach."""


async def check_topic(admin: AIOKafkaAdminClient, topic: str, partitions: int, replication_factor: int, *,
                      found: bool) -> dict[str, str]:
    """`topic`'s settings as the broker tells them. Raise TopicUnfit naming what is wrong with them,
    if anything is; warn when one `found` (not made now) has fewer partitions or replicas than
    keytrail would have made it with."""
    replicas = await _replica_counts(admin, topic)
    configs = await _configs(admin, topic)
    reasons = unfit_reasons(topic, configs, replicas)
    if reasons:
        raise TopicUnfit("; ".join(reasons))
    if found and (shortfall := shape_shortfall(topic, partitions, replication_factor, replicas)):
        log.warning("%s", shortfall)
    return configs


def batch_bytes(configs: Mapping[str, str], most: int) -> int:
    """The largest record batch to send to a topic of these settings, `most` at the largest. Kafka
    holds max.message.bytes against a whole record batch, not a record: batches of records that
    each fit, larger than the topic takes, were refused at every retry, shipping stuck for good
    (and the error named a record of a few KB as too large)."""
    setting = configs.get("max.message.bytes", "").strip()
    return min(most, int(setting)) if setting.isdigit() and int(setting) > 0 else most


def shape_shortfall(topic: str, partitions: int, replication_factor: int, replicas: Sequence[int]) -> str | None:
    """What an existing topic lacks of the partitions and replicas asked for (None: nothing). A client
    that asked for it before serve made it (`consume --kafka`, `detect --kafka`) has a broker that
    makes topics on first use (auto.create.topics.enable, Apache Kafka's default) make it with its
    num.partitions and default.replication.factor, 1 and 1 by default: the audit trail on one
    broker's disk, and one consumer of a group doing all the work, where the operator asked for more."""
    fewest = min(replicas, default=0)
    if not replicas or (len(replicas) >= partitions and fewest >= replication_factor):
        return None
    return (f"Kafka topic {topic} exists with {len(replicas)} partition(s) of {fewest} replica(s), where "
            f"{partitions} partition(s) of {replication_factor} replica(s) were asked for (--kafka-partitions, "
            f"--kafka-replication-factor): made before, by hand or by the broker at a client's first request "
            f"(auto.create.topics.enable, num.partitions, default.replication.factor). It is used as it is; "
            f"add partitions or replicas to it (kafka-topics.sh --alter, kafka-reassign-partitions.sh) for more")


def unfit_reasons(topic: str, configs: Mapping[str, str], replicas: Sequence[int]) -> list[str]:
    """Why `topic`, with these settings and partitions of `replicas` replicas each, cannot keep an
    audit trail keyed by key ARN (none: it can)."""
    reasons = [_compacted(topic, configs.get("cleanup.policy", "")),
               _insync_above_replicas(topic, configs.get("min.insync.replicas", ""), replicas)]
    return [reason for reason in reasons if reason]


def _compacted(topic: str, policy: str) -> str | None:
    """Compaction keeps only the latest record of each key: of an audit trail keyed by key ARN, one
    call a key, every earlier one deleted once its segment closes, never said to any consumer."""
    if "compact" not in {part.strip().lower() for part in policy.split(",")}:
        return None
    return (f"topic {topic} has cleanup.policy={policy}: Kafka would keep only the latest record of each key "
            f"ARN and delete the audit history before it. Nothing is shipped to it until it is set to delete "
            f"(kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config "
            f"cleanup.policy=delete); the records wait in the event log")


def _insync_above_replicas(topic: str, setting: str, replicas: Sequence[int]) -> str | None:
    """acks=all needs min.insync.replicas replicas in sync: above the replicas a partition has, the
    broker refuses every write with NotEnoughReplicas, which a producer retries as if it would pass."""
    if not setting.strip().isdigit() or not replicas or int(setting) <= min(replicas):
        return None
    return (f"topic {topic} has min.insync.replicas={setting.strip()} but {min(replicas)} replica(s) per "
            f"partition: Kafka refuses every write keytrail makes (acks=all) with NotEnoughReplicas. Nothing is "
            f"shipped to it until min.insync.replicas is at most {min(replicas)} or the topic has more replicas; "
            f"the records wait in the event log")


async def _configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    """The topic's settings as the broker reports them (its defaults too, on Apache Kafka)."""
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    except KafkaError as error:  # an old broker, or one that does not let keytrail describe configs
        log.debug("cannot read the settings of Kafka topic %s: %s", topic, error)
        return {}
    return dict(_entries(response.resources, topic))


def _entries(resources: Sequence[Any], topic: str) -> list[tuple[str, str]]:
    """(name, value) of the topic's settings in a DescribeConfigs answer; none if it refused."""
    for error_code, _message, _kind, name, entries, *_ in resources:
        if name == topic and error_code == 0:
            return [(entry[0], entry[1]) for entry in entries if entry[1] is not None]
    return []


async def _replica_counts(admin: AIOKafkaAdminClient, topic: str) -> list[int]:
    """How many replicas each of the topic's partitions has."""
    [described] = await admin.describe_topics([topic])
    return [len(partition["replicas"]) for partition in described.get("partitions", [])]
