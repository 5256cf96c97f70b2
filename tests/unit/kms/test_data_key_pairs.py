"""GenerateDataKeyPair's private key is the caller's: "AWS KMS does not store, manage, or track
your data key pairs" (developer guide, Generate data key pairs)."""

from __future__ import annotations

from pathlib import Path

from keytrail.kms import asymmetric
from tests.support.allow_all import alice, allow_all_service


async def test_the_service_keeps_no_private_key_of_a_data_key_pair_after_the_call(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    wrapping = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"]
    asymmetric.PRIVATE_KEYS.clear()
    for operation in ("GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"):
        for spec in ("ECC_NIST_P256", "ECC_NIST_EDWARDS25519", "ML_KEM_768"):
            pair = await service.execute(operation, alice(), {"KeyId": wrapping, "KeyPairSpec": spec})
            assert pair["PublicKey"] and pair["KeyPairSpec"] == spec
    # The parsed private keys of the service's own keys are cached; a data key pair's was, too,
    # up to 1,024 of them, and pushed the service's own keys out.
    assert len(asymmetric.PRIVATE_KEYS) == 0
