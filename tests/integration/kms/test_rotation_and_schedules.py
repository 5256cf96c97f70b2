"""Rotation and scheduled deletion, driven by the server's dev clock (§3d item 24)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keytrail.clock import DEV_CLOCK_FILE
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer

DAY = 86_400


def test_rotation_status_and_periods(server: KeytrailServer) -> None:
    kms = server.client(parameter_validation=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key_id)
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 365
    assert "NextRotationDate" in status
    for days in (90, 180, 2560):
        kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=days)
        assert kms.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == days
    assert aws_error(kms.enable_key_rotation, KeyId=key_id, RotationPeriodInDays=89)[0] == "ValidationException"
    kms.disable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_enable_key_rotation_without_a_period_is_365_days_again(kms) -> None:
    # EnableKeyRotation: "If no value is specified, the default value is 365 days", also for a
    # key that had a custom period before (rotation disabled and enabled again, or re-enabled).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.disable_key_rotation(KeyId=key_id)
    kms.enable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 365
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.enable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 365


def test_enabling_rotation_again_with_the_same_period_keeps_the_schedule(fresh_server: KeytrailServer) -> None:
    # A reconcile loop calling EnableKeyRotation again must not push the next rotation back each
    # time (the key would never rotate); another period restarts the schedule from now.
    kms = fresh_server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    due = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
    fresh_server.advance(50 * DAY)
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == due
    fresh_server.advance(41 * DAY)
    assert [r["RotationType"] for r in kms.list_key_rotations(KeyId=key_id)["Rotations"]] == ["AUTOMATIC"]
    now = datetime.fromisoformat(fresh_server.advance(0))
    kms.enable_key_rotation(KeyId=key_id)  # another period: 365 days from now
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["RotationPeriodInDays"] == 365
    assert abs(status["NextRotationDate"] - (now + timedelta(days=365))) < timedelta(seconds=5)
    fresh_server.advance(30 * DAY)
    kms.enable_key_rotation(KeyId=key_id)  # omitted while the period is 365: the same period
    assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == status["NextRotationDate"]


def test_rotate_on_demand_keeps_old_material(kms) -> None:
    meta = kms.create_key()["KeyMetadata"]
    old_blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"old")["CiphertextBlob"]
    assert kms.rotate_key_on_demand(KeyId=meta["KeyId"])["KeyId"] == meta["Arn"]
    current = kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]
    assert current != meta["CurrentKeyMaterialId"]
    new_blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"old")["CiphertextBlob"]
    assert new_blob != old_blob
    assert kms.decrypt(CiphertextBlob=old_blob)["KeyMaterialId"] == meta["CurrentKeyMaterialId"]
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == current
    rotations = kms.list_key_rotations(KeyId=meta["KeyId"])["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]


def test_on_demand_rotation_limit_is_twenty_five(kms) -> None:
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    for _ in range(25):
        kms.rotate_key_on_demand(KeyId=arn)
    code, message, _ = aws_error(kms.rotate_key_on_demand, KeyId=arn)
    assert code == "LimitExceededException"
    assert message == ("The on-demand rotations limit has been reached for the given keyId. "
                       f"No more on-demand rotations can be performed for this key: {arn}")


def test_rotate_disabled_key_is_disabled_exception(kms) -> None:
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    kms.disable_key(KeyId=arn)
    assert aws_error(kms.rotate_key_on_demand, KeyId=arn)[0] == "DisabledException"


def test_automatic_rotation_happens_when_the_period_passes(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    meta = kms.create_key()["KeyMetadata"]
    old_blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"before")["CiphertextBlob"]
    kms.enable_key_rotation(KeyId=meta["KeyId"], RotationPeriodInDays=90)
    fresh_server.advance(91 * DAY)
    rotations = kms.list_key_rotations(KeyId=meta["KeyId"])["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
    new_meta = kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert new_meta["CurrentKeyMaterialId"] != meta["CurrentKeyMaterialId"]
    new_blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"after")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before"
    assert kms.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"after"
    fresh_server.advance(91 * DAY)
    assert len(kms.list_key_rotations(KeyId=meta["KeyId"])["Rotations"]) == 2


def test_automatic_rotation_happens_once_for_every_period_the_clock_passes(fresh_server: KeytrailServer) -> None:
    # The dev clock moves time as if it had passed: a key enabled all along rotates at each due
    # date, not once for the whole move, and its schedule keeps to those dates.
    kms = fresh_server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    first_due = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
    fresh_server.advance(200 * DAY)
    rotations = kms.list_key_rotations(KeyId=key_id)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC", "AUTOMATIC"]
    dates = [r["RotationDate"] for r in rotations]
    expected = [first_due, first_due + timedelta(days=90)]
    assert all(abs(d - e) < timedelta(seconds=1) for d, e in zip(dates, expected, strict=True))
    next_date = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
    assert abs(next_date - (first_due + timedelta(days=180))) < timedelta(seconds=1)


def test_key_enabled_after_missing_its_rotations_rotates_once_then_every_period(
    fresh_server: KeytrailServer,
) -> None:
    # rotate-keys ("Disabled keys"): a disabled key is not rotated; enabled again with material
    # older than the period, it rotates immediately, once, and the period runs from then.
    kms = fresh_server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.disable_key(KeyId=key_id)
    fresh_server.advance(200 * DAY)
    assert kms.list_key_rotations(KeyId=key_id)["Rotations"] == []
    enabled_at = datetime.fromisoformat(fresh_server.advance(0))
    kms.enable_key(KeyId=key_id)
    assert [r["RotationType"] for r in kms.list_key_rotations(KeyId=key_id)["Rotations"]] == ["AUTOMATIC"]
    next_date = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
    assert abs(next_date - (enabled_at + timedelta(days=90))) < timedelta(seconds=5)


def test_scheduled_deletion_deletes_the_key_after_the_window(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=arn, Plaintext=b"kept too long")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    fresh_server.advance(6 * DAY)
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    fresh_server.advance(1 * DAY + 60)
    code, message, _ = aws_error(kms.describe_key, KeyId=arn)
    assert (code, message) == ("NotFoundException", f"Key '{arn}' does not exist")
    assert arn not in [k["KeyArn"] for k in kms.list_keys()["Keys"]]
    # Ciphertext of a deleted key is AWS's AccessDeniedException, not InvalidCiphertextException.
    assert aws_error(kms.decrypt, CiphertextBlob=blob)[:2] == (
        "AccessDeniedException",
        "The ciphertext refers to a customer master key that does not exist, does not exist in this region, "
        "or you are not allowed to access.",
    )


def test_rotation_status_is_false_while_pending_deletion(kms) -> None:
    # GetKeyRotationStatus: "While a KMS key is pending deletion, its key rotation status is
    # false ... If you cancel the deletion, the original key rotation status returns to true."
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    kms.enable_key_rotation(KeyId=arn)
    kms.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    assert kms.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"] is False
    kms.cancel_key_deletion(KeyId=arn)
    assert kms.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"] is True


def test_automatic_rotation_of_imported_keys_is_unsupported_operation(kms) -> None:
    # Key states table, note [6]: on a PendingImport key Enable/DisableKeyRotation and
    # GetKeyRotationStatus fail with "UnsupportedOperationException: <key ARN> origin is EXTERNAL
    # which is not valid for this operation.", not with the key-state error. On-demand rotation
    # of imported keys exists (to imported material, tests/integration/keystores/
    # test_imported_rotation.py): a key with no material yet answers with its state.
    arn = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["Arn"]
    expected = ("UnsupportedOperationException", f"{arn} origin is EXTERNAL which is not valid for this operation.")
    for call in (kms.enable_key_rotation, kms.disable_key_rotation, kms.get_key_rotation_status):
        assert aws_error(call, KeyId=arn)[:2] == expected, call
    assert aws_error(kms.rotate_key_on_demand, KeyId=arn)[:2] == (
        "KMSInvalidStateException", f"{arn} is pending import."
    )


def test_listing_rotations_of_an_asymmetric_or_hmac_key_says_why_it_cannot(kms) -> None:
    for spec, usage in (("ECC_NIST_P256", "SIGN_VERIFY"), ("HMAC_256", "GENERATE_VERIFY_MAC")):
        arn = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]
        assert aws_error(kms.list_key_rotations, KeyId=arn)[:2] == (
            "UnsupportedOperationException", f"{arn} key spec is {spec} which is not valid for this operation.")


def test_rotation_status_of_an_asymmetric_or_hmac_key_is_false(kms) -> None:
    # What AWS answers (ansible-collections/community.aws#311 quotes the AWS CLI's
    # {"KeyRotationEnabled": false}; floci-io/floci#618): automatic rotation is off and cannot be
    # turned on, rather than UnsupportedOperationException as for imported material.
    for spec, usage in (("ECC_NIST_P256", "SIGN_VERIFY"), ("HMAC_256", "GENERATE_VERIFY_MAC")):
        arn = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]
        status = kms.get_key_rotation_status(KeyId=arn)
        assert status["KeyRotationEnabled"] is False and status["KeyId"] == arn, spec
        assert "RotationPeriodInDays" not in status and "NextRotationDate" not in status
        assert aws_error(kms.enable_key_rotation, KeyId=arn)[0] == "UnsupportedOperationException"


def _rotations(kms: Any, key_id: str) -> list[datetime]:
    return [r["RotationDate"] for r in kms.list_key_rotations(KeyId=key_id)["Rotations"]]


def _near(moment: datetime, expected: datetime) -> bool:
    return abs(moment - expected) < timedelta(seconds=1)


def _key_rotating_every_90_days(server: KeytrailServer) -> tuple[Any, str, datetime]:
    """A client, a new key with automatic rotation every 90 days, and its next rotation date."""
    kms = server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    return kms, key_id, kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]


def test_a_restarted_node_rotates_at_the_date_it_had_before_once(tmp_path: Path) -> None:
    # serve stopped (SIGTERM) and killed (-9) before the due date: the next rotation stays at its
    # date, neither rescheduled from the restart nor skipped; one restarted after it does not rotate again.
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms, key_id, due = _key_rotating_every_90_days(server)
        server.advance(60 * DAY)
        for restart in (server.stop, server.kill):
            restart()
            kms = server.start().client()
            assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == due
        until_due = (due - datetime.fromisoformat(server.advance(0))).total_seconds()
        server.advance(until_due - 3600)
        assert _rotations(kms, key_id) == []
        server.advance(2 * 3600)
        [rotated] = _rotations(kms, key_id)
        assert _near(rotated, due)
        next_due = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
        assert _near(next_due, due + timedelta(days=90))
        server.kill()
        kms = server.start().client()
        assert _rotations(kms, key_id) == [rotated]
        assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == next_due
    finally:
        if server.proc is not None:
            server.stop()


def test_a_rotation_that_fell_due_while_the_node_was_down_happens_once_when_it_runs_dated_when_due(
    tmp_path: Path,
) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms, key_id, due = _key_rotating_every_90_days(server)
        server.stop()
        # 100 days pass while it is down (the dev clock's lead is what a restart resumes from).
        record = server.data_dir / DEV_CLOCK_FILE
        ahead = json.loads(record.read_text())["aheadSeconds"] if record.exists() else 0
        record.write_text(json.dumps({"aheadSeconds": ahead + 100 * DAY}))
        kms = server.start().client()
        [rotated] = _rotations(kms, key_id)
        assert _near(rotated, due)
        assert _near(kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"], due + timedelta(days=90))
    finally:
        if server.proc is not None:
            server.stop()
