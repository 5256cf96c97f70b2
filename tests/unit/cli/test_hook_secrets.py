"""serve takes the variables its webhooks read their HMAC keys from out of its environment, which
its children inherit, and reads them from what it took."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keytrail.cli.detect import detector_settings
from keytrail.cli.hook_secrets import hook_environment, withdraw_hook_secrets

SETTINGS = """
[[hooks.webhook]]
url = "https://alerts.example.com/a"
secret_env = "HOOK_TEST_KEY_A"

[[hooks.webhook]]
url = "https://alerts.example.com/b"
secret = "in the file"
secret_env = "HOOK_TEST_KEY_UNUSED"
"""


def test_the_variables_a_webhook_reads_leave_the_environment_and_still_sign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(SETTINGS)
    monkeypatch.setenv("HOOK_TEST_KEY_A", "key-a")
    monkeypatch.setenv("HOOK_TEST_KEY_UNUSED", "not read: the file's secret is taken")
    withdrawn = withdraw_hook_secrets(config)
    assert withdrawn == {"HOOK_TEST_KEY_A": "key-a"}
    assert "HOOK_TEST_KEY_A" not in os.environ and "HOOK_TEST_KEY_UNUSED" in os.environ
    _, hooks = detector_settings(config, environment=hook_environment(withdrawn))
    assert [webhook.secret for webhook in hooks.webhooks] == [b"key-a", b"in the file"]


def test_no_settings_file_withdraws_nothing() -> None:
    assert withdraw_hook_secrets(None) == {}
