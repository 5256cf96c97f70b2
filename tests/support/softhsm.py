"""A SoftHSM2 token of the test suite's own, in a temporary directory (SOFTHSM2_CONF)."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SoftHsm", "copy_token", "open_sessions", "softhsm_module", "softhsm_token", "token_keys"]

_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def softhsm_module() -> str | None:
    """The SoftHSM2 PKCS#11 module, if the `softhsm2` package is installed."""
    if shutil.which("softhsm2-util") is None:
        return None
    return next((path for path in _MODULES if Path(path).exists()), None)


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path
    label: str
    user_pin: str
    so_pin: str

    @property
    def env(self) -> dict[str, str]:
        """What a keytrail process needs to reach this token."""
        return {"SOFTHSM2_CONF": str(self.conf), "KEYTRAIL_PKCS11_MODULE": self.module}


def softhsm_token(directory: Path, label: str, user_pin: str, module: str) -> SoftHsm:
    """Initialise a fresh token labelled `label` with user PIN `user_pin`."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    so_pin = "so-pin-1234"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin],
        check=True,
        capture_output=True,
        env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"},
    )
    return SoftHsm(module, conf, label, user_pin, so_pin)


# SoftHSM2's file object store (objectstore.backend = file): token.object holds a generation number, then
# each attribute as its type, its kind and its value, all integers 8-byte big-endian; these two are
# SoftHSM2's own (CKA_VENDOR_DEFINED + 0x5349, 0x534a), the token's label and serial number, kept in clear.
_TOKEN_LABEL, _TOKEN_SERIAL = 0x80005349, 0x8000534A
_BOOLEAN, _NUMBER, _BYTES = 1, 2, 3


def copy_token(hsm: SoftHsm, label: str, new_label: str) -> None:
    """Copy the token `label` of `hsm`'s token directory, objects and PINs, as the token `new_label`
    with a serial number of its own: an HSM restored from a backup of the first (a CloudHSM cluster
    that shares its backup history). A SoftHSM2 module reads its token directory once per process:
    only processes that load it after the copy see it."""
    tokens = hsm.conf.parent / "tokens"
    padded = label.encode().ljust(32)
    [source] = [d for d in tokens.iterdir() if _token_attributes(d / "token.object").get(_TOKEN_LABEL) == padded]
    copy = tokens / str(uuid.uuid4())
    shutil.copytree(source, copy)
    serial = hashlib.sha256(new_label.encode()).hexdigest()[:16].encode()
    _rewrite_token(copy / "token.object", {_TOKEN_LABEL: new_label.encode().ljust(32), _TOKEN_SERIAL: serial})


def _token_attributes(path: Path) -> dict[int, bytes]:
    """The byte-string attributes of a SoftHSM2 token.object."""
    return {kind: value for kind, value, _ in _attributes(path.read_bytes())}


def _attributes(data: bytes) -> list[tuple[int, bytes, int]]:
    """(type, value, offset of the value) of each byte-string attribute after the generation number."""
    found, offset = [], 8
    while offset < len(data):
        attribute, kind = struct.unpack_from(">QQ", data, offset)
        offset += 16
        if kind == _BOOLEAN:
            offset += 1
        elif kind == _NUMBER:
            offset += 8
        elif kind == _BYTES:
            (length,) = struct.unpack_from(">Q", data, offset)
            found.append((attribute, data[offset + 8 : offset + 8 + length], offset + 8))
            offset += 8 + length
        else:
            raise ValueError(f"token.object attribute {attribute:#x} has a kind ({kind}) this reader does not know")
    return found


def _rewrite_token(path: Path, values: dict[int, bytes]) -> None:
    """Replace byte-string attributes of a token.object with values of the same length."""
    data = bytearray(path.read_bytes())
    for attribute, value, offset in _attributes(bytes(data)):
        if attribute in values:
            assert len(values[attribute]) == len(value), attribute
            data[offset : offset + len(value)] = values[attribute]
    path.write_bytes(bytes(data))


class _SessionInfo(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_ulong), ("state", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("device_error", ctypes.c_ulong)]


def open_sessions(module: str, label: str) -> int:
    """How many sessions this process has open on the token, as the token counts them: SoftHSM2
    gives no count (C_GetTokenInfo answers CK_UNAVAILABLE_INFORMATION), so each handle up to that of
    a session opened now is asked C_GetSessionInfo (SoftHSM2 numbers sessions and objects from 1)."""
    import pkcs11

    from keytrail.kms.hsm_module import MODULE_CALLS

    library = ctypes.CDLL(module)  # the module this process loaded already: the same sessions
    with MODULE_CALLS:
        token = pkcs11.lib(module).get_token(token_label=label)
        probe: Any = token.open()  # python-pkcs11's stubs lack `handle`
        try:
            info = _SessionInfo()
            return sum(
                library.C_GetSessionInfo(ctypes.c_ulong(handle), ctypes.byref(info)) == 0
                and info.slot == token.slot.slot_id
                for handle in range(1, probe.handle)
            )
        finally:
            probe.close()



def token_keys(module: str, label: str) -> set[str]:
    """The labels (KMS key ids) of the token's secret key objects, as a session of this process sees
    them: a key service logged in to the token in this process shows its private ones too (a PKCS#11
    login belongs to the application)."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    from keytrail.kms.hsm_module import MODULE_CALLS

    with MODULE_CALLS:
        session = pkcs11.lib(module).get_token(token_label=label).open()
        try:
            found = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True})
            return {str(key.label) for key in found}
        finally:
            session.close()
