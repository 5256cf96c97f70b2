"""The webhook HMAC keys `serve --config` names by environment variable (`secret_env`), kept out
of the environments of serve's children.

Every child (the consumer, the detector, the Kafka shipper, the fsync helper) inherited serve's
environment, and unlike serve a child is dumpable: its environment is readable in
/proc/<pid>/environ, and `ps e`, by every other process of the user. Only the detector sends
alarms, so serve takes the variables out of its own environment as it starts, and the detector
child gets their values on its stdin (cli/sidecar.py), as it gets serve's --mqtt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["hook_environment", "withdraw_hook_secrets"]


def withdraw_hook_secrets(config: Path | None) -> dict[str, str]:
    """Take the variables that the webhooks of the settings file `config` (checked already) read
    their HMAC key from out of this process's environment: their names and values."""
    from keytrail.cli.detect import detector_settings

    _, hooks = detector_settings(config)
    names = {webhook.secret_env for webhook in hooks.webhooks if webhook.secret_env}
    return {name: os.environ.pop(name) for name in sorted(names) if name in os.environ}


def hook_environment(withdrawn: Mapping[str, str]) -> dict[str, str]:
    """Where serve's detector reads a webhook's `secret_env`: this process's environment and the
    variables `withdraw_hook_secrets` took out of it."""
    return {**os.environ, **withdrawn}
