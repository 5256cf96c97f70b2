"""Keys, aliases and grants as JSON documents for a store; key material sealed on the way out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

import orjson

from keytrail.kms.identifiers import key_arn
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.model import KeyManager, KeySpec, KeyState, KeyUsage, Origin
from keytrail.kms.sealing import AUTHENTICATED_SEAL, RootKey
from keytrail.kms.store import Alias, Grant

__all__ = ["alias_from_doc", "alias_to_doc", "forget_sealed", "grant_from_doc", "grant_to_doc", "key_from_doc",
           "key_to_doc", "retain_sealed"]

_ENUMS: dict[str, Any] = {
    "key_spec": KeySpec, "key_usage": KeyUsage, "origin": Origin, "key_manager": KeyManager,
    "state": KeyState,
}
# Each enum's members by value: a dict lookup, not the enum's call, for each of a store's keys as it opens.
_MEMBERS: dict[str, dict[Any, Any]] = {name: {member.value: member for member in enum} for name, enum in _ENUMS.items()}
_DATES = ("creation_date", "deletion_date", "next_rotation_date", "created", "valid_to", "last_updated_date")


def _date_out(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _date_in(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _material_binding(arn: str, material_id: str, legacy: bool) -> str:
    """Where a sealed material version belongs. Since documents carry a MAC (authentic_docs.py) the
    binding also says so: material sealed since cannot pass for an old store's once its document's
    MAC is stripped, which is what keeps a stripped store from being taken for an old one."""
    return f"{arn}#{material_id}" + ("" if legacy else AUTHENTICATED_SEAL)


def _material_to_doc(key: Key, material: KeyMaterial, root: RootKey) -> dict[str, Any]:
    return {
        "material_id": material.material_id,
        "sealed": root.seal_text(material.secret, _material_binding(key.arn, material.material_id, False), reuse=True),
        "created": _date_out(material.created),
        "rotation_type": material.rotation_type,
        "valid_to": _date_out(material.valid_to),
        "handle": material.handle,
        "pending": material.pending,
        "imported": material.imported,
        "description": material.description,
    }


def retain_sealed(keys: Iterable[Key], root: RootKey) -> None:
    """Let `root` keep, of the sealed values it keeps for writing material again, those of `keys`
    alone: every key of a store other nodes share, some deleted by them since `root` kept theirs."""
    root.retain({binding for key in keys for binding in _sealed_bindings(key)})


def forget_sealed(key: Key, root: RootKey) -> None:
    """Let `root` drop the sealed values it keeps for writing `key`'s material again: it is deleted."""
    root.forget(*_sealed_bindings(key))


def _sealed_bindings(key: Key) -> list[str]:
    """The bindings `_material_to_doc` seals `key`'s material versions under."""
    return [_material_binding(key.arn, material.material_id, False) for material in key.materials]


def _material_from_doc(arn: str, doc: dict[str, Any], root: RootKey, legacy: bool) -> KeyMaterial:
    secret = root.unseal_text(doc["sealed"], _material_binding(arn, doc["material_id"], legacy), remember=not legacy)
    return KeyMaterial(
        material_id=doc["material_id"],
        secret=secret,
        created=_date_in(doc["created"]),  # type: ignore[arg-type]
        rotation_type=doc.get("rotation_type"),
        valid_to=_date_in(doc.get("valid_to")),
        handle=doc.get("handle"),
        pending=doc.get("pending", False),  # absent from documents written before rotation of imports
        imported=doc.get("imported", True),
        description=doc.get("description"),
    )


def key_to_doc(key: Key, root: RootKey) -> str:
    doc: dict[str, Any] = {}
    for item in fields(Key):
        value = getattr(key, item.name)
        if item.name == "materials":
            value = [_material_to_doc(key, m, root) for m in key.materials]
        elif item.name in _DATES:
            value = _date_out(value)
        elif item.name in ("tags", "replica_regions"):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        doc[item.name] = value
    return json.dumps(doc, separators=(",", ":"))


def key_from_doc(text: str, root: RootKey, *, legacy: bool = False) -> Key:
    """The key a document holds; `legacy`: written before documents carried a MAC (its material
    sealed under the bindings of then)."""
    doc = _load(text)
    materials = doc.pop("materials")
    for name, members in _MEMBERS.items():
        value = doc[name]
        doc[name] = members.get(value) or _ENUMS[name](value)  # the enum's own error for a value it lacks
    for name in _DATES:
        if name in doc:
            doc[name] = _date_in(doc[name])
    doc["tags"] = tuple((k, v) for k, v in doc["tags"])
    doc["replica_regions"] = tuple(doc["replica_regions"])
    arn = key_arn(doc["region"], doc["account"], doc["key_id"])  # `Key.arn`, before there is a Key
    return Key(**doc, materials=tuple(_material_from_doc(arn, m, root, legacy) for m in materials))


def _load(text: str) -> Any:
    """A document's JSON: orjson, several times faster as a store of many keys opens; `json` for what
    orjson refuses and it reads (an escaped lone surrogate, which `json.dumps` writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def alias_to_doc(alias: Alias) -> str:
    doc = asdict(alias)
    for name in _DATES:
        if name in doc:
            doc[name] = _date_out(doc[name])
    return json.dumps(doc)


def alias_from_doc(text: str) -> Alias:
    doc = _load(text)
    for name in _DATES:
        if name in doc:
            doc[name] = _date_in(doc[name])
    return Alias(**doc)


def grant_to_doc(grant: Grant) -> str:
    doc = asdict(grant)
    doc["creation_date"] = _date_out(grant.creation_date)
    return json.dumps(doc)


def grant_from_doc(text: str) -> Grant:
    doc = _load(text)
    doc["creation_date"] = _date_in(doc["creation_date"])
    doc["operations"] = tuple(doc["operations"])
    return Grant(**doc)
