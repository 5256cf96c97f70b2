"""Token lookups of a live `keytrail serve` (boto3) whose SoftHSM2 token directory, one of the test's
own, loses a token under it: SoftHSM2 then answers C_GetTokenInfo on that token's slot with
CKR_GENERAL_ERROR for as long as the process runs, even once the token's folder is back. The node's
other tokens serve on, and the log says once, naming the slot, what brings the token back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.keystores.conftest import PIN
from tests.support.server import KeytrailServer
from tests.support.softhsm import SoftHsm, softhsm_token

pytestmark = pytest.mark.integration

_UNREADABLE = "its token cannot be read"


def _tokens(tmp_path: Path, module: str, *labels: str) -> SoftHsm:
    """Fresh tokens in a token directory of the test's own, which the server started next reads."""
    tokens = [softhsm_token(tmp_path / "softhsm", label, PIN, module) for label in labels]
    return tokens[0]


def _store(kms: Any, trust_anchor: str, cluster: str) -> str:
    return str(kms.create_custom_key_store(
        CustomKeyStoreName=f"store-{os.urandom(4).hex()}", CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN)["CustomKeyStoreId"])


def _connection(kms: Any, store_id: str) -> tuple[str, str | None]:
    [entry] = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"]
    return entry["ConnectionState"], entry.get("ConnectionErrorCode")


def _round_trip(kms: Any, store_id: str) -> bytes:
    key_id = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed in the HSM")["CiphertextBlob"]
    return kms.decrypt(CiphertextBlob=blob)["Plaintext"]  # type: ignore[no-any-return]


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def _said(server: KeytrailServer) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if _UNREADABLE in line]


def test_a_token_deleted_under_a_node_leaves_its_other_tokens_usable(
    hsm: SoftHsm, trust_anchor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every lookup walked all slots and gave up at the deleted token's (CKR_GENERAL_ERROR): Connect of
    # any store ended FAILED with INTERNAL_ERROR and CreateCustomKeyStore on a free token answered
    # CloudHsmClusterNotActiveException until a restart, with nothing in the log.
    used, gone, free = "cluster-keytrailused", "cluster-keytrailgone", "cluster-keytrailfree"
    tokens = _tokens(tmp_path, hsm.module, used, gone, free)
    monkeypatch.setenv("SOFTHSM2_CONF", str(tokens.conf))  # for the server; this process never reads it
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client()
        store_id = _store(kms, trust_anchor, used)
        subprocess.run(["softhsm2-util", "--delete-token", "--token", gone],
                       check=True, capture_output=True, env={**os.environ, **tokens.env})
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert _connection(kms, store_id) == ("CONNECTED", None)
        assert _round_trip(kms, store_id) == b"sealed in the HSM"
        _store(kms, trust_anchor, free)
        # Its slot may hold the token asked for: neither found nor known to be missing.
        with pytest.raises(ClientError) as refused:
            _store(kms, trust_anchor, gone)
        assert _error(refused) == "CloudHsmClusterNotActiveException"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    finally:
        server.stop()
    [said] = _said(server)  # once, whatever the number of lookups that met the slot
    assert "restart" in said


def _token_folder(hsm: SoftHsm, label: str) -> Path:
    """The token's folder under `directories.tokendir`: SoftHSM2 keeps its label in clear in token.object."""
    padded = label.encode().ljust(32)
    [folder] = [d for d in (hsm.conf.parent / "tokens").iterdir() if padded in (d / "token.object").read_bytes()]
    return folder


def test_a_store_whose_token_was_moved_away_and_back_serves_again_after_a_restart(
    hsm: SoftHsm, trust_anchor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The docs said such a store serves again without a reconnect once its token is back. SoftHSM2
    # reads the token again only after C_Finalize, which would end every other store's session too.
    mine, other = "cluster-keytrailmine", "cluster-keytrailelse"
    tokens = _tokens(tmp_path, hsm.module, mine, other)
    monkeypatch.setenv("SOFTHSM2_CONF", str(tokens.conf))  # for the server; this process never reads it
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client()
        store_id = _store(kms, trust_anchor, mine)
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        key_id = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"before the move")["CiphertextBlob"]
        folder = _token_folder(tokens, mine)
        away = folder.rename(folder.with_name(folder.name + ".away"))
        with pytest.raises(ClientError) as failed:  # a call while it is away: SoftHSM2 sees it gone
            kms.decrypt(CiphertextBlob=blob)
        assert _error(failed) == "KMSInvalidStateException"
        away.rename(folder)
        for _ in range(2):  # back, and still unusable: the call that drops the session, the login after it
            with pytest.raises(ClientError) as failed:
                kms.decrypt(CiphertextBlob=blob)
            assert _error(failed) == "KMSInvalidStateException"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert _connection(kms, store_id) == ("FAILED", "INTERNAL_ERROR")
        _store(kms, trust_anchor, other)  # the node's other tokens serve on
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        server.stop()
        server.start()
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert _connection(kms, store_id) == ("CONNECTED", None)
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the move"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    finally:
        if server.proc is not None:
            server.stop()
    [said] = _said(server)
    assert "restart" in said
