"""The image's build context holds what deploy/Dockerfile copies and nothing else: without a
.dockerignore, `docker compose up --build` offered the whole checkout, deploy/secrets/root.key and
a local keytrail-data/ included, to the daemon."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _copied() -> set[str]:
    """The sources of the Dockerfile's COPY lines (their last word is the destination)."""
    lines = re.findall(r"^COPY\s+(?!--from)(.+)$", (ROOT / "deploy/Dockerfile").read_text(), re.MULTILINE)
    return {source.rstrip("/") for line in lines for source in line.split()[:-1]}


def _ignore_rules() -> list[str]:
    text = (ROOT / ".dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_build_context_lets_in_exactly_what_the_dockerfile_copies() -> None:
    rules = _ignore_rules()
    assert rules[0] == "*", "everything is left out first, then what the image needs let back in"
    let_in = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert let_in == _copied()
    assert not any(name.startswith(("deploy", "keytrail-data", ".")) for name in let_in)
    assert "**/__pycache__" in rules
