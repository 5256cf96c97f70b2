"""keytrail_audit_unshipped_bytes_limit is the cap --max-unshipped-bytes sets on the audit log Kafka
has not acknowledged: a node without --kafka has no such cap, and exported its default (1 GiB) as if
it had one. Its family stays, without a sample (as the cost's before any event), so that the alert
reading it names a family every serve exports; keytrail_audit_unshipped_bytes is 0 without Kafka."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from keytrail.api.credentials import CredentialStore
from keytrail.audit.trail import AuditTrail
from keytrail.cli.node import _audit_unshipped, build_node, stop_node
from keytrail.config import ServeSettings

_LIMIT = "keytrail_audit_unshipped_bytes_limit"


def _limit_samples(text: str) -> list[str]:
    return re.findall(rf"^{_LIMIT}\b.*$", text, flags=re.M)


def _trail(kafka: str | None, unshipped: int = 0) -> AuditTrail:
    settings = SimpleNamespace(kafka_bootstrap=kafka, max_unshipped_bytes=1 << 20)
    losses = 0 if kafka else None  # keytrail_audit_kafka_losses_total: with Kafka only
    return cast(AuditTrail, SimpleNamespace(unshipped_bytes=lambda: unshipped, kafka_losses=lambda: losses,
                                            settings=settings))


def test_a_node_shipping_to_kafka_exports_its_cap() -> None:
    text = _audit_unshipped(_trail("127.0.0.1:9092", unshipped=700))
    assert "\nkeytrail_audit_unshipped_bytes 700\n" in text
    assert _limit_samples(text) == [f"{_LIMIT} {1 << 20}"]


def test_a_node_without_kafka_exports_no_cap_sample() -> None:
    text = _audit_unshipped(_trail(None))
    assert "\nkeytrail_audit_unshipped_bytes 0\n" in text
    assert f"# TYPE {_LIMIT} gauge" in text and _limit_samples(text) == []


async def test_the_metrics_of_a_node_without_kafka_have_no_cap_sample(tmp_path: Path) -> None:
    node = await build_node(ServeSettings(data_dir=tmp_path, detector=False),
                            CredentialStore(None, dev_credentials=True), lifespan=False)
    try:
        assert node.app.settings.metrics is not None
        text = await node.app.settings.metrics()
    finally:
        await stop_node(node)
    assert "\nkeytrail_audit_unshipped_bytes 0\n" in text
    assert f"# TYPE {_LIMIT} gauge" in text and _limit_samples(text) == []
