"""The key: its metadata, its versions of key material, and the pure transitions between states.

A key is immutable; every change returns a new `Key` (compute, persist, then announce). Key
material versions are first-class (as in Vault transit): the newest encrypts, every version
decrypts what it made, and the ciphertext names its version by `KeyMaterialId`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from keytrail.kms.identifiers import key_arn
from keytrail.kms.model import KeyManager, KeySpec, KeyState, KeyUsage, Origin

__all__ = ["Key", "KeyMaterial"]

DEFAULT_ROTATION_PERIOD_DAYS = 365


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """One version of a key's secret material. `secret` is raw bytes: an AES or HMAC key, or a
    PKCS#8 DER private key; it is sealed before it touches disk and hidden from `repr`."""

    material_id: str
    secret: bytes = field(repr=False)
    created: datetime
    rotation_type: str | None = None  # None for the first material, else AUTOMATIC / ON_DEMAND
    valid_to: datetime | None = None  # imported material that expires
    handle: str | None = None  # id of the key object inside an HSM (custom key stores)
    # Imported material (Origin EXTERNAL). `pending`: imported with ImportType NEW_KEY_MATERIAL
    # for an on-demand rotation that has not happened yet (PENDING_ROTATION): never current, never
    # used. `imported` False: deleted or expired, its id still the key's until re-imported
    # (ImportState PENDING_IMPORT); `secret` is empty then.
    pending: bool = False
    imported: bool = True
    description: str | None = None  # KeyMaterialDescription

    def without_secret(self) -> KeyMaterial:
        """This material deleted or expired, or not yet imported into this copy of a multi-Region
        key: its id stays the key's, its secret is gone."""
        return replace(self, secret=b"", imported=False, valid_to=None)


@dataclass(frozen=True, slots=True)
class Key:
    """A KMS key in one account and Region."""

    account: str
    region: str
    key_id: str
    creation_date: datetime
    key_spec: KeySpec = KeySpec.SYMMETRIC_DEFAULT
    key_usage: KeyUsage = KeyUsage.ENCRYPT_DECRYPT
    origin: Origin = Origin.AWS_KMS
    key_manager: KeyManager = KeyManager.CUSTOMER
    state: KeyState = KeyState.ENABLED
    description: str = ""
    policy: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    materials: tuple[KeyMaterial, ...] = ()
    deletion_date: datetime | None = None
    pending_window_days: int | None = None
    rotation_enabled: bool = False
    rotation_period_days: int | None = None
    next_rotation_date: datetime | None = None
    on_demand_rotations: int = 0
    expiration_model: str | None = None
    multi_region: bool = False
    primary_region: str | None = None
    replica_regions: tuple[str, ...] = ()
    custom_key_store_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Keys holding the same policy share one copy of its text (freed with its last key), however
        # the key was made (read, created, given a policy, replicated): most keys of an account keep
        # the default key policy, ≈ 1 KB of text. At 20,000 such keys a store's objects took 1.4 KB
        # a key instead of 2.4, and the process 74 MB instead of 91.
        object.__setattr__(self, "policy", sys.intern(self.policy))

    @property
    def arn(self) -> str:
        return key_arn(self.region, self.account, self.key_id)

    @property
    def enabled(self) -> bool:
        return self.state is KeyState.ENABLED

    @property
    def current_material(self) -> KeyMaterial | None:
        """The newest material that is not pending rotation: the one that encrypts."""
        for material in reversed(self.materials):
            if not material.pending:
                return material
        return None

    @property
    def pending_material(self) -> KeyMaterial | None:
        """Imported material waiting for RotateKeyOnDemand (at most one)."""
        return next((m for m in self.materials if m.pending), None)

    @property
    def missing_material(self) -> bool:
        """True when material the key depends on was deleted or expired: the key cannot be used
        until all of it is imported again (ImportKeyMaterial, "For symmetric encryption keys")."""
        return any(not m.imported and not m.pending for m in self.materials)

    def material(self, material_id: str) -> KeyMaterial | None:
        """The material a ciphertext names, if it can decrypt (neither pending nor deleted)."""
        for material in self.materials:
            if material.material_id == material_id and material.imported and not material.pending:
                return material
        return None

    @property
    def tag_map(self) -> dict[str, str]:
        return dict(self.tags)

    # --- transitions -------------------------------------------------------------------------

    def with_state(self, state: KeyState) -> Key:
        return replace(self, state=state, deletion_date=None, pending_window_days=None)

    def scheduled_for_deletion(self, now: datetime, window_days: int) -> Key:
        return replace(
            self,
            state=KeyState.PENDING_DELETION,
            deletion_date=now + timedelta(days=window_days),
            pending_window_days=window_days,
        )

    def with_rotation(self, enabled: bool, now: datetime, period_days: int | None = None) -> Key:
        if not enabled:
            return replace(self, rotation_enabled=False, next_rotation_date=None)
        # EnableKeyRotation: without RotationPeriodInDays the period is 365 days, whatever it was.
        period = period_days or DEFAULT_ROTATION_PERIOD_DAYS
        if self.rotation_enabled and period == self.rotation_period_days and self.next_rotation_date is not None:
            # The same call again (a reconcile loop, a compliance check) keeps the schedule: were
            # the period to restart each time, a key enabled more often than it is due never rotates.
            return self
        return replace(
            self,
            rotation_enabled=True,
            rotation_period_days=period,
            next_rotation_date=now + timedelta(days=period),
        )

    def rotation_resumed(self, now: datetime) -> Key:
        """The key enabled again: a rotation that fell due while it could not rotate happens at
        once, and the period runs from then, not once for each period missed (rotate-keys,
        "Disabled keys")."""
        if self.next_rotation_date is not None and self.next_rotation_date < now:
            return replace(self, next_rotation_date=now)
        return self

    def rotated(self, material: KeyMaterial, now: datetime) -> Key:
        """Add `material` as the new current version; old versions stay for decryption."""
        on_demand = self.on_demand_rotations + (material.rotation_type == "ON_DEMAND")
        next_date = self.next_rotation_date
        if self.rotation_enabled and material.rotation_type == "AUTOMATIC":
            next_date = now + timedelta(days=self.rotation_period_days or DEFAULT_ROTATION_PERIOD_DAYS)
        return replace(
            self,
            materials=(*self.materials, material),
            on_demand_rotations=on_demand,
            next_rotation_date=next_date,
        )

    def with_tags(self, tags: dict[str, str]) -> Key:
        return replace(self, tags=tuple(tags.items()))
