"""What the detector remembers about each key: creation, state, last successful use, principals.

Rules read the ledger as it was *before* the event in hand (is this principal new on the key?
was the key used recently?); the engine updates it after every rule has looked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keytrail.audit.schema import names_aws_managed_key
from keytrail.detect.events import KmsEvent, caller_id

__all__ = ["KEY_PRINCIPALS", "UNCONFIRMED_KEYS", "KeyLedger", "KeyRecord"]

# How many keys never seen to exist (named only by failed calls) are remembered, the least
# recently named let go first: anyone may send denied calls naming random key ARNs, and a
# long-running detector must not keep each of them for good. A real key is only affected when
# this many other such ARNs came between its last failed call and its first successful one.
UNCONFIRMED_KEYS = 50_000
# How many deleted keys are remembered as deleted (their records dropped), the least recently
# deleted let go first: enough for an event of one that arrives late (a Kafka partition behind).
DELETED_KEYS = 50_000
# How many principals one key's record remembers as its callers, the first to call it: a key called
# by every federated user (each its own principal) must not grow the detector with each of them.
# Per key, unlike the bounds above, so well below them (a full key's callers take about 1.5 MB).
# Past them a key is `crowded`: its callers are no settled few, and one not remembered cannot be
# told from one never seen, so none is taken for new on it (rules must not raise on every call).
KEY_PRINCIPALS = 10_000

_STATE_CHANGES = {
    "DisableKey": "Disabled",
    "EnableKey": "Enabled",
    "ScheduleKeyDeletion": "PendingDeletion",
    "DeleteKey": "Deleted",
}


@dataclass(slots=True)
class KeyRecord:
    """One key as seen in the event stream."""

    key_arn: str
    first_seen: datetime
    created: datetime | None = None
    created_event_id: str | None = None
    key_manager: str | None = None
    state: str = "Enabled"
    last_used: datetime | None = None
    last_used_event_id: str | None = None
    last_used_by: str | None = None
    imported: datetime | None = None  # when a key created without material (PendingImport) got it
    # Imported key material (kms/importing.py): new material waits for an on-demand rotation
    # without being the key's; material deleted or expired leaves the key PendingImport until
    # each such material is imported again.
    pending_material: str | None = None
    missing_materials: set[str] = field(default_factory=set)
    awaits_first_material: bool = False  # created PendingImport, no import seen since
    rotations: int = 0
    # Each principal with a successful call on the key (events.caller_id: callers with no ARN too)
    # -> whether one of them was cryptographic: one entry per key x principal serves both "ever
    # called" and "ever used" (new-principal-on-key).
    principals: dict[str, bool] = field(default_factory=dict)
    crowded: bool = False  # a principal past KEY_PRINCIPALS called it, and is not remembered
    first_used: datetime | None = None  # the first successful cryptographic use seen
    confirmed: bool = False  # a successful call named it: a key that exists, not a denied probe
    live: bool = False  # a call this node answered named it, not only history `audit import` added


class KeyLedger:
    """Per-key records of the keys seen to exist (a successful call named them), updated from
    every event; of the others only when they were first named, and only the latest
    UNCONFIRMED_KEYS of them. A key's record goes with its DeleteKey: kept, a node that creates and
    deletes keys for months held every deleted one (and the checks' state of it) for good."""

    def __init__(self, unconfirmed_limit: int = UNCONFIRMED_KEYS, deleted_limit: int = DELETED_KEYS,
                 principals_limit: int = KEY_PRINCIPALS) -> None:
        self._principals_limit = principals_limit
        self._keys: dict[str, KeyRecord] = {}
        self._unconfirmed: OrderedDict[str, datetime] = OrderedDict()  # key ARN -> first seen
        self._unconfirmed_limit = unconfirmed_limit
        # The latest deleted keys: a late event of one must not bring back its record (Enabled,
        # say, which `unused-key` would then raise on a key that no longer exists).
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._deleted_limit = deleted_limit
        # Multi-Region key families (account:key/mrk-…) with a key in the ledger: the primary's
        # RotateKey gives every replica the new material, so each replica prices at the rotated
        # rate too. A family goes with its last key's DeleteKey: kept, every family ever rotated
        # stayed for good. Its rotation times are few (25 on demand, then one each 90 days at most).
        self._families: dict[str, _Family] = {}
        # The latest time of the history `keytrail audit import` added: what it tells of a key ends
        # there, whatever the clock says since.
        self.imported_until: datetime | None = None

    def get(self, key_arn: str | None) -> KeyRecord | None:
        """The key's record; None for a key no successful call named (nothing known of it)."""
        return self._keys.get(key_arn) if key_arn else None

    def __iter__(self) -> Iterator[KeyRecord]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        """Keys remembered, seen to exist or not."""
        return len(self._keys) + len(self._unconfirmed)

    def exists(self, key_arn: str) -> bool:
        """Whether a successful call named the key."""
        return key_arn in self._keys

    def has_used(self, key_arn: str | None, principal: str | None) -> bool:
        """Whether `principal` made a successful call on the key before, or may have: on a crowded
        key, one not remembered is not known to be new."""
        record = self.get(key_arn)
        return record is not None and (principal in record.principals or record.crowded)

    def has_used_cryptographically(self, key_arn: str | None, principal: str | None) -> bool:
        """Whether `principal` made a successful cryptographic call (CRYPTO_OPERATIONS) on the key
        before, or may have (one not remembered on a crowded key)."""
        record = self.get(key_arn)
        if record is None or principal is None:
            return False
        used = record.principals.get(principal)
        return record.crowded if used is None else used

    def rotations(self, record: KeyRecord) -> int:
        """The rotations that price the key: a multi-Region key's are its family's, one however
        many Regions log it (as pipeline/cost.py bills them)."""
        family = self._family_of(record.key_arn)
        return record.rotations if family is None else len(family.rotations)

    def families(self) -> int:
        """Multi-Region key families remembered (each has a key in the ledger)."""
        return len(self._families)

    def as_of(self, record: KeyRecord, now: datetime) -> datetime:
        """The time the key's idleness can be judged as of: `now`, but for a key known only from
        imported history, the end of that history (its later calls, if any, were never logged here)."""
        if record.live or self.imported_until is None:
            return now
        return min(now, self.imported_until)

    def update(self, event: KmsEvent, *, imported: bool = False) -> None:
        """Note the event (`imported`: from history `keytrail audit import` added)."""
        self._update_keys(event, live=not imported)
        if imported and (self.imported_until is None or event.event_time > self.imported_until):
            self.imported_until = event.event_time
        if event.event_name == "RotateKey" and event.succeeded:
            for key_arn in event.key_arns:
                if (family := self._family_of(key_arn)) is not None:
                    family.rotations.add(event.event_time)  # one rotation, however many Regions log it

    def _family_of(self, key_arn: str) -> _Family | None:
        name = _multi_region_family(key_arn)
        return None if name is None else self._families.get(name)

    def _update_keys(self, event: KmsEvent, *, live: bool) -> None:
        for key_arn in event.key_arns:
            record = self._keys.get(key_arn)
            if record is not None:
                record.live = record.live or live
                if event.succeeded:
                    self._apply(record, event)
                    if record.state == "Deleted":
                        self._forget_deleted(key_arn)
            elif key_arn in self._deleted:
                continue  # a late event of a key deleted since
            elif event.succeeded:  # seen to exist: first seen when it was first named at all
                first_seen = self._unconfirmed.pop(key_arn, event.event_time)
                self._apply(self._keys.setdefault(key_arn, KeyRecord(key_arn, first_seen, live=live)), event)
                if (family := _multi_region_family(key_arn)) is not None:
                    self._families.setdefault(family, _Family()).keys.add(key_arn)
            else:
                self._named_by_failure(key_arn, event.event_time)

    def _forget_deleted(self, key_arn: str) -> None:
        del self._keys[key_arn]
        if (name := _multi_region_family(key_arn)) is not None and (family := self._families.get(name)):
            family.keys.discard(key_arn)
            if not family.keys:
                del self._families[name]
        self._deleted[key_arn] = None
        if len(self._deleted) > self._deleted_limit:
            self._deleted.popitem(last=False)

    def _named_by_failure(self, key_arn: str, time: datetime) -> None:
        if key_arn in self._unconfirmed:
            self._unconfirmed.move_to_end(key_arn)
            return
        self._unconfirmed[key_arn] = time
        if len(self._unconfirmed) > self._unconfirmed_limit:
            self._unconfirmed.popitem(last=False)

    def _apply(self, record: KeyRecord, event: KmsEvent) -> None:
        record.confirmed = True
        if record.key_arn == event.key_arns[0] and names_aws_managed_key(event.request_parameters.get("keyId")):
            record.key_manager = "AWS"  # an AWS managed key's alias named it: its CreateKey is seldom in a trail
        self._called_by(record, caller_id(event), event.is_crypto)  # a caller with no ARN too
        if event.is_crypto and (record.first_used is None or event.event_time < record.first_used):
            record.first_used = event.event_time
        name = event.event_name
        if event.is_crypto and (record.last_used is None or event.event_time >= record.last_used):
            record.last_used, record.last_used_event_id = event.event_time, event.event_id
            record.last_used_by = event.principal_arn
        elif name == "CreateKey":
            metadata = event.response_elements.get("keyMetadata")
            metadata = metadata if isinstance(metadata, dict) else {}  # an imported record may hold anything
            record.created, record.created_event_id = event.event_time, event.event_id
            # CloudTrail writes keyManager; older tools KeyManager, which the cost model reads too.
            record.key_manager = str(metadata.get("keyManager") or metadata.get("KeyManager") or "CUSTOMER")
            record.state = str(metadata.get("keyState") or "Enabled")
            record.awaits_first_material = record.state == "PendingImport"
        elif name == "RotateKey":  # also logged after each RotateKeyOnDemand call (ct-rotatekeyondemand): count one
            record.rotations += 1
            record.pending_material = None  # an on-demand rotation makes it the key's current material
        elif name in _STATE_CHANGES:
            record.state = _STATE_CHANGES[name]
        elif name == "CancelKeyDeletion":
            # KMS leaves a key Disabled, but one of EXTERNAL origin without all its material
            # (never imported, deleted or expired) PendingImport (kms/operations/keys.py): taken
            # for Disabled, its later import left it Disabled here, never judged unused.
            waiting = record.awaits_first_material or record.missing_materials
            record.state = "PendingImport" if waiting else "Disabled"
        elif name == "ImportKeyMaterial":
            _material_imported(record, event)
        elif name == "DeleteImportedKeyMaterial":
            _material_gone(record, _material_id(event.response_elements))
        elif name == "DeleteExpiredKeyMaterial":
            _material_gone(record, _material_id(event.service_event_details))
        elif name == "SynchronizeMultiRegionKey" and record.state == "Creating":
            # A replica's CreateKey says Creating; KMS logs this when it leaves that state for
            # Enabled (docs/multi-region-keys.md). Left Creating, a replica was never judged unused.
            record.state = "Enabled"


    def _called_by(self, record: KeyRecord, principal: str, crypto: bool) -> None:
        """Note `principal`'s successful call, if the key still remembers new callers."""
        used = record.principals.get(principal)
        if used is None and len(record.principals) >= self._principals_limit:
            record.crowded = True
        elif not used:
            record.principals[principal] = crypto


@dataclass(slots=True)
class _Family:
    """One multi-Region key's copies in the ledger and the times its material rotated."""

    keys: set[str] = field(default_factory=set)
    rotations: set[datetime] = field(default_factory=set)


def _multi_region_family(key_arn: str) -> str | None:
    """account:key/mrk-… of a multi-Region key (the same in every Region), else None."""
    parts = key_arn.split(":")
    return f"{parts[4]}:{parts[5]}" if len(parts) == 6 and parts[5].startswith("key/mrk-") else None


def _material_id(elements: Mapping[str, Any]) -> str | None:
    material = elements.get("keyMaterialId")
    return material if isinstance(material, str) and material else None


def _material_imported(record: KeyRecord, event: KmsEvent) -> None:
    """A key waiting for material is Enabled once it holds all of it again; new material imported
    into a key that has some (ImportType NEW_KEY_MATERIAL) only waits for a rotation."""
    material = _material_id(event.response_elements)
    record.awaits_first_material = False
    if record.state == "PendingImport":
        if material is None:  # a record that does not say which: take it for all that was missing
            record.missing_materials.clear()
        else:
            record.missing_materials.discard(material)
        if not record.missing_materials:
            record.state = "Enabled"
            if record.imported is None:
                record.imported = event.event_time
    elif event.request_parameters.get("importType") == "NEW_KEY_MATERIAL":
        record.pending_material = material


def _material_gone(record: KeyRecord, material: str | None) -> None:
    """Deleted or expired material: the key is PendingImport until it is imported again, unless it
    was material pending rotation, never the key's (or the key is being deleted anyway)."""
    if material is not None and material == record.pending_material:
        record.pending_material = None
        return
    if material is not None:
        record.missing_materials.add(material)
    if record.state != "PendingDeletion":
        record.state = "PendingImport"
