"""DESIGN.md's layer map, enforced: the first import against it fails the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_hold() -> None:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kms_core_imports_no_io_frameworks() -> None:
    forbidden = ("uvicorn", "aiokafka", "aiomqtt", "polars", "botocore", "fastavro", "httpx", "typer")
    for path in (ROOT / "src/keytrail/kms").rglob("*.py"):
        text = path.read_text()
        for name in forbidden:
            assert f"import {name}" not in text and f"from {name}" not in text, f"{path} imports {name}"
