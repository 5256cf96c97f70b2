"""The organizations a detector reads from a principals file, read again as the file changes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from keytrail.api.credentials import PrincipalsFileError
from keytrail.cli.organizations import PrincipalsOrganizations

ALICE = ('[[principal]]\naccess_key_id = "AKIAALICE000000000001"\nsecret_access_key = "s"\n'
         'arn = "arn:aws:iam::111122223333:user/alice"\n')


def organization(org_id: str, *accounts: str) -> str:
    listed = ", ".join(f'"{account}"' for account in accounts)
    return f'[[organization]]\nid = "{org_id}"\naccounts = [{listed}]\n'


def write(path: Path, text: str, *, tick: int) -> None:
    """Write `text` with a modification time of its own: two writes within the file system's
    time resolution and of one size would otherwise look like one."""
    path.write_text(text)
    os.utime(path, ns=(tick * 1_000_000_000, tick * 1_000_000_000))


def test_a_change_of_the_file_is_read_at_the_next_question(tmp_path: Path) -> None:
    path = tmp_path / "principals.toml"
    write(path, ALICE + organization("o-a1b2c3d4e5", "111122223333"), tick=1)
    organization_of = PrincipalsOrganizations(path)
    assert organization_of("111122223333") == "o-a1b2c3d4e5"
    assert organization_of("444455556666") is None
    write(path, ALICE + organization("o-f6g7h8i9j0", "111122223333", "444455556666"), tick=2)
    assert organization_of("444455556666") == "o-f6g7h8i9j0"


def test_a_file_broken_or_removed_later_keeps_the_organizations_last_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "principals.toml"
    write(path, ALICE + organization("o-a1b2c3d4e5", "111122223333"), tick=1)
    organization_of = PrincipalsOrganizations(path)
    write(path, ALICE + '[[organization]]\nid = "nope"\n', tick=2)
    with caplog.at_level(logging.ERROR, logger="keytrail"):
        assert organization_of("111122223333") == "o-a1b2c3d4e5"
        assert organization_of("111122223333") == "o-a1b2c3d4e5"
    [said] = caplog.messages  # once per change, not at every question
    assert "organizations not read again" in said and str(path) in said
    path.unlink()
    assert organization_of("111122223333") == "o-a1b2c3d4e5"


def test_a_commands_own_option_is_checked_at_once_a_childs_is_not(tmp_path: Path) -> None:
    missing = tmp_path / "principals.toml"
    with pytest.raises(PrincipalsFileError, match="cannot read the principals file"):
        PrincipalsOrganizations(missing)
    organization_of = PrincipalsOrganizations(missing, strict=False)  # serve's child: no organization yet
    assert organization_of("111122223333") is None
    write(missing, ALICE + organization("o-a1b2c3d4e5", "111122223333"), tick=1)
    assert organization_of("111122223333") == "o-a1b2c3d4e5"
    write(missing, "x = [", tick=2)
    with pytest.raises(PrincipalsFileError):
        PrincipalsOrganizations(missing)
