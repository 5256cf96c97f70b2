"""The principals file: what loads, and the one-line error for each kind of mistake."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.api.credentials import (
    CredentialStore,
    PrincipalsFileError,
    load_principals,
    read_admin_principals,
    read_principals_file,
    write_admin_principals,
)
from keytrail.kms.context import IdentityType
from tests.support.fifo import outcome_beside_a_fifo

ALICE = '''[[principal]]
arn = "arn:aws:iam::111122223333:user/alice"
access_key_id = "AKIAALICE000000000001"
secret_access_key = "alice-secret"
'''
ALLOW = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "principals.toml"
    path.write_text(text)
    return load_principals(path)


def test_users_roles_and_their_policies_load(tmp_path: Path) -> None:
    role = ('[[principal]]\narn = "arn:aws:iam::111122223333:role/app"\nsession_name = "s"\n'
            f'access_key_id = "ASIAAPP0000000000001"\nsecret_access_key = "x"\npolicies = [\'\'\'{ALLOW}\'\'\']\n')
    loaded = _load(tmp_path, ALICE + role)
    assert isinstance(loaded, dict)
    assert loaded["AKIAALICE000000000001"].principal.type is IdentityType.IAM_USER
    app = loaded["ASIAAPP0000000000001"].principal
    assert app.arn == "arn:aws:sts::111122223333:assumed-role/app/s"
    assert app.policies[0]["Statement"][0]["Effect"] == "Allow"


ORGANIZATION = '[[organization]]\nid = "o-a1b2c3d4e5"\naccounts = ["111122223333", "444455556666"]\n'


def test_organizations_give_each_listed_account_its_organization_id(tmp_path: Path) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(ALICE + ORGANIZATION + ORGANIZATION.replace("a1b2c3d4e5", "f6g7h8i9j0").replace(
        '"111122223333", "444455556666"', '"777788889999"'))
    loaded = read_principals_file(path)
    assert loaded.organizations == {"111122223333": "o-a1b2c3d4e5", "444455556666": "o-a1b2c3d4e5",
                                    "777788889999": "o-f6g7h8i9j0"}
    assert list(loaded.credentials) == ["AKIAALICE000000000001"]
    path.write_text(ALICE)
    assert read_principals_file(path).organizations == {}


@pytest.mark.parametrize(("text", "message"), [
    (ORGANIZATION.replace("[[organization]]", "[organization]"),
     "organizations are [[organization]] tables (note the double brackets)"),
    (ORGANIZATION.replace("o-a1b2c3d4e5", "o-A1B2C3D4E5"), "organization #1: 'id' must be an AWS Organizations id"),
    (ORGANIZATION.replace("o-a1b2c3d4e5", "a1b2c3d4e5"), "organization #1: 'id' must be an AWS Organizations id"),
    (ORGANIZATION.replace('id = "o-a1b2c3d4e5"\n', ""), "organization #1: 'id' must be an AWS Organizations id"),
    (ORGANIZATION.replace('"444455556666"', '"4444"'), "organization #1: 'accounts' must be a list of 12-digit"),
    (ORGANIZATION.replace('["111122223333", "444455556666"]', "[]"), "'accounts' must be a list of 12-digit"),
    (ORGANIZATION.replace('["111122223333", "444455556666"]', '"111122223333"'), "'accounts' must be a list"),
    (ORGANIZATION + 'root = "r-ab12"\n', "organization #1: unknown field 'root' (an organization has id, accounts)"),
    (ORGANIZATION * 2, "organization #2: organization o-a1b2c3d4e5 is listed twice"),
    (ORGANIZATION + ORGANIZATION.replace("a1b2c3d4e5", "f6g7h8i9j0"),
     "organization #2: account 111122223333 is in organization o-a1b2c3d4e5 already"),
])
def test_organization_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(ALICE + text)
    with pytest.raises(PrincipalsFileError) as caught:
        read_principals_file(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("x = [", "Invalid value"),
    # tomllib recurses per level: arrays or tables a few hundred deep raised RecursionError, a
    # traceback (exit 1) from `serve` and an unhandled error in the SIGHUP reload.
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n", "nested too deeply"),
    ('[principals.alice]\narn = "a"\n', "unknown entry 'principals'"),
    (ALICE.replace("[[principal]]", "[principal]"), "note the double brackets"),
    ('principal = ["alice"]\n', "note the double brackets"),
    (ALICE.replace('"alice-secret"', "5"), "principal #1: 'secret_access_key' must be a non-empty string"),
    (ALICE.replace('"alice-secret"', '""'), "principal #1: 'secret_access_key' must be a non-empty string"),
    (ALICE.replace('secret_access_key = "alice-secret"', ""), "principal #1: 'secret_access_key' is required"),
    # An access key id no Authorization header can name loaded, and every call with it was refused
    # as an unknown key ("The security token included in the request is invalid.").
    (ALICE.replace("000000000001", "000000000001 "), "principal #1: 'access_key_id' cannot hold blanks"),
    (ALICE.replace("AKIAALICE", "AKIA/ALICE"), "'access_key_id' cannot hold blanks, commas, slashes"),
    (ALICE.replace("AKIAALICE", "AKIA,ALICE"), "'access_key_id' cannot hold blanks, commas, slashes"),
    (ALICE.replace("AKIAALICE", "AKIAÄLICE"), "'access_key_id' cannot hold blanks, commas, slashes"),
    (ALICE.replace("user/alice", "user/alice\\n"), "must be an IAM root, user or role ARN"),
    (ALICE.replace("user/alice", "user/bób"), "must be an IAM root, user or role ARN"),
    (ALICE.replace("111122223333", "١١١١٢٢٢٢٣٣٣٣"), "must be an IAM root, user or role ARN"),
    # An empty or overlong name loaded: `user/alice/` as an IAMUser without a userName, `role/app/`
    # acting as assumed-role//keytrail-session; IAM names have 1 to 64 characters, paths 1 to 512.
    (ALICE.replace("user/alice", "user/alice/"),
     "principal #1: 'arn' ends with a user name of 0 characters; IAM's have 1 to 64"),
    (ALICE.replace("user/alice", "role/app/"),
     "principal #1: 'arn' ends with a role name of 0 characters; IAM's have 1 to 64"),
    (ALICE.replace("user/alice", "user/" + "a" * 65),
     "principal #1: 'arn' ends with a user name of 65 characters; IAM's have 1 to 64"),
    (ALICE.replace("user/alice", "role/" + "a" * 100),
     "principal #1: 'arn' ends with a role name of 100 characters; IAM's have 1 to 64"),
    (ALICE.replace("user/alice", "user/" + "p" * 511 + "/alice"),
     "principal #1: 'arn' has a path of 513 characters; an IAM path is / or 3 to 512 characters beginning and "
     "ending with /"),
    (ALICE.replace("user/alice", "user//alice"),
     "principal #1: 'arn' has a path of 2 characters; an IAM path is / or 3 to 512 characters beginning and "
     "ending with /"),
    # A session name becomes part of the caller's ARN, which grant checks compare with compare_digest
    # (TypeError, a 500, on non-ASCII text); IAM allows only these characters.
    (ALICE.replace("user/alice", "role/app") + 'session_name = "sessión"\n', "'session_name' must be"),
    (ALICE.replace("user/alice", "role/app") + 'session_name = "a/b"\n', "'session_name' must be"),
    (ALICE.replace("user/alice", "role/app") + "session_name = 5\n", "'session_name' must be"),
    # An empty or false session name was taken as "keytrail-session", and one on a user or root was
    # dropped: both without a word, though the name is the caller's identity.
    (ALICE.replace("user/alice", "role/app") + 'session_name = ""\n', "'session_name' must be"),
    (ALICE.replace("user/alice", "role/app") + "session_name = false\n", "'session_name' must be"),
    (ALICE + 'session_name = "s"\n', "principal #1: 'session_name' is for roles only; "
                                      "arn:aws:iam::111122223333:user/alice is not a role"),
    (ALICE.replace("user/alice", "root") + 'session_name = "s"\n', "'session_name' is for roles only"),
    # A misspelt field was passed over: `polices` left alice without her identity policies, unsaid.
    (ALICE + "polices = ['" + ALLOW + "']\n", "principal #1: unknown field 'polices' (a principal has arn, "
                                             "access_key_id, secret_access_key, policies, session_name, tags)"),
    (ALICE + "policies = [5]\n", "principal #1: 'policies' must be a list of JSON policy strings"),
    (ALICE + f"policies = '''{ALLOW}'''\n", "'policies' must be a list"),
    (ALICE + "policies = ['{nope']\n", "principal #1: policy 1: The policy is not valid JSON"),
    (ALICE + "policies = ['" + "[" * 16_000 + "]" * 16_000 + "']\n", "policy 1: The policy is not valid JSON"),
    (ALICE + "policies = ['{\"Statement\": 5}']\n", "policy 1: The policy Statement must be an object"),
    (ALICE + "policies = ['''" + ALLOW.replace('"Resource"', '"Principal": "*", "Resource"') + "''']\n",
     "identity-based policies cannot contain Principal"),
    # IAM refuses a Resource that is no ARN: a key id or an alias name is matched against key ARNs,
    # so this Deny was taken and protected nothing.
    (ALICE + "policies = ['" + ALLOW.replace("Allow", "Deny").replace('"*"}', '"alias/prod"}') + "']\n",
     'principal #1: policy 1: Policy statement 1: Resource alias/prod must be in ARN format or "*".'),
    # Tags IAM would refuse could be on no real user or role: a policy on aws:PrincipalTag written
    # against them would hold here and nowhere else.
    (ALICE + 'tags = ["team"]\n', "principal #1: 'tags' must be a table of strings"),
    (ALICE + "tags = { team = 5 }\n", "'tags' must be a table of strings"),
    (ALICE + "tags = { " + ", ".join(f"t{n} = 'x'" for n in range(51)) + " }\n",
     "'tags' holds 51; IAM allows 50 per user or role"),
    (ALICE + f"tags = {{ {'k' * 129} = 'x' }}\n", "a key has 1 to 128 characters and a value up to 256"),
    (ALICE + f"tags = {{ team = '{'v' * 257}' }}\n", "a key has 1 to 128 characters"),
    (ALICE + 'tags = { "" = "x" }\n', "a key has 1 to 128 characters"),
    (ALICE + 'tags = { "AWS:team" = "x" }\n', "tag 'AWS:team': keys beginning aws: are AWS's own"),
    (ALICE + 'tags = { team = "a;b" }\n', "tag 'team': keys and values hold letters, digits, blanks"),
    (ALICE + 'tags = { Team = "a", team = "b" }\n', "tags 'Team' and 'team' differ only in case"),
    (ALICE.replace("user/alice", "root") + 'tags = { team = "a" }\n',
     "'tags' are for users and roles; IAM tags no account root"),
])
def test_mistakes_are_one_line_errors_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_secret_in_the_access_key_id_field_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    """The two fields swapped put the secret where the access key id goes; AWS's secrets hold a "/",
    which the id cannot, and the error quoted the whole value: the secret on the terminal, and in
    the log when a SIGHUP reload refused the file."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    swapped = ALICE.replace("AKIAALICE000000000001", secret).replace('"alice-secret"', '"AKIAALICE000000000001"')
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, swapped)
    assert "principal #1: 'access_key_id' cannot hold blanks, commas, slashes" in str(info.value)
    assert "has '/' at character 14 of 40 (is it the secret access key? the two may be swapped)" in str(info.value)
    assert "wJalr" not in str(info.value) and "EXAMPLEKEY" not in str(info.value)


def test_an_identity_with_two_access_keys_has_one_set_of_policies(tmp_path: Path) -> None:
    # A user rotating its key holds two (IAM allows two), and its permissions do not depend on
    # which signs. Entries that differed loaded: the copy without `policies` was denied everything.
    second = ALICE.replace("000000000001", "000000000002").replace("alice-secret", "alice-secret-2")
    with_policy = f"policies = ['''{ALLOW}''']\n"
    loaded = _load(tmp_path, ALICE + with_policy + second + with_policy)
    assert isinstance(loaded, dict)
    first, second_key = (loaded[f"AKIAALICE00000000000{n}"].principal for n in (1, 2))
    assert (first.arn, first.policies) == (second_key.arn, second_key.policies) and first.policies
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, ALICE + with_policy + second)
    assert str(info.value).endswith("principal #2: arn:aws:iam::111122223333:user/alice has other policies in "
                                    "principal #1; an identity's policies are the same whichever access key signs")
    role = ALICE.replace("user/alice", "role/app")
    sessions = role + 'session_name = "a"\n' + with_policy + second.replace("user/alice", "role/app")
    with pytest.raises(PrincipalsFileError, match="arn:aws:iam::111122223333:role/app has other policies"):
        _load(tmp_path, sessions + 'session_name = "b"\n')


def _two_entries(first: str, second: str, first_policies: str = "") -> str:
    """Alice's entry written as ARN `first` (with `first_policies`), then again as `second` with
    her second access key; a role's entries each name a session."""
    session = 'session_name = "s1"\n' if ":role/" in first else ""
    written_as = ALICE.replace("arn:aws:iam::111122223333:user/alice", first) + session + first_policies
    also_as = ALICE.replace("arn:aws:iam::111122223333:user/alice", second).replace("000000000001", "000000000002")
    return written_as + also_as + session


# One identity written two ways: the partition (the Region called sets the caller's), a path, or
# the case of the name (IAM tells users and roles apart by name alone, whatever the case or path).
@pytest.mark.parametrize(("first", "second"), [
    ("arn:aws:iam::111122223333:user/u", "arn:aws-cn:iam::111122223333:user/u"),
    ("arn:aws:iam::111122223333:user/Bob", "arn:aws:iam::111122223333:user/bob"),
    ("arn:aws:iam::111122223333:user/bob", "arn:aws:iam::111122223333:user/staff/BOB"),
    ("arn:aws:iam::111122223333:role/app", "arn:aws:iam::111122223333:role/other/app"),
    ("arn:aws-us-gov:iam::111122223333:role/x/App", "arn:aws:iam::111122223333:role/app"),
    ("arn:aws:iam::111122223333:root", "arn:aws-cn:iam::111122223333:root"),
])
def test_one_identity_written_two_ways_has_one_set_of_policies(tmp_path: Path, first: str, second: str) -> None:
    # Each spelling was an identity of its own: one caller, with the permissions of the key it signed with.
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, _two_entries(first, second, first_policies=f"policies = ['''{ALLOW}''']\n"))
    assert str(info.value) == (f"{tmp_path / 'principals.toml'}: principal #2: {second} has other policies in "
                               "principal #1; an identity's policies are the same whichever access key signs")


@pytest.mark.parametrize(("first", "second"), [
    ("arn:aws:iam::111122223333:user/Bob", "arn:aws:iam::111122223333:user/bob"),
    ("arn:aws:iam::111122223333:user/bob", "arn:aws:iam::111122223333:user/staff/bob"),
    ("arn:aws:iam::111122223333:role/app", "arn:aws-cn:iam::111122223333:role/other/App"),
])
def test_one_identity_written_with_two_paths_or_cases_is_refused(tmp_path: Path, first: str, second: str) -> None:
    # With the same policies both loaded, each entry's caller acting as its own spelling: a key
    # policy's Deny naming one spelling missed the calls signed with the other key.
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, _two_entries(first, second))
    assert str(info.value) == (f"{tmp_path / 'principals.toml'}: principal #2: {second} is {first} of principal #1 "
                               "with another path or case; an identity's ARN is the same whichever access key signs")


def test_one_identity_written_in_two_partitions_is_one_caller(tmp_path: Path) -> None:
    # The partition is the Region's to set (docs/api-compatibility.md): both keys act as one user.
    other = ALICE.replace("arn:aws:", "arn:aws-cn:").replace("000000000001", "000000000002")
    loaded = _load(tmp_path, ALICE + other)
    assert isinstance(loaded, dict)
    first, second = (loaded[f"AKIAALICE00000000000{n}"].principal.in_partition("aws") for n in (1, 2))
    assert first.arn == second.arn == "arn:aws:iam::111122223333:user/alice"
    # Its unique id too (aws:userid, the records' principalId): the aws-cn entry had another, so a
    # Deny on alice's id missed the calls of that key. An entry written in aws keeps the id it had.
    expected = "AIDA" + hashlib.sha256(b"arn:aws:iam::111122223333:user/alice").hexdigest()[:17].upper()
    assert first.principal_id == second.principal_id == expected


def test_users_and_roles_of_one_name_and_users_of_other_accounts_are_other_identities(tmp_path: Path) -> None:
    others = [ALICE.replace("user/alice", "role/alice"), ALICE.replace("111122223333", "444455556666"),
              ALICE.replace("user/alice", "user/alice2"), ALICE.replace("user/alice", "user/alice/x")]
    entries = ALICE + f"policies = ['''{ALLOW}''']\n" + "".join(
        entry.replace("000000000001", f"00000000000{number}") for number, entry in enumerate(others, 2))
    loaded = _load(tmp_path, entries)
    assert isinstance(loaded, dict) and len(loaded) == 5


def test_iam_user_and_role_names_and_paths_load_up_to_iams_lengths(tmp_path: Path) -> None:
    path = "/" + "p" * 510 + "/"  # 512 characters, its slashes included
    user = ALICE.replace("user/alice", f"user{path}{'u' * 64}")
    role = ALICE.replace("user/alice", f"role/{'r' * 64}").replace("000000000001", "000000000002")
    loaded = _load(tmp_path, user + role)
    assert isinstance(loaded, dict)
    assert loaded["AKIAALICE000000000001"].principal.user_name == "u" * 64
    assert loaded["AKIAALICE000000000002"].principal.arn == (
        f"arn:aws:sts::111122223333:assumed-role/{'r' * 64}/keytrail-session")


def test_tags_load_for_users_and_roles_and_are_one_set_per_identity(tmp_path: Path) -> None:
    tags = 'tags = { team = "payments", "cost center" = "CC-12/ü" }\n'
    role = ALICE.replace("user/alice", "role/app").replace("AKIAALICE", "ASIAAPPXX") + 'session_name = "s"\n'
    loaded = _load(tmp_path, ALICE + tags + role + 'tags = { team = "" }\n')
    assert isinstance(loaded, dict)
    assert loaded["AKIAALICE000000000001"].principal.tags == (("cost center", "CC-12/ü"), ("team", "payments"))
    assert loaded["ASIAAPPXX000000000001"].principal.tags == (("team", ""),)
    second = ALICE.replace("000000000001", "000000000002")
    with pytest.raises(PrincipalsFileError) as info:
        _load(tmp_path, ALICE + tags + second + 'tags = { team = "other" }\n')
    assert str(info.value).endswith("principal #2: arn:aws:iam::111122223333:user/alice has other tags in "
                                    "principal #1; an identity's tags are the same whichever access key signs")


def test_a_principals_file_that_cannot_be_read_is_named_without_python_error_text(tmp_path: Path) -> None:
    # It said "<path>: [Errno 21] Is a directory: '<path>'".
    with pytest.raises(PrincipalsFileError) as info:
        load_principals(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read the principals file: Is a directory"


def test_a_fifo_in_place_of_the_principals_file_is_named_not_waited_on(tmp_path: Path) -> None:
    # Read as it came, a FIFO kept serve's start (and a SIGHUP's reload, on the event loop) waiting
    # for a writer forever.
    path = tmp_path / "principals.toml"
    path.write_text(ALICE)
    store = CredentialStore(path)
    path.unlink()
    os.mkfifo(path)
    outcome = [*outcome_beside_a_fifo(path, store.reload), *outcome_beside_a_fifo(path, lambda: CredentialStore(path))]
    refused = f"{path}: cannot read the principals file: not a regular file (a FIFO, a device or a socket in a " \
              "file's place)"
    assert [(type(exc), str(exc)) for exc in outcome] == [(PrincipalsFileError, refused)] * 2
    assert store.lookup("AKIAALICE000000000001") is not None  # the credentials in force stay


_MUNICH = ALICE + """policies = ['''{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "kms:*",
  "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:site": "München"}}}]}''']
"""


def test_a_principals_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # TOML is UTF-8. Read in the locale's encoding, this file was refused as "not UTF-8 text" under
    # LC_ALL=C with PYTHONUTF8=0, and a Latin-1 locale would have read the Deny's value as "MÃ¼nchen".
    path = tmp_path / "principals.toml"
    path.write_text(_MUNICH, encoding="utf-8")
    show = ("import sys; from keytrail.api.credentials import load_principals; from pathlib import Path; "
            "policy = load_principals(Path(sys.argv[1]))['AKIAALICE000000000001'].principal.policies[0]; "
            "print(ascii(policy['Statement'][0]['Condition']['StringEquals']))")
    result = subprocess.run([sys.executable, "-c", show, str(path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"})
    assert result.stdout.strip() == ascii({"kms:EncryptionContext:site": "München"}), result.stderr


def test_a_principals_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Notepad and PowerShell save UTF-8 with a BOM, which TOML allows (toml-lang/toml#437); tomllib
    # took it for a character and refused the file: "Invalid statement (at line 1, column 1)".
    path = tmp_path / "principals.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ALICE.encode())
    assert list(load_principals(path)) == ["AKIAALICE000000000001"]


def test_dev_credentials_take_an_account_from_ascii_digits_only() -> None:
    store = CredentialStore(None, dev_credentials=True)
    assert store.lookup("444455556666").principal.account == "444455556666"  # type: ignore[union-attr]
    assert store.lookup("٤٤٤٤٥٥٥٥٦٦٦٦").principal.account == "000000000000"  # type: ignore[union-attr]


def test_a_principals_file_other_users_can_read_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(ALICE)
    path.chmod(0o600)
    CredentialStore(path)
    assert caplog.records == []
    path.chmod(0o644)
    CredentialStore(path)
    assert [record.getMessage() for record in caplog.records] == [
        f"the principals file {path} can be read by other users (mode 0644): chmod 600 it"]
    assert "alice-secret" not in caplog.text


@pytest.mark.parametrize("mode", [0o622, 0o666])
def test_a_principals_file_other_users_can_write_is_refused_as_writable_not_readable(tmp_path: Path, mode: int) -> None:
    # 0622 was warned of as one they "can read", and served: any user could add an admin of their own.
    path = tmp_path / "principals.toml"
    path.write_text(ALICE)
    path.chmod(mode)
    with pytest.raises(PrincipalsFileError) as info:
        CredentialStore(path)
    assert str(info.value) == (f"the principals file {path} can be written by other users (mode {mode:04o}): another "
                               "user could give themselves any identity: chmod 600 it")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")
def test_a_principals_file_another_user_owns_is_said_and_served_unless_others_can_write_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Served without a word: its owner may rewrite it, and be admin at the next SIGHUP. Yet a file
    # bind-mounted from the host (docker-compose.yml's deploy/principals.toml) is its operator's,
    # read-only inside the container: said, not refused; one others may write is refused whoever owns it.
    path = tmp_path / "principals.toml"
    path.write_text(ALICE)
    path.chmod(0o600)
    os.chown(path, 4242, -1)
    assert CredentialStore(path).lookup("AKIAALICE000000000001") is not None
    assert [record.getMessage() for record in caplog.records] == [
        f"the principals file {path} is owned by uid 4242, not by uid 0 that keytrail runs as: chown it to uid 0"]
    path.chmod(0o666)
    with pytest.raises(PrincipalsFileError, match=r"can be written by other users \(mode 0666\)"):
        CredentialStore(path)


def test_a_reload_of_a_principals_file_other_users_can_write_keeps_the_old_principals(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from keytrail.cli.node import reload_principals

    path = tmp_path / "principals.toml"
    path.write_text(ALICE)
    path.chmod(0o600)
    store = CredentialStore(path)
    path.write_text(ALICE.replace("ALICE", "MALLORY"))
    path.chmod(0o622)  # another user appended an admin of their own, say
    reload_principals(store)
    assert store.lookup("AKIAALICE000000000001") is not None and store.lookup("AKIAMALLORY000000000001") is None
    assert store.generation == 0
    assert [record.getMessage() for record in caplog.records] == [
        f"principals file not reloaded: the principals file {path} can be written by other users (mode 0622): "
        "another user could give themselves any identity: chmod 600 it"]
    path.chmod(0o600)
    reload_principals(store)
    assert store.lookup("AKIAMALLORY000000000001") is not None and store.lookup("AKIAALICE000000000001") is None


def test_a_principals_file_that_names_nobody_is_warned_about_at_start_and_reload(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # It parsed, and the node started where no call could be made, without a word.
    path = tmp_path / "principals.toml"
    path.write_text("# everyone removed\n")
    path.chmod(0o600)
    store = CredentialStore(path)
    path.write_text(ALICE)
    store.reload()
    path.write_text("")
    store.reload()
    assert [record.getMessage() for record in caplog.records] == [
        f"the principals file {path} names no principal: every call will be refused "
        "(UnrecognizedClientException) until it has a [[principal]] entry and is reloaded"] * 2


def test_the_admin_key_pair_is_read_back_only_from_a_file_as_keytrail_wrote_it(tmp_path: Path) -> None:
    # A start killed before printing the admin user's credentials has the next start print them:
    # never the secret of a file edited since, or written by someone else.
    path = tmp_path / "principals.toml"
    keys = write_admin_principals(path)
    assert read_admin_principals(path) == keys
    path.write_text(path.read_text().replace("user/admin", "user/ops"))
    assert read_admin_principals(path) is None
    path.write_text(ALICE)
    assert read_admin_principals(path) is None
    assert read_admin_principals(tmp_path / "missing.toml") is None
