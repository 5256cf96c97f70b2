"""What the results were measured on: machine, versions, and which keytrail parts this build has."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.wrk import wrk_version

__all__ = ["describe_machine", "features"]

_PACKAGES = ("keytrail", "cryptography", "botocore", "uvicorn", "uvloop", "httptools", "orjson", "fastavro",
             "aiokafka", "polars", "moto", "pyinstrument")
# part of keytrail -> module whose presence means this build has it
_FEATURES = {
    "authz (key policy evaluation)": "keytrail.kms.evaluator",
    "audit trail (durable spool)": "keytrail.audit.trail",
    "Kafka shipping": "keytrail.audit.shipper",
    "consumers (pipeline)": "keytrail.pipeline.runner",
    "detector": "keytrail.detect.engine",
}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def describe_machine(root: Path) -> dict[str, Any]:
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    return {
        "nproc": os.cpu_count(), "cpu": _cpu_model(), "memory_gib": round(memory_kb / 2**20, 1),
        "os": platform.platform(), "python": platform.python_version(), "load_average": os.getloadavg(),
        "versions": {name: _version(name) for name in _PACKAGES} | {"wrk": wrk_version()},
        "commit": _git_commit(root),
    }


def features() -> dict[str, bool]:
    """Which parts of keytrail this build contains (the table says what was measured)."""
    return {name: importlib.util.find_spec(module) is not None for name, module in _FEATURES.items()}
