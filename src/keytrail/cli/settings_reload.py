"""SIGHUP's re-read of `serve --config`, the detector's rules and hooks (docs/detection-rules.md,
"Configuration file"). serve's detector child read the file only as it started: a SIGHUP after an
edit changed nothing and said nothing (the log said the principals file was reloaded), while the
next restart of the child, after a crash, took the edit up unannounced. The child now runs on the
text read here (`text`, on its stdin), so a restart after a crash takes no edit up, nor a file
broken since: such a child exited at once, again and again, and judged no call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from keytrail.children import Child
from keytrail.cli.detect import BadInput, settings_file_text, settings_of_text
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
        # The file's text as last read and checked, what the detector child runs on (None: it reads
        # the file itself, and says why it cannot), and what that text sets.
        self.text: str | None = None
        self._settings: _Settings | None = None
        with contextlib.suppress(BadInput, RuleError, ValueError, OSError):  # broken since serve checked it
            self.text, self._settings = self._read()

    def __call__(self) -> None:
        try:
            text, settings = self._read()
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
        self.text, self._settings = text, settings
        self._detector.restart()
        log.warning("settings file %s reloaded: the detector restarts with its rules and hooks", self._path)

    def _read(self) -> tuple[str, _Settings]:
        """The file's text and what it sets (BadInput, RuleError, ValueError: what is wrong with it)."""
        text = settings_file_text(self._path)
        rules, hooks = settings_of_text(text, self._path, environment=self._environment)
        return text, (tuple(rules), hooks)
