"""Custom key stores on a PKCS#11 HSM (SoftHSM2, initialised here) through boto3 against a live
`keytrail serve`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.kms.ciphertext import FORMAT_V1, FORMAT_V2, FORMAT_V3
from tests.integration.keystores.conftest import PIN
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer
from tests.support.softhsm import SoftHsm, copy_token, softhsm_token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hsm_server(hsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeytrailServer]:
    running = KeytrailServer(tmp_path_factory.mktemp("hsm-server") / "data").start()  # inherits hsm.env
    yield running
    if running.proc is not None:
        running.stop()


@pytest.fixture
def kms(hsm_server: KeytrailServer) -> Any:
    return hsm_server.client("alice")


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def _state(kms: Any, store_id: str) -> dict[str, Any]:
    return kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]  # type: ignore[no-any-return]


def _store(kms: Any, trust_anchor: str, cluster: str, name: str | None = None, password: str = PIN) -> str:
    return str(
        kms.create_custom_key_store(
            CustomKeyStoreName=name or f"store-{os.urandom(4).hex()}",
            CloudHsmClusterId=cluster,
            TrustAnchorCertificate=trust_anchor,
            KeyStorePassword=password,
        )["CustomKeyStoreId"]
    )


def _connected_store(kms: Any, trust_anchor: str, cluster: str) -> str:
    store_id = _store(kms, trust_anchor, cluster)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert _state(kms, store_id)["ConnectionState"] == "CONNECTED"
    return store_id


def _hsm_key(kms: Any, store_id: str) -> dict[str, Any]:
    return kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)["KeyMetadata"]  # type: ignore[no-any-return]


@contextmanager
def _token_session(hsm: SoftHsm, cluster: str) -> Iterator[Any]:
    """A session on the token from this test process, logged in as the token's user."""
    import pkcs11

    token = pkcs11.lib(hsm.module).get_token(token_label=cluster)
    with token.open(user_pin=hsm.user_pin) as session:
        yield session


def _token_key(hsm: SoftHsm, cluster: str, label: str) -> dict[str, Any]:
    """Read the backing key's attributes straight from the token."""
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeSensitive

    with _token_session(hsm, cluster) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        found = {
            name: key[attr]
            for name, attr in (
                ("extractable", Attribute.EXTRACTABLE),
                ("sensitive", Attribute.SENSITIVE),
                ("never_extractable", Attribute.NEVER_EXTRACTABLE),
                ("value_len", Attribute.VALUE_LEN),
                ("derive", Attribute.DERIVE),
                ("sign", Attribute.SIGN),
                ("wrap", Attribute.WRAP),
            )
        }
        try:
            key[Attribute.VALUE]
            found["value_readable"] = True
        except AttributeSensitive:
            found["value_readable"] = False
    return found


def _decrypt_in_token(hsm: SoftHsm, cluster: str, key_id: str, blob: bytes) -> bytes:
    """Open a format 3 blob (ciphertext.py's layout, no context) in the token, from this process: a
    key derived there from the token's key and the blob's salt, as kms/hsm_derivation.py says."""
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.mechanisms import GCMParams

    header_len = 1 + 12 + 1 + len(key_id) + 32
    header, salt = blob[:header_len], blob[header_len : header_len + 11]
    nonce, body = blob[header_len + 11 : header_len + 23], blob[header_len + 23 :]
    with _token_session(hsm, cluster) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        derived = key.derive_key(
            KeyType.AES, 256, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
            mechanism_param=b"\x01" + salt + bytes(4) + b"\x02" + salt + bytes(4),
            template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        return bytes(
            derived.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, header, 128))
        )


def test_new_store_is_disconnected_and_refuses_keys(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    cluster = next(clusters)
    store_id = _store(kms, trust_anchor, cluster)
    entry = _state(kms, store_id)
    assert entry["ConnectionState"] == "DISCONNECTED"
    assert (entry["CloudHsmClusterId"], entry["CustomKeyStoreType"]) == (cluster, "AWS_CLOUDHSM")
    assert entry["TrustAnchorCertificate"] == trust_anchor and "KeyStorePassword" not in entry
    with pytest.raises(ClientError) as excinfo:
        _hsm_key(kms, store_id)
    assert _error(excinfo) == "CustomKeyStoreInvalidStateException"


def test_key_is_generated_in_the_hsm_and_never_extractable(
    kms: Any, trust_anchor: str, hsm: SoftHsm, clusters: Iterator[str]
) -> None:
    cluster = next(clusters)
    store_id = _connected_store(kms, trust_anchor, cluster)
    meta = _hsm_key(kms, store_id)
    assert (meta["Origin"], meta["CustomKeyStoreId"], meta["CloudHsmClusterId"]) == (
        "AWS_CLOUDHSM",
        store_id,
        cluster,
    )
    assert meta["KeyState"] == "Enabled"
    # CurrentKeyMaterialId "is present for symmetric encryption keys with AWS_KMS origin and
    # single-Region, symmetric encryption keys with EXTERNAL origin", the keys that rotate.
    assert "CurrentKeyMaterialId" not in meta
    assert "CurrentKeyMaterialId" not in kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert _token_key(hsm, cluster, meta["KeyId"]) == {
        "extractable": False,
        "sensitive": True,
        "never_extractable": True,
        "value_len": 32,
        "derive": True,  # format 3's keys are derived from it, in the token
        "sign": False,
        "wrap": False,
        "value_readable": False,
    }


def test_crypto_runs_inside_the_hsm(
    kms: Any, trust_anchor: str, hsm: SoftHsm, clusters: Iterator[str]
) -> None:
    cluster = next(clusters)
    key_id = _hsm_key(kms, _connected_store(kms, trust_anchor, cluster))["KeyId"]
    plain_blob = kms.encrypt(KeyId=key_id, Plaintext=b"token key")["CiphertextBlob"]
    assert _decrypt_in_token(hsm, cluster, key_id, plain_blob) == b"token key"
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"in the HSM", EncryptionContext={"k": "v"})["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})["Plaintext"] == b"in the HSM"
    with pytest.raises(ClientError) as excinfo:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "w"})
    assert _error(excinfo) == "InvalidCiphertextException"
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]


def test_an_hsm_key_opens_only_the_blob_formats_it_writes(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # HSM keys write format 3 (a salt for a key the token derives, then a nonce); the same bytes
    # labelled format 2 (a salt for HKDF over a secret the token never gives out) or format 1 (a nonce
    # under the token's key itself) are refused, not read with the wrong layout.
    key_id = _hsm_key(kms, _connected_store(kms, trust_anchor, next(clusters)))["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"in the HSM")["CiphertextBlob"]
    assert blob[0] == FORMAT_V3
    for form in (FORMAT_V2, FORMAT_V1):
        with pytest.raises(ClientError) as excinfo:
            kms.decrypt(CiphertextBlob=bytes([form]) + blob[1:])
        assert _error(excinfo) == "InvalidCiphertextException"


def test_disconnected_store_makes_keys_unavailable_until_reconnected(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    store_id = _connected_store(kms, trust_anchor, next(clusters))
    key_id, cancelled = _hsm_key(kms, store_id)["KeyId"], _hsm_key(kms, store_id)["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert _state(kms, store_id)["ConnectionState"] == "DISCONNECTED"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Unavailable"
    # Pending deletion stays so while disconnected; a deletion cancelled then leaves the key Unavailable
    # (Disabled once the store is connected again), not Disabled, which EnableKey would make Enabled.
    kms.schedule_key_deletion(KeyId=cancelled, PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=cancelled)
    kms.enable_key(KeyId=cancelled)
    assert kms.describe_key(KeyId=cancelled)["KeyMetadata"]["KeyState"] == "Unavailable"
    for call in (lambda: kms.encrypt(KeyId=key_id, Plaintext=b"x"), lambda: kms.decrypt(CiphertextBlob=blob)):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert _error(excinfo) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as excinfo:
        kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert _error(excinfo) == "CustomKeyStoreHasCMKsException"
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
    assert kms.describe_key(KeyId=cancelled)["KeyMetadata"]["KeyState"] == "Enabled"


def test_wrong_password_fails_until_updated_while_disconnected(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    store_id = _store(kms, trust_anchor, next(clusters), password="not-the-pin")
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    entry = _state(kms, store_id)
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "INVALID_CREDENTIALS")
    with pytest.raises(ClientError) as excinfo:
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert _error(excinfo) == "CustomKeyStoreInvalidStateException"
    with pytest.raises(ClientError) as excinfo:
        kms.update_custom_key_store(CustomKeyStoreId=store_id, KeyStorePassword=PIN)
    assert _error(excinfo) == "CustomKeyStoreInvalidStateException"
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    kms.update_custom_key_store(CustomKeyStoreId=store_id, KeyStorePassword=PIN)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert _state(kms, store_id)["ConnectionState"] == "CONNECTED"


def test_a_failed_store_is_renamed_only_once_disconnected(
    hsm_server: KeytrailServer, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # The API reference: the name of a CloudHSM key store can be updated "when it is in the CONNECTED
    # or DISCONNECTED state"; in any other, UpdateCustomKeyStore is CustomKeyStoreInvalidStateException.
    # A FAILED store was renamed all the same.
    kms = hsm_server.client("alice", region="ca-central-1")  # a Region of its own: 10 stores per Region
    store_id = _store(kms, trust_anchor, next(clusters), password="not-the-pin")
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    name = _state(kms, store_id)["CustomKeyStoreName"]
    with pytest.raises(ClientError) as excinfo:
        kms.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName=name + "-renamed")
    assert (_error(excinfo), excinfo.value.response["Error"]["Message"]) == (
        "CustomKeyStoreInvalidStateException",
        f"UpdateCustomKeyStore is not valid for custom key store {store_id} in ConnectionState FAILED.",
    )
    assert _state(kms, store_id)["CustomKeyStoreName"] == name
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    kms.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName=name + "-renamed")
    assert _state(kms, store_id)["CustomKeyStoreName"] == name + "-renamed"


def test_store_names_clusters_and_anchors_are_checked(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    name = f"named-{os.urandom(4).hex()}"
    used, free = next(clusters), next(clusters)
    store_id = _store(kms, trust_anchor, used, name=name)
    checks = {
        "CustomKeyStoreNameInUseException": dict(CloudHsmClusterId=free, CustomKeyStoreName=name),
        "CloudHsmClusterInUseException": dict(CloudHsmClusterId=used, CustomKeyStoreName="x0"),
        "CloudHsmClusterNotFoundException": dict(
            CloudHsmClusterId="cluster-nosuchtokenab", CustomKeyStoreName="x1"
        ),
        "IncorrectTrustAnchorException": dict(
            CloudHsmClusterId=free, CustomKeyStoreName="x2", TrustAnchorCertificate="not a certificate"
        ),
    }
    for code, params in checks.items():
        with pytest.raises(ClientError) as excinfo:
            kms.create_custom_key_store(
                **{"TrustAnchorCertificate": trust_anchor, "KeyStorePassword": PIN, **params}
            )
        assert _error(excinfo) == code
    kms.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName=name + "-renamed")
    assert _state(kms, store_id)["CustomKeyStoreName"] == name + "-renamed"
    with pytest.raises(ClientError) as excinfo:
        kms.describe_custom_key_stores(CustomKeyStoreId="cks-00000000000000000")
    assert _error(excinfo) == "CustomKeyStoreNotFoundException"



XKS_MEMBERS = {
    "XksProxyUriEndpoint": "https://xks.example.com", "XksProxyUriPath": "/example/kms/xks/v1",
    "XksProxyVpcEndpointServiceName": "com.amazonaws.vpce.us-east-1.vpce-svc-example",
    "XksProxyVpcEndpointServiceOwner": "111122223333",
    "XksProxyAuthenticationCredential": {"AccessKeyId": "ABCDEFGHIJKLMNOPQRST",
                                         "RawSecretAccessKey": "XksProxySecretNotToBeShown0000000000000000000"},
    "XksProxyConnectivity": "PUBLIC_ENDPOINT",
}  # in the model's order


def test_external_key_store_members_of_a_cloudhsm_store_are_refused(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # The model: each Xks* member is for EXTERNAL_KEY_STORE stores ("required for", and for
    # UpdateCustomKeyStore "valid only for"); they were dropped, the store made or changed as if
    # they were not there.
    cluster = next(clusters)
    hsm_members = {"CloudHsmClusterId": cluster, "TrustAnchorCertificate": trust_anchor, "KeyStorePassword": PIN}
    for member, value in XKS_MEMBERS.items():
        name = f"xks-{os.urandom(4).hex()}"
        code, message, status = aws_error(kms.create_custom_key_store, CustomKeyStoreName=name,
                                          **hsm_members, **{member: value})
        assert (code, message, status) == (
            "ValidationException", f"{member} is valid only when CustomKeyStoreType is EXTERNAL_KEY_STORE, "
            "not AWS_CLOUDHSM.", 400)
        assert "XksProxySecret" not in message
        assert aws_error(kms.describe_custom_key_stores, CustomKeyStoreName=name)[0] == (
            "CustomKeyStoreNotFoundException")
    store_id = _store(kms, trust_anchor, cluster)
    code, message, _ = aws_error(kms.update_custom_key_store, CustomKeyStoreId=store_id, **XKS_MEMBERS)
    assert (code, message) == ("ValidationException", ", ".join(XKS_MEMBERS) + " are valid only when "
                               "CustomKeyStoreType is EXTERNAL_KEY_STORE, not AWS_CLOUDHSM.")
    assert "XksProxyConfiguration" not in _state(kms, store_id)
    kms.delete_custom_key_store(CustomKeyStoreId=store_id)  # the module's server keeps 10 stores an account
    # CloudHSM members on a request for an external key store: refused for them, not only for the type
    code, message, _ = aws_error(kms.create_custom_key_store, CustomKeyStoreName="external",
                                 CustomKeyStoreType="EXTERNAL_KEY_STORE", CloudHsmClusterId=next(clusters),
                                 **XKS_MEMBERS)
    assert (code, message) == ("ValidationException",
                               "CloudHsmClusterId is valid only when CustomKeyStoreType is AWS_CLOUDHSM, "
                               "not EXTERNAL_KEY_STORE.")
    assert aws_error(kms.create_custom_key_store, CustomKeyStoreName="external",
                     CustomKeyStoreType="EXTERNAL_KEY_STORE", **XKS_MEMBERS)[:2] == (
        "UnsupportedOperationException", "Only AWS_CLOUDHSM custom key stores are supported.")

IN_USE = (
    "The request was rejected because the specified CloudHSM cluster is already associated with a custom key store "
    "or it shares a backup history with a cluster that is associated with a custom key store. Each custom key store "
    "must be associated with a different CloudHSM cluster."
)


def test_a_cluster_another_account_uses_is_refused_until_its_store_is_deleted(
    hsm_server: KeytrailServer, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # The node's tokens serve every account: another account's store on one would share its login,
    # and its Disconnect would log the first store out.
    alice, carol = hsm_server.client("alice"), hsm_server.client("carol")
    taken, free = next(clusters), next(clusters)
    alices = _store(alice, trust_anchor, taken)
    with pytest.raises(ClientError) as excinfo:
        _store(carol, trust_anchor, taken)
    assert (_error(excinfo), excinfo.value.response["Error"]["Message"]) == ("CloudHsmClusterInUseException", IN_USE)
    assert carol.describe_custom_key_stores()["CustomKeyStores"] == []
    carols = _store(carol, trust_anchor, free)
    with pytest.raises(ClientError) as excinfo:
        carol.update_custom_key_store(CustomKeyStoreId=carols, CloudHsmClusterId=taken)
    assert _error(excinfo) == "CloudHsmClusterInUseException"
    assert _state(carol, carols)["CloudHsmClusterId"] == free
    alice.delete_custom_key_store(CustomKeyStoreId=alices)
    carol.update_custom_key_store(CustomKeyStoreId=carols, CloudHsmClusterId=taken)
    assert _state(carol, carols)["CloudHsmClusterId"] == taken
    with pytest.raises(ClientError) as excinfo:
        _store(alice, trust_anchor, taken)
    assert _error(excinfo) == "CloudHsmClusterInUseException"


def test_delete_store_only_when_disconnected(kms: Any, trust_anchor: str, clusters: Iterator[str]) -> None:
    store_id = _connected_store(kms, trust_anchor, next(clusters))
    with pytest.raises(ClientError) as excinfo:
        kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert _error(excinfo) == "CustomKeyStoreInvalidStateException"
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    with pytest.raises(ClientError) as excinfo:  # as AWS: nothing left to disconnect
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert (_error(excinfo), excinfo.value.response["Error"]["Message"]) == (
        "CustomKeyStoreInvalidStateException",
        f"DisconnectCustomKeyStore is not valid for custom key store {store_id} in ConnectionState DISCONNECTED.",
    )
    kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    with pytest.raises(ClientError) as excinfo:
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert _error(excinfo) == "CustomKeyStoreNotFoundException"


def _token_labels(hsm: SoftHsm, cluster: str) -> set[str]:
    """The labels (KMS key ids) of the token's backing keys, as its logged-in user sees them."""
    from pkcs11 import Attribute, ObjectClass

    with _token_session(hsm, cluster) as session:
        found = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True})
        return {str(key.label) for key in found}


def test_a_deleted_hsm_key_leaves_no_backing_key_in_a_connected_store(
    hsm: SoftHsm, hsm_server: KeytrailServer, kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # AWS, "Scheduling deletion of KMS keys from an AWS CloudHSM key store": when the waiting period
    # expires, KMS makes a best effort to delete the key material from the cluster; one it cannot
    # delete (the store disconnected) is left for you to delete.
    cluster = next(clusters)
    store_id = _connected_store(kms, trust_anchor, cluster)
    kept, deleted = _hsm_key(kms, store_id)["KeyId"], _hsm_key(kms, store_id)["KeyId"]
    kms.schedule_key_deletion(KeyId=deleted, PendingWindowInDays=7)
    assert _token_labels(hsm, cluster) == {kept, deleted}  # CancelKeyDeletion would give it back whole
    hsm_server.advance(8 * 86400)
    with pytest.raises(ClientError) as excinfo:
        kms.describe_key(KeyId=deleted)
    assert _error(excinfo) == "NotFoundException"
    assert _token_labels(hsm, cluster) == {kept}
    kms.schedule_key_deletion(KeyId=kept, PendingWindowInDays=7)
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    hsm_server.advance(8 * 86400)
    with pytest.raises(ClientError) as excinfo:
        kms.describe_key(KeyId=kept)
    assert _error(excinfo) == "NotFoundException"
    assert _token_labels(hsm, cluster) == {kept}
    assert f"(label {kept}) was the backing key of a deleted KMS key" in hsm_server.log.read_text()
    kms.delete_custom_key_store(CustomKeyStoreId=store_id)


def test_hsm_keys_are_single_region_symmetric_and_make_no_data_key_pairs(
    kms: Any, trust_anchor: str, clusters: Iterator[str]
) -> None:
    store_id = _connected_store(kms, trust_anchor, next(clusters))
    for params in ({"MultiRegion": True}, {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}):
        with pytest.raises(ClientError) as excinfo:
            kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id, **params)
        assert _error(excinfo) == "UnsupportedOperationException"
    # AWS: the operations that generate data key pairs "are not supported in custom key stores"
    # (developer guide, KMS keys in a CloudHSM key store); the model lists UnsupportedOperationException.
    key = _hsm_key(kms, store_id)
    for call in (kms.generate_data_key_pair, kms.generate_data_key_pair_without_plaintext):
        with pytest.raises(ClientError) as excinfo:
            call(KeyId=key["KeyId"], KeyPairSpec="ECC_NIST_P256")
        assert excinfo.value.response["Error"] == {
            "Code": "UnsupportedOperationException",
            "Message": f"{key['Arn']} origin is AWS_CLOUDHSM which is not valid for {excinfo.value.operation_name}.",
        }


def test_connected_store_serves_again_after_restart(
    hsm_server: KeytrailServer, hsm: SoftHsm, trust_anchor: str, clusters: Iterator[str]
) -> None:
    kms = hsm_server.client("alice")
    key_id = _hsm_key(kms, _connected_store(kms, trust_anchor, next(clusters)))["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"survives restarts")["CiphertextBlob"]
    hsm_server.stop()
    stored = b"".join(p.read_bytes() for p in Path(hsm_server.data_dir).rglob("*") if p.is_file())
    assert PIN.encode() not in stored  # the key store password is sealed at rest
    hsm_server.start()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"survives restarts"


def test_generate_random_in_a_custom_key_store(kms: Any, trust_anchor: str, clusters: Iterator[str]) -> None:
    # GenerateRandom with CustomKeyStoreId draws from that store's HSM: it must exist and be connected.
    with pytest.raises(ClientError) as excinfo:
        kms.generate_random(NumberOfBytes=16, CustomKeyStoreId="cks-0123456789abcdef0")
    assert _error(excinfo) == "CustomKeyStoreNotFoundException"
    store_id = _store(kms, trust_anchor, next(clusters))
    with pytest.raises(ClientError) as excinfo:
        kms.generate_random(NumberOfBytes=16, CustomKeyStoreId=store_id)
    assert _error(excinfo) == "CustomKeyStoreInvalidStateException"
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    first = kms.generate_random(NumberOfBytes=1024, CustomKeyStoreId=store_id)["Plaintext"]
    second = kms.generate_random(NumberOfBytes=1024, CustomKeyStoreId=store_id)["Plaintext"]
    assert len(first) == len(second) == 1024 and first != second


def test_a_caller_denied_store_actions_is_denied_whatever_the_store_id(
    hsm_server: KeytrailServer, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # IAM-only actions (resource "*"): AWS authorizes them before looking at the id, so bob, whom no
    # policy allows them, is denied alike for a store of his account and an id no store has. They
    # answered CustomKeyStoreNotFoundException for the second: which ids exist, to a denied caller.
    region = "ap-southeast-2"  # a Region of its own: 10 stores per Region
    store_id = _store(hsm_server.client("alice", region=region), trust_anchor, next(clusters))
    bob = hsm_server.client("bob", region=region)
    calls = {
        "ConnectCustomKeyStore": lambda i: bob.connect_custom_key_store(CustomKeyStoreId=i),
        "DisconnectCustomKeyStore": lambda i: bob.disconnect_custom_key_store(CustomKeyStoreId=i),
        "UpdateCustomKeyStore": lambda i: bob.update_custom_key_store(CustomKeyStoreId=i, NewCustomKeyStoreName="x"),
        "DeleteCustomKeyStore": lambda i: bob.delete_custom_key_store(CustomKeyStoreId=i),
    }
    for operation, request in calls.items():
        for candidate in (store_id, "cks-0123456789abcdef0"):
            with pytest.raises(ClientError) as excinfo:
                request(candidate)
            assert _error(excinfo) == "AccessDeniedException", (operation, candidate)
            assert f"kms:{operation} on resource: *" in excinfo.value.response["Error"]["Message"]


def test_hsm_that_refuses_login_answers_aws_errors(
    hsm_server: KeytrailServer, hsm: SoftHsm, trust_anchor: str, clusters: Iterator[str]
) -> None:
    # The token's PIN changed outside keytrail: after a restart the store is still CONNECTED, but
    # logging in to its token fails. Every call that needs the HSM answers the error AWS documents
    # for it (CreateKey and GenerateRandom: the store's; crypto: the key's), never a 500.
    import pkcs11

    kms = hsm_server.client("alice", region="eu-west-1")  # a Region of its own: 10 stores per Region
    cluster = next(clusters)
    store_id = _connected_store(kms, trust_anchor, cluster)
    key_id = _hsm_key(kms, store_id)["KeyId"]
    hsm_server.stop()
    token = pkcs11.lib(hsm.module).get_token(token_label=cluster)
    with token.open(rw=True, user_pin=PIN) as session:
        session.set_pin(PIN, "changed-outside-keytrail")
    hsm_server.start()
    expected = {
        "CustomKeyStoreInvalidStateException": (
            lambda: _hsm_key(kms, store_id),
            lambda: kms.generate_random(NumberOfBytes=16, CustomKeyStoreId=store_id),
        ),
        "KMSInvalidStateException": (lambda: kms.encrypt(KeyId=key_id, Plaintext=b"x"),),
    }
    for code, calls in expected.items():
        for call in calls:
            with pytest.raises(ClientError) as excinfo:
                call()
            assert _error(excinfo) == code


def test_hsm_token_removed_under_a_live_session_answers_aws_errors(
    hsm: SoftHsm, trust_anchor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store stays CONNECTED with its session open, but the token behind it is gone: the
    # PKCS#11 calls themselves fail, and the calls answer as when the login fails.
    # Its own token directory and server: SoftHSM2 answers CKR_GENERAL_ERROR for a deleted token's
    # slot for as long as the process runs (test_custom_key_store_token_lookup.py).
    import subprocess

    cluster, other = "cluster-keytrailgone", "cluster-keytrailnext"
    tokens = [softhsm_token(tmp_path / "softhsm", label, PIN, hsm.module) for label in (cluster, other)]
    monkeypatch.setenv("SOFTHSM2_CONF", str(tokens[0].conf))  # for the server; this process never reads it
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client("alice")
        store_id = _connected_store(kms, trust_anchor, cluster)
        key_id = _hsm_key(kms, store_id)["KeyId"]
        subprocess.run(
            ["softhsm2-util", "--delete-token", "--token", cluster],
            check=True, capture_output=True, env={**os.environ, **tokens[0].env},
        )
        with pytest.raises(ClientError) as excinfo:
            _hsm_key(kms, store_id)
        assert _error(excinfo) == "CustomKeyStoreInvalidStateException"
        with pytest.raises(ClientError) as excinfo:
            kms.encrypt(KeyId=key_id, Plaintext=b"x")
        assert _error(excinfo) == "KMSInvalidStateException"
        # The deleted token's slot failed every token lookup of the node (CKR_GENERAL_ERROR), so a new
        # store on another token answered CloudHsmClusterNotActiveException until a restart.
        _store(kms, trust_anchor, other)
    finally:
        server.stop()


NOT_RELATED = (
    "The request was rejected because the specified CloudHSM cluster has a different cluster certificate than the "
    "original cluster. You cannot use the operation to specify an unrelated cluster for an CloudHSM key store."
)


def test_a_store_with_keys_moves_only_to_a_copy_of_its_token(
    hsm: SoftHsm, trust_anchor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS takes only a related cluster (one sharing the original's backup history): here a token
    # that holds the store's backing keys, as a copy of its token does. Another token answered {},
    # and once connected every Encrypt and Decrypt of the store's keys was KMSInvalidStateException.
    # Its own token directory and server: SoftHSM2 sees a copied token only in a process started after.
    original, copy, unrelated = "cluster-keytrailorig", "cluster-keytrailcopy", "cluster-keytrailelse"
    tokens = [softhsm_token(tmp_path / "softhsm", label, PIN, hsm.module) for label in (original, unrelated)]
    monkeypatch.setenv("SOFTHSM2_CONF", str(tokens[0].conf))  # for the server; this process never reads it
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client("alice")
        store_id = _connected_store(kms, trust_anchor, original)
        key_id = _hsm_key(kms, store_id)["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"made on the original")["CiphertextBlob"]
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        server.stop()
        copy_token(tokens[0], original, copy)  # the HSM restored from a backup of the original
        server.start()
        with pytest.raises(ClientError) as excinfo:
            kms.update_custom_key_store(CustomKeyStoreId=store_id, CloudHsmClusterId=unrelated)
        assert (_error(excinfo), excinfo.value.response["Error"]["Message"]) == (
            "CloudHsmClusterNotRelatedException", NOT_RELATED
        )
        assert _state(kms, store_id)["CloudHsmClusterId"] == original
        kms.update_custom_key_store(CustomKeyStoreId=store_id, CloudHsmClusterId=copy)
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert (_state(kms, store_id)["CloudHsmClusterId"], _state(kms, store_id)["ConnectionState"]) == (
            copy, "CONNECTED"
        )
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"made on the original"
        again = kms.encrypt(KeyId=key_id, Plaintext=b"made on the copy")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=again)["Plaintext"] == b"made on the copy"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        # A store without keys moves to any free token: the original, which holds none of its keys.
        keyless = _store(kms, trust_anchor, unrelated)
        kms.update_custom_key_store(CustomKeyStoreId=keyless, CloudHsmClusterId=original)
        assert _state(kms, keyless)["CloudHsmClusterId"] == original
    finally:
        server.stop()


def _hsm_failed_calls(server: KeytrailServer) -> dict[str, int]:
    """Store id → calls its HSM could not serve, from GET /metrics."""
    found = re.findall(r'^keytrail_custom_key_store_failed_calls_total\{store="([^"]+)"\} (\d+)$',
                       server.get("/metrics")[1].decode(), flags=re.M)
    return {store: int(n) for store, n in found}


def test_metrics_count_the_calls_a_connected_store_s_removed_token_could_not_serve(
    hsm: SoftHsm, trust_anchor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stays CONNECTED and its calls answer KMSInvalidStateException, as a disabled key's
    do; the log says it once: /metrics counts them per store, for KeytrailCustomKeyStoreFailing."""
    import subprocess

    cluster = "cluster-keytrailmetr"
    token = softhsm_token(tmp_path / "softhsm", cluster, PIN, hsm.module)
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf))  # for the server; this process never reads it
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client("alice")
        store_id = _connected_store(kms, trust_anchor, cluster)
        key_id = _hsm_key(kms, store_id)["KeyId"]
        kms.encrypt(KeyId=key_id, Plaintext=b"served")
        assert _hsm_failed_calls(server) == {}
        subprocess.run(["softhsm2-util", "--delete-token", "--token", cluster],
                       check=True, capture_output=True, env={**os.environ, **token.env})
        for _ in range(3):
            with pytest.raises(ClientError) as excinfo:
                kms.encrypt(KeyId=key_id, Plaintext=b"x")
            assert _error(excinfo) == "KMSInvalidStateException"
        assert _state(kms, store_id)["ConnectionState"] == "CONNECTED"
        assert _hsm_failed_calls(server) == {store_id: 3}
    finally:
        server.stop()
