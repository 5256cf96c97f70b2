"""What an existing topic's settings do to an audit trail keyed by key ARN (transport/topic_settings.py)."""

from __future__ import annotations

import pytest

from keytrail.transport.topic_settings import unfit_reasons


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
