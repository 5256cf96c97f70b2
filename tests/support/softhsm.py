"""A SoftHSM2 token of the test suite's own, in a temporary directory (SOFTHSM2_CONF)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SoftHsm", "softhsm_module", "softhsm_token"]

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
