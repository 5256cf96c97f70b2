"""`keytrail cost` over the records the KMS service writes: calls made on the service (a dev clock
standing still), their CloudTrail records consumed into a data dir, the figures read back by the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from keytrail.audit.records import to_cloudtrail
from keytrail.cli.metrics import register
from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.sources import RecordsSource
from keytrail.reports.figures import cost_projection
from tests.support.owed_calls import Spool, context, node


def _march_key_months(hours: int) -> Decimal:
    """`hours` clock hours of March (744 of them) in key-months, as a cost row rounds them."""
    return (Decimal(hours) / 744).quantize(Decimal("1e-10"))


class Served:
    """A KMS service on a SQLite key store, its clock (standing still) and the audit records of its calls."""

    def __init__(self, service: KmsService, clock: ManualClock, spool: Spool) -> None:
        self.service, self.clock, self.spool = service, clock, spool

    async def call(self, operation: str, params: dict[str, Any]) -> Any:
        return await self.service.execute(operation, context(f"req-{len(self.spool.records)}"), params)

    def at(self, moment: datetime) -> None:
        self.clock.advance((moment - self.clock.now()).total_seconds())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store, spool = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))), Spool()
    clock = ManualClock(datetime(2027, 3, 7, 0, 20, tzinfo=UTC))
    yield Served(node(store, spool, clock), clock, spool)
    await store.close()


async def _cost(served: Served, data: Path, since: str, until: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`keytrail cost --by key,account` over the service's records, consumed into `data`."""
    await Runner(state_dir(data), RecordsSource([to_cloudtrail(r) for r in served.spool.records])).run()
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["cost", "--data-dir", str(data), "--by", "key,account", "--format", "json",
                                      "--since", since, "--until", until])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line, parse_float=Decimal) for line in result.stdout.splitlines() if line]
    return {(row["keyArn"], row["accountId"]): row for row in rows}


async def test_a_key_used_and_scheduled_for_deletion_at_the_top_of_an_hour_is_billed_that_hour(
        served: Served, tmp_path: Path) -> None:
    # The records at 01:00:00Z happened within [01:00:00, 01:00:01): the key was billable, and used,
    # in the hour 01:00 (docs/metrics.md: billed when billable at any moment of it).
    arn = (await served.call("CreateKey", {}))["KeyMetadata"]["Arn"]
    served.at(datetime(2027, 3, 7, 1, tzinfo=UTC))
    await served.call("Encrypt", {"KeyId": arn, "Plaintext": b"used"})
    await served.call("ScheduleKeyDeletion", {"KeyId": arn})
    rows = await _cost(served, tmp_path / "data", "2027-03-07T00:00", "2027-03-07T03:00")
    assert rows[(arn, "111122223333")]["keyMonths"] == _march_key_months(2)
    projection = cost_projection(MetricsStore(tmp_path / "data"), PriceTable(), datetime(2027, 3, 7, 3, tzinfo=UTC))
    assert projection["projectedKeyCost"].to_list() == [_march_key_months(2)]  # the month's storage: those 2 hours


async def test_a_key_created_and_scheduled_for_deletion_in_the_second_an_hour_starts_bills_that_hour(
        served: Served, tmp_path: Path) -> None:
    served.at(datetime(2027, 3, 7, 1, tzinfo=UTC))
    arn = (await served.call("CreateKey", {}))["KeyMetadata"]["Arn"]
    await served.call("ScheduleKeyDeletion", {"KeyId": arn})
    rows = await _cost(served, tmp_path / "data", "2027-03-07T00:00", "2027-03-07T03:00")
    assert rows[(arn, "111122223333")]["keyMonths"] == _march_key_months(1)


async def test_one_replicate_key_call_is_billed_as_one_request(served: Served, tmp_path: Path) -> None:
    # The service logs the call's ReplicateKey (primary's Region) and, as AWS does, a CreateKey in
    # the replica's Region invoked by kms.amazonaws.com: KMS's doing, not a second request.
    primary = (await served.call("CreateKey", {"MultiRegion": True}))["KeyMetadata"]["Arn"]
    replica = (await served.call("ReplicateKey", {"KeyId": primary, "ReplicaRegion": "eu-west-1"}))[
        "ReplicaKeyMetadata"]["Arn"]
    [kms_created] = [r for r in served.spool.named("CreateKey") if r.region == "eu-west-1"]
    assert to_cloudtrail(kms_created)["userIdentity"]["invokedBy"] == "kms.amazonaws.com"
    rows = await _cost(served, tmp_path / "data", "2027-03-07T00:00", "2027-03-08T00:00")
    assert rows[(primary, "111122223333")]["requests"] == 2  # CreateKey, ReplicateKey
    assert rows[(primary, "111122223333")]["requestCost"] == Decimal("0.000006")
    assert rows[(replica, "111122223333")]["requests"] == 0
    assert rows[(replica, "111122223333")]["keyMonths"] == _march_key_months(24)
