"""Encrypt throughput of an HSM-backed key (SoftHSM2 over PKCS#11) next to a key held by keytrail,
and GetParametersForImport latency per wrapping key spec. In-process (SQLite store, no HTTP, a
no-op audit sink), rounds interleaved, best round reported. Usage:

    PYTHONPATH=src:. python bench/keystores.py [--calls 5000] [--rounds 3] [--imports 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.certificates import self_signed_pem
from tests.support.softhsm import softhsm_module, softhsm_token

from keytrail.clock import ManualClock
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

ACCOUNT = "111122223333"
PIN = "bench-pin-1"


class NullSink:
    async def record(self, call: CallRecord) -> None:
        return None


async def _setup(tmp: Path) -> tuple[KmsService, CallContext, str, str]:
    store = SqliteStore(tmp / "keys.db", RootKey(os.urandom(32)))
    svc = KmsService(
        ServiceDeps(store=store, clock=ManualClock(), audit=NullSink(), authorizer=OwnAccountAuthorizer())
    )
    context = CallContext(Principal.account_root(ACCOUNT, "AKIAROOT"), "us-east-1", "r")
    software = (await svc.execute("CreateKey", context, {}))["KeyMetadata"]["KeyId"]
    store_id = (
        await svc.execute(
            "CreateCustomKeyStore",
            context,
            {
                "CustomKeyStoreName": "bench",
                "CloudHsmClusterId": "cluster-benchtokenaa",
                "TrustAnchorCertificate": self_signed_pem("bench"),
                "KeyStorePassword": PIN,
            },
        )
    )["CustomKeyStoreId"]
    await svc.execute("ConnectCustomKeyStore", context, {"CustomKeyStoreId": store_id})
    hsm = await svc.execute("CreateKey", context, {"Origin": "AWS_CLOUDHSM", "CustomKeyStoreId": store_id})
    return svc, context, software, hsm["KeyMetadata"]["KeyId"]


async def _per_second(svc: KmsService, context: CallContext, key_id: str, calls: int) -> float:
    params: dict[str, Any] = {"KeyId": key_id, "Plaintext": b"x" * 256}
    start = time.perf_counter()
    for _ in range(calls):
        await svc.execute("Encrypt", context, dict(params))
    return calls / (time.perf_counter() - start)


async def _import_latency(svc: KmsService, context: CallContext, spec: str, count: int) -> float:
    key_id = (await svc.execute("CreateKey", context, {"Origin": "EXTERNAL"}))["KeyMetadata"]["KeyId"]
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await svc.execute(
            "GetParametersForImport",
            context,
            {"KeyId": key_id, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": spec},
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(calls: int, rounds: int, imports: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc, context, software, hsm = await _setup(Path(tmp))
        results: dict[str, list[float]] = {"keytrail-held key": [], "SoftHSM2 key (PKCS#11)": []}
        for _ in range(rounds):
            results["keytrail-held key"].append(await _per_second(svc, context, software, calls))
            results["SoftHSM2 key (PKCS#11)"].append(await _per_second(svc, context, hsm, calls))
        for name, values in results.items():
            print(f"Encrypt, {name:24s} {max(values):8.0f} calls/s (best of {rounds})")
        for spec in ("RSA_2048", "RSA_3072", "RSA_4096"):
            median = await _import_latency(svc, context, spec, imports)
            print(f"GetParametersForImport {spec}: median {median * 1000:.0f} ms over {imports}")
        await svc.store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imports", type=int, default=5)
    args = parser.parse_args()
    module = softhsm_module()
    if module is None:
        raise SystemExit("SoftHSM2 is not installed (Debian package softhsm2)")
    token_dir = Path(tempfile.mkdtemp(prefix="keytrail-bench-hsm-"))
    token = softhsm_token(token_dir, "cluster-benchtokenaa", PIN, module)
    os.environ.update(token.env)
    try:
        asyncio.run(main(args.calls, args.rounds, args.imports))
    finally:
        shutil.rmtree(token_dir, ignore_errors=True)
