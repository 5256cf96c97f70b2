"""Keys that never leave a PKCS#11 HSM: token sessions, and the cipher of custom key store keys.

Any PKCS#11 v2.20+ module works (SoftHSM2, the AWS CloudHSM client SDK 5 library, YubiHSM 2's
yubihsm_pkcs11): see docs/custom-key-stores.md. Each key is an AES-256 secret key object made
inside the token with CKA_EXTRACTABLE false and CKA_SENSITIVE true; Encrypt and Decrypt run
CKM_AES_GCM inside the token over the same blob layout as `ciphertext.py`, so such a blob names
its key and material like any other and fails as one InvalidCiphertextException. Blobs are format 3,
under keys the token derives from its key (kms/hsm_derivation.py), or format 1, under the token's
key itself, where the token cannot derive them.

This module is the surface; the parts live in modules of their own:

- `hsm_module`: the PKCS#11 module, the one lock of all its calls, token lookup and login;
- `hsm_login`: C_Login and C_Logout apart from opening and closing the session, so that neither
  failing leaves the session open;
- `hsm_failures`: what a failed PKCS#11 call says about its session;
- `hsm_key_objects`: the token's key objects as one session sees them;
- `hsm_session`: one logged-in session, and the blob formats sealed and opened in it;
- `hsm_thread`: the one thread of the PKCS#11 calls, and the time each is given;
- `hsm_connections`: the live session of each store, and the AWS errors of an HSM it cannot use;
- `hsm_cipher`: the KeyCipher of keys in custom key stores;
- `hsm_derivation`: format 3's keys, derived inside the token;
- `shared_tokens`: stores that share one token (made before one token backed one store).
"""

from __future__ import annotations

from keytrail.kms.hsm_cipher import HsmCipher
from keytrail.kms.hsm_connections import HsmConnections
from keytrail.kms.hsm_module import MODULE_ENV, TOKENS_ENV, HsmError, find_token, module_path, token_label
from keytrail.kms.hsm_session import TokenSession, missing_keys, open_session

__all__ = [
    "MODULE_ENV", "TOKENS_ENV", "HsmCipher", "HsmConnections", "HsmError", "TokenSession", "find_token",
    "missing_keys", "module_path", "open_session", "token_label",
]
