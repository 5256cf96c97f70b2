"""Opening a symmetric ciphertext blob outside keytrail, from its documented layout (kms/ciphertext.py):
what proves a key really encrypts under the material a test gave it."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from keytrail.kms.ciphertext import encode_context

__all__ = ["open_locally"]


def open_locally(material: bytes, blob: bytes, key_id: str, context: dict[str, str] | None = None) -> bytes:
    """Decrypt a format-2 blob with pyca alone: AES-256-GCM under HKDF-Expand(material, label ‖ salt)
    with the blob's nonce."""
    assert blob[0] == 0x02, "keytrail writes format 2 for keys it holds"
    header_len = 1 + 12 + 1 + len(key_id) + 32
    header, salt = blob[:header_len], blob[header_len : header_len + 32]
    nonce, body = blob[header_len + 32 : header_len + 44], blob[header_len + 44 :]
    derived = HKDFExpand(hashes.SHA256(), 32, b"keytrail ciphertext blob v2" + salt).derive(material)
    return AESGCM(derived).decrypt(nonce, body, header + encode_context(context))
