"""The organizations a principals file puts accounts in, for the detector's permissive-key rule,
which trusts a key account's own organization (docs/detection-rules.md).

A detector runs for days while the file is edited: the map is read again whenever the file
changes (its size, time or inode), checked as a policy is judged, so no signal is needed. A file
that breaks later keeps the last map read, as serve's SIGHUP keeps its credentials, and says so
once per change in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from keytrail.api.credentials import PrincipalsFileError, read_principals_file

__all__ = ["PrincipalsOrganizations"]

log = logging.getLogger("keytrail")

_Signature = tuple[int, int, int] | None  # (inode, size, mtime in ns); None: the file is not there


class PrincipalsOrganizations:
    """`organization_of(account)` over a principals file's [[organization]] tables."""

    def __init__(self, path: Path, *, strict: bool = True) -> None:
        """Read `path` now; `strict`: PrincipalsFileError if it is missing or broken (a command's
        own option), else no organization until it can be read (a child started by serve, which
        has checked the file already and must not stop judging over it)."""
        self.path = path
        self._organizations: dict[str, str] = {}
        self._signature: _Signature = None
        if strict:  # the signature before the read: a change while it reads is read again at the next question
            signature = _signature(path)
            self._organizations = read_principals_file(path).organizations  # a missing file included
            self._signature = signature
        else:
            self._refresh()

    def __call__(self, account: str) -> str | None:
        self._refresh()
        return self._organizations.get(account)

    def _refresh(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            log.warning("principals file %s is not there: the organizations last read are kept", self.path)
            return
        try:
            self._organizations = read_principals_file(self.path).organizations
        except PrincipalsFileError as exc:
            log.error("organizations not read again (the last read are kept): %s", exc)


def _signature(path: Path) -> _Signature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
