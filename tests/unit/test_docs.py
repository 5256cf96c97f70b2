"""Documentation that is generated from the code stays current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_api_compatibility_page_is_current() -> None:
    spec = importlib.util.spec_from_file_location("api_compatibility", ROOT / "scripts/api_compatibility.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs/api-compatibility.md").read_text() == module.render(), \
        "run: .venv/bin/python scripts/api_compatibility.py"
