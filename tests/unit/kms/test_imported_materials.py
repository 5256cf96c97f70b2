"""The materials of a key of imported material: pending rotation, deleted, expired, stored."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from keytrail.kms.codec import key_from_doc, key_to_doc
from keytrail.kms.importing import expiration_of, material_expired, without_material
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.model import KeyState, Origin
from keytrail.kms.multiregion import replica_of
from keytrail.kms.sealing import RootKey

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = RootKey(os.urandom(32))
FIRST, SECOND, PENDING = (KeyMaterial(c * 64, os.urandom(32), NOW) for c in "abc")


def _key(*materials: KeyMaterial) -> Key:
    return Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", NOW,
               origin=Origin.EXTERNAL, materials=materials)


def test_material_pending_rotation_is_neither_current_nor_usable() -> None:
    key = _key(FIRST, replace(PENDING, pending=True))
    assert key.current_material is FIRST
    assert key.pending_material is not None and key.pending_material.material_id == PENDING.material_id
    assert key.material(PENDING.material_id) is None  # a blob naming it does not decrypt
    assert key.material(FIRST.material_id) is FIRST


def test_deleting_pending_material_drops_it_and_keeps_the_state() -> None:
    key = _key(FIRST, replace(PENDING, pending=True))
    after = without_material(key, PENDING.material_id)
    assert after.materials == (FIRST,) and after.state is KeyState.ENABLED


def test_deleting_older_material_keeps_its_id_and_makes_the_key_pending_import() -> None:
    key = _key(FIRST, SECOND)
    after = without_material(key, FIRST.material_id)
    gone = after.materials[0]
    assert (gone.material_id, gone.imported, gone.secret) == (FIRST.material_id, False, b"")
    assert after.state is KeyState.PENDING_IMPORT and after.missing_material
    assert after.current_material is SECOND and after.material(FIRST.material_id) is None
    assert without_material(key).materials[1].imported is False  # by default: the current one


def test_a_replica_keeps_naming_deleted_material_pending_rotation_in_its_primary() -> None:
    replica = replace(_key(FIRST, replace(PENDING, pending=True)), multi_region=True, primary_region="eu-west-2")
    after = without_material(replica, PENDING.material_id)
    assert [(m.material_id, m.pending, m.imported) for m in after.materials] == [
        (FIRST.material_id, False, True), (PENDING.material_id, True, False)]
    assert after.state is KeyState.ENABLED and not after.missing_material


def test_a_new_replica_of_imported_material_names_each_material_to_import() -> None:
    primary = replace(_key(FIRST, SECOND, replace(PENDING, pending=True)), multi_region=True)
    replica = replica_of(primary, "eu-west-2", NOW, "{}", "", ())
    assert [m.material_id for m in replica.materials] == [m.material_id for m in primary.materials]
    assert all(not m.imported and m.secret == b"" for m in replica.materials)
    assert replica.state is KeyState.PENDING_IMPORT and replica.current_material is not None
    assert replica.current_material.material_id == SECOND.material_id


def test_a_key_being_deleted_stays_pending_deletion_when_material_goes() -> None:
    key = replace(_key(FIRST), state=KeyState.PENDING_DELETION)
    assert without_material(key).state is KeyState.PENDING_DELETION


def test_valid_to_is_the_earliest_of_associated_material() -> None:
    soon, later = NOW + timedelta(days=1), NOW + timedelta(days=9)
    key = _key(replace(FIRST, valid_to=later), replace(SECOND, valid_to=soon),
               replace(PENDING, pending=True, valid_to=NOW + timedelta(hours=1)))
    assert expiration_of(key) == ("KEY_MATERIAL_EXPIRES", soon)
    assert expiration_of(_key(FIRST, replace(PENDING, pending=True, valid_to=soon))) == (
        "KEY_MATERIAL_DOES_NOT_EXPIRE", None)
    assert expiration_of(without_material(_key(FIRST))) == (None, None)


def test_pending_material_that_expires_counts_as_expired() -> None:
    key = _key(FIRST, replace(PENDING, pending=True, valid_to=NOW + timedelta(days=1)))
    assert not material_expired(key, NOW)
    assert material_expired(key, NOW + timedelta(days=1))


def test_stored_documents_keep_pending_deleted_and_described_material() -> None:
    key = without_material(_key(FIRST, replace(SECOND, description="q3 rotation"),
                                replace(PENDING, pending=True)), FIRST.material_id)
    back = key_from_doc(key_to_doc(key, ROOT), ROOT)
    assert back.materials == key.materials


def test_documents_from_before_material_states_read_as_imported() -> None:
    doc = json.loads(key_to_doc(_key(FIRST), ROOT))
    for name in ("pending", "imported", "description"):
        del doc["materials"][0][name]
    [material] = key_from_doc(json.dumps(doc), ROOT).materials
    assert (material.pending, material.imported, material.description) == (False, True, None)
    assert material.secret == FIRST.secret
