"""Settings: one frozen object built by the CLI and handed to every piece it wires."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PROXIES_ENV", "STORE_ENV", "ServeSettings"]

STORE_ENV = "KEYTRAIL_STORE"  # the shared key store's URL, for serve and root-key rotate alike
PROXIES_ENV = "FORWARDED_ALLOW_IPS"  # uvicorn's: the proxies trusted to report a caller's address


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything `keytrail serve` is configured with (CONTRACTS.md §1)."""

    data_dir: Path = Path("keytrail-data")
    host: str = "127.0.0.1"
    port: int = 4599
    principals: Path | None = None
    store: str | None = None  # postgresql://… for a key store shared by several nodes
    config: Path | None = None  # settings file: detection rules and alarm hooks (docs/detection-rules.md)
    kafka: str | None = None
    mqtt: str | None = None
    dev_clock: bool = False
    dev_credentials: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    audit: bool = True
    detector: bool = True  # off where a standalone `keytrail detect` reads the Kafka topic
    max_body_bytes: int = 256 * 1024
    scheduler_interval_seconds: float = 30.0  # due rotations and deletions, the HSM upkeep (--scheduler-interval)
    digest_interval_seconds: float = 3600.0  # an idle node signs an audit digest this often
    retention_hours: float | None = None  # closed event log segments older than this are deleted (None: keep)
    retention_bytes: int | None = None  # closed segments beyond this many bytes of log are deleted (None: keep)
    # On SIGTERM, how long the node serves on while its health check fails, before it stops accepting
    # (--drain-seconds): a load balancer takes it out of rotation first. 0: it stops accepting at once.
    drain_seconds: float = 0.0
    # With --kafka: the audit topic's shape if the shipper creates it, and the bytes of audit log Kafka
    # may lag behind before calls are refused (shipping stuck: no crypto without audit).
    kafka_partitions: int = 3
    kafka_replication_factor: int = 1
    max_unshipped_bytes: int = 1 << 30
    # The webhook HMAC keys --config names by variable, taken out of serve's environment as it
    # starts (cli/hook_secrets.py): name -> value.
    hook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def principals_file(self) -> Path:
        """The principals file serve reads: --principals, else the one it keeps in the data dir."""
        return self.principals or self.data_dir / "principals.toml"

    @property
    def scheme(self) -> str:
        return "https" if (self.tls_cert or self.tls_self_signed) else "http"

    @property
    def client_host(self) -> str:
        """The host a client on this machine calls: every interface (0.0.0.0, ::) is called on its
        loopback address. `::` binds IPv6 only (cli/console.py), so not `localhost`, which may
        resolve to 127.0.0.1 alone (/etc/hosts of many containers): that endpoint was refused."""
        return {"127.0.0.1": "localhost", "0.0.0.0": "localhost", "::": "::1"}.get(self.host, self.host)

    @property
    def endpoint(self) -> str:
        host = self.client_host
        if ":" in host:  # an IPv6 address: in brackets in a URL (RFC 3986), or the SDKs refuse it
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"
