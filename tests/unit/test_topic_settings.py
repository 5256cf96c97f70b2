"""What an existing topic's settings do to an audit trail keyed by key ARN (transport/topic_settings.py)."""

from __future__ import annotations

import pytest

from keytrail.transport.topic_settings import batch_bytes, shape_shortfall, unfit_reasons


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact", "COMPACT"])
def test_a_compacting_cleanup_policy_is_unfit_however_it_is_written(policy: str) -> None:
    [reason] = unfit_reasons("audit", {"cleanup.policy": policy}, [3, 3])
    assert reason.startswith(f"topic audit has cleanup.policy={policy}: Kafka would keep only the latest record")


@pytest.mark.parametrize(("configs", "replicas"), [
    ({}, [1]),  # a broker that reports no settings (tansu's defaults), or refused DescribeConfigs
    ({"cleanup.policy": "delete", "min.insync.replicas": "2"}, [3, 2, 3]),
    ({"min.insync.replicas": "3"}, []),  # no partition described: nothing to judge by
    ({"min.insync.replicas": "not a number"}, [1]),
])
def test_a_topic_that_keeps_every_record_and_takes_acks_all_is_fit(configs: dict[str, str],
                                                                   replicas: list[int]) -> None:
    assert unfit_reasons("audit", configs, replicas) == []


def test_min_insync_replicas_above_the_fewest_replicas_of_a_partition_is_unfit() -> None:
    [reason] = unfit_reasons("audit", {"min.insync.replicas": "3"}, [3, 2, 3])
    assert reason.startswith("topic audit has min.insync.replicas=3 but 2 replica(s) per partition: Kafka refuses "
                             "every write keytrail makes (acks=all) with NotEnoughReplicas")


def test_both_faults_are_named() -> None:
    assert len(unfit_reasons("audit", {"cleanup.policy": "compact", "min.insync.replicas": "2"}, [1])) == 2


@pytest.mark.parametrize(("partitions", "replication_factor", "replicas"), [
    (3, 1, [1, 1, 1]),
    (3, 2, [3, 2, 2, 2]),  # more partitions, more replicas than asked: the operator's choice
    (3, 3, []),  # no partition described: nothing to judge by
])
def test_a_topic_with_the_partitions_and_replicas_asked_for_or_more_lacks_nothing(
        partitions: int, replication_factor: int, replicas: list[int]) -> None:
    assert shape_shortfall("audit", partitions, replication_factor, replicas) is None


@pytest.mark.parametrize(("partitions", "replication_factor", "replicas", "shape"), [
    (3, 1, [1], "1 partition(s) of 1 replica(s), where 3 partition(s) of 1 replica(s)"),
    (3, 3, [3, 1, 3], "3 partition(s) of 1 replica(s), where 3 partition(s) of 3 replica(s)"),
])
def test_a_topic_with_fewer_partitions_or_replicas_than_asked_for_is_named(
        partitions: int, replication_factor: int, replicas: list[int], shape: str) -> None:
    said = shape_shortfall("audit", partitions, replication_factor, replicas)
    assert said is not None and said.startswith(f"Kafka topic audit exists with {shape} were asked for"), said


@pytest.mark.parametrize(("configs", "expected"), [
    ({}, 1000),  # not told (tansu's defaults, DescribeConfigs refused): as large as keytrail sends
    ({"max.message.bytes": "1048588"}, 1000),  # Kafka's default takes keytrail's batches
    ({"max.message.bytes": "600"}, 600),
    ({"max.message.bytes": "0"}, 1000),
    ({"max.message.bytes": "lots"}, 1000),
])
def test_a_record_batch_is_no_larger_than_the_topic_takes(configs: dict[str, str], expected: int) -> None:
    assert batch_bytes(configs, 1000) == expected
