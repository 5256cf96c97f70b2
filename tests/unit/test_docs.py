"""Documentation that is generated from the code stays current, and its examples work."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_api_compatibility_page_is_current() -> None:
    spec = importlib.util.spec_from_file_location("api_compatibility", ROOT / "scripts/api_compatibility.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs/api-compatibility.md").read_text() == module.render(), \
        "run: .venv/bin/python scripts/api_compatibility.py"


def _toml_examples(page: str) -> list[str]:
    """The ```toml blocks of a docs page, as a reader would copy them."""
    return re.findall(r"```toml\n(.*?)```", (ROOT / page).read_text(), flags=re.DOTALL)


def test_every_toml_example_in_the_docs_parses() -> None:
    examples = {page.name: _toml_examples(f"docs/{page.name}") for page in (ROOT / "docs").glob("*.md")}
    assert sum(map(len, examples.values())) >= 3
    for page, blocks in examples.items():
        for block in blocks:
            try:
                tomllib.loads(block)
            except tomllib.TOMLDecodeError as error:
                raise AssertionError(f"docs/{page}: a ```toml example does not parse: {error}") from None


def test_the_detection_settings_example_loads_as_detector_settings(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.cli.detect import detector_settings

    monkeypatch.setenv("KEYTRAIL_WEBHOOK_SECRET", "example")
    [example] = _toml_examples("docs/detection-rules.md")
    (tmp_path / "keytrail.toml").write_text(example)
    rules, hooks = detector_settings(tmp_path / "keytrail.toml")
    assert not rules.enabled("usage-spike") and hooks.mqtt == "mqtt://127.0.0.1:1883"
    assert rules["permissive-key"].parameters["trusted_accounts"] == ["222233334444"]
    assert rules["rotation-disabled"].parameters["exempt_aliases"] == ["alias/legacy-*"]


def test_every_stop_before_copying_the_data_dir_waits_for_the_node_to_exit() -> None:
    # SIGTERM only starts the shutdown (final digest, last checkpoint: seconds), so a `tar` or
    # `root-key rotate` right after `kill` copies a node still writing, or is refused; and a bare
    # `pgrep -f 'keytrail serve'` finds every node of the machine, not the one of the data dir.
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs/operations.md").read_text(), flags=re.DOTALL)
    stops = [line for block in blocks for line in block.splitlines() if "kill -TERM" in line]
    assert stops
    for line in stops:
        assert "while kill -0" in line, f"docs/operations.md: no wait for the exit after {line!r}"
    assert "pgrep -f 'keytrail serve')" not in (ROOT / "docs/operations.md").read_text()


def test_every_condition_key_the_evaluator_answers_is_in_the_authorization_table() -> None:
    # The table of docs/authorization.md is where a policy author looks up which keys keytrail
    # fills; a key answered but not listed reads as one keytrail ignores (it missed
    # kms:KeyAgreementAlgorithm and the deprecated kms:CustomerMasterKeySpec/Usage).
    source = (ROOT / "src/keytrail/kms/condition_keys.py").read_text()
    answered = {key.lower() for key in re.findall(r"\"((?:aws|kms):[A-Za-z]+/?)", source)}
    page = (ROOT / "docs/authorization.md").read_text()
    table = page[page.index("| key | where the value comes from |"):page.index("## Key policy documents")]
    documented = {key.lower() for key in re.findall(r"`((?:aws|kms):[A-Za-z]+/?)", table)}
    assert len(answered) > 30
    assert answered <= documented, f"docs/authorization.md: condition keys not in its table: {answered - documented}"


def test_the_layer_map_of_the_architecture_page_is_the_import_contract() -> None:
    [contract] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = [layer.replace("keytrail.", "") for layer in contract["layers"]]
    [drawn] = re.findall(r"```\n(cli .*)\n```", (ROOT / "docs/architecture.md").read_text())
    assert [layer.strip() for layer in drawn.split("→")] == layers, \
        "docs/architecture.md: the layer map differs from pyproject.toml's [tool.importlinter] layers"


def test_every_metric_family_the_code_renders_has_a_row_in_the_metrics_table() -> None:
    # The families are named by string literals where they are rendered (pipeline/prometheus.py,
    # cli/node.py, cli/metrics_endpoint.py); each needs its row in docs/metrics.md, whose table is
    # what an operator writes alerts from.
    rendered = {name for path in (ROOT / "src/keytrail").rglob("*.py")
                for name in re.findall(r"\"(keytrail_[a-z_]+)\"", path.read_text())}
    rows = set(re.findall(r"^\| `(keytrail_[a-z_]+)` \|", (ROOT / "docs/metrics.md").read_text(), flags=re.M))
    assert len(rendered) >= 10
    assert rendered <= rows, f"docs/metrics.md: no row for {sorted(rendered - rows)}"
