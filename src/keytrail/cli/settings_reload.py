"""SIGHUP's re-read of `serve --config`, the detector's rules and hooks (docs/detection-rules.md,
"Configuration file"). serve's detector child read the file only as it started: a SIGHUP after an
edit changed nothing and said nothing (the log said the principals file was reloaded), while the
next restart of the child, after a crash, took the edit up unannounced."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from keytrail.children import Child
from keytrail.cli.detect import BadInput, detector_settings
from keytrail.cli.hook_secrets import hook_environment
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.rules import Rule, RuleError

__all__ = ["SettingsReload"]

log = logging.getLogger("keytrail")

# What a settings file sets, comparable: an edit of comments or layout alone restarts nothing (a
# restarted detector reads the whole event log again).
_Settings = tuple[tuple[Rule, ...], HooksConfig]


class SettingsReload:
    """On SIGHUP: the settings file read again and, if what it sets changed, the detector child
    restarted on it; a file that no longer reads is one ERROR line, and the detector runs on."""

    def __init__(self, path: Path, detector: Child | None, withdrawn: Mapping[str, str]) -> None:
        """`detector`: serve's detector child; None where the detector runs in serve (--dev-clock),
        which reads the file at start only. `withdrawn`: the webhook keys serve took out of its
        environment (cli/hook_secrets.py)."""
        self._path, self._detector = path, detector
        self._environment = hook_environment(withdrawn)
        self._settings: _Settings | None = _read_quietly(path, self._environment)  # as serve checked it, near enough

    def __call__(self) -> None:
        try:
            settings = _read(self._path, self._environment)
        except (BadInput, RuleError, ValueError, OSError) as exc:  # as serve's start refuses them
            log.error("settings file %s not reloaded: %s; the detector keeps the rules and hooks it runs with",
                      self._path, exc)
            return
        if settings == self._settings:
            return
        if self._detector is None:
            log.error("settings file %s not reloaded: under --dev-clock the detector runs in serve and reads it as "
                      "serve starts only: restart serve to apply it", self._path)
            return
        self._settings = settings
        self._detector.restart()
        log.warning("settings file %s reloaded: the detector restarts with its rules and hooks", self._path)


def _read(path: Path, environment: Mapping[str, str]) -> _Settings:
    rules, hooks = detector_settings(path, environment=environment)
    return tuple(rules), hooks


def _read_quietly(path: Path, environment: Mapping[str, str]) -> _Settings | None:
    try:
        return _read(path, environment)
    except (BadInput, RuleError, ValueError, OSError):  # changed since serve checked it: any reload differs
        return None
