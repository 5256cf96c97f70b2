"""Sign throughput through a real `keytrail serve` next to the raw `cryptography` operation.

    PYTHONPATH=src:. python bench/sign_throughput.py [--calls 1500] [--rounds 3] [--concurrency 8]

For ECC_NIST_P256 (ECDSA_SHA_256), RSA_2048 (RSASSA_PSS_SHA_256) and ML_DSA_65 it creates one
key, pre-signs one Sign request with SigV4 (valid for 5 minutes, replayed), and sends it
`--calls` times over keep-alive connections; in the same round it times the raw signing
operation in this process. Rounds are interleaved and the table gives medians; the ratio is
the per-round server calls/s divided by the raw ops/s. Only loopback traffic, bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, padding, rsa
from tests.support.server import PRINCIPALS, KeytrailServer

from bench.httpload import post_rate

MESSAGE = b"x" * 64
CASES = {"ECC_NIST_P256": "ECDSA_SHA_256", "RSA_2048": "RSASSA_PSS_SHA_256", "ML_DSA_65": "ML_DSA_SHAKE_256"}


def raw_signer(spec: str) -> Callable[[], bytes]:
    """The same signing operation done directly with `cryptography`."""
    if spec == "ECC_NIST_P256":
        ecc = ec.generate_private_key(ec.SECP256R1())
        return lambda: ecc.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    if spec == "RSA_2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), salt_length=32)
        return lambda: key.sign(MESSAGE, pss, hashes.SHA256())
    ml = mldsa.MLDSA65PrivateKey.generate()
    return lambda: ml.sign(MESSAGE)


def raw_rate(operation: Callable[[], bytes], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        operation()
    return calls / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def presigned(endpoint: str, key_id: str, algorithm: str) -> tuple[dict[str, str], bytes]:
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    body = json.dumps(
        {"KeyId": key_id, "Message": base64.b64encode(MESSAGE).decode(), "SigningAlgorithm": algorithm}
    ).encode()
    request = AWSRequest(
        "POST",
        endpoint + "/",
        data=body,
        headers={"X-Amz-Target": "TrentService.Sign", "Content-Type": "application/x-amz-json-1.1"},
    )
    SigV4Auth(Credentials(access_key, secret), "kms", "us-east-1").add_auth(request)
    return dict(request.headers.items()), body


def run(calls: int, rounds: int, concurrency: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, list[float]]] = {
        spec: {"server": [], "raw": [], "ratio": [], "cpu_us": []} for spec in CASES
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = KeytrailServer(Path(tmp) / "data").start()
        try:
            kms = server.client("alice")
            keys = {
                spec: kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
                for spec in CASES
            }
            raw = {spec: raw_signer(spec) for spec in CASES}
            for _ in range(rounds):
                for spec, algorithm in CASES.items():
                    request = presigned(server.endpoint, keys[spec], algorithm)
                    assert server.proc is not None
                    cpu_before = cpu_seconds(server.proc.pid)
                    served = asyncio.run(post_rate(server.endpoint, request, calls, concurrency, warm=True))
                    # the warm-up pass sends `calls` more requests: CPU covers 2 x calls
                    results[spec]["cpu_us"].append(
                        (cpu_seconds(server.proc.pid) - cpu_before) / (2 * calls) * 1e6
                    )
                    direct = raw_rate(raw[spec], calls)
                    results[spec]["server"].append(served)
                    results[spec]["raw"].append(direct)
                    results[spec]["ratio"].append(served / direct)
        finally:
            server.stop()
    return {
        spec: {name: statistics.median(values) for name, values in series.items()}
        for spec, series in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    table = run(args.calls, args.rounds, args.concurrency)
    print(
        f"| key spec | algorithm | server Sign calls/s | server CPU µs/call | raw cryptography ops/s (µs) "
        f"| ratio calls/s ÷ ops/s (median of {args.rounds}) |"
    )
    print("|---|---|---|---|---|---|")
    for spec, row in table.items():
        print(
            f"| {spec} | {CASES[spec]} | {row['server']:,.0f} | {row['cpu_us']:,.0f} | "
            f"{row['raw']:,.0f} ({1e6 / row['raw']:,.0f}) | {row['ratio']:.3f} |"
        )


if __name__ == "__main__":
    main()
