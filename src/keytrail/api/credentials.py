"""Who may call: access keys and the principals they authenticate, from the principals file.

File format: CONTRACTS.md §2 and docs/principals.md. Secrets are compared in constant time by
the signature check, and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keytrail.api.sigv4 import SigningKeys
from keytrail.kms.context import ORGANIZATION_ID, IdentityType, Principal
from keytrail.kms.errors import KmsError
from keytrail.kms.partitions import ARN_PARTITION, DEFAULT_PARTITION, with_partition
from keytrail.kms.policy_document import check_condition_values, parse_policy
from keytrail.owner_only import open_file, read_regular_text, sharing_problem

__all__ = ["Credential", "CredentialStore", "PrincipalsFile", "PrincipalsFileError", "load_principals",
           "read_admin_principals", "read_principals_file", "write_admin_principals"]

# ASCII: IAM names are ASCII, and Python's \w and \d would take any script's letters and digits.
# Any partition: a caller's ARNs follow the partition of the Region it calls (see `KmsApp._verified`
# in api/app.py), so one file serves aws, aws-cn and aws-us-gov Regions alike.
_IAM_ARN = re.compile(
    rf"arn:({ARN_PARTITION}):iam::(\d{{12}}):(root|user/[\w+=,.@/-]+|role/[\w+=,.@/-]+)", re.ASCII,
)
# IAM's limits on what the ARN names (IAM and AWS STS quotas): a user's or role's name has 1 to 64
# characters, its path (slashes included) is "/" or 3 to 512 characters beginning and ending with "/".
_NAME_AT_MOST = 64
_PATH_AT_MOST = 512
# IAM's RoleSessionName characters: the session name becomes part of the caller's ARN.
_SESSION_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
# What a SigV4 Credential can name: printable ASCII less blanks (between the Authorization header's
# parameters), commas (after them) and slashes (between the scope's parts); IAM's ids are ASCII, and
# clients send other characters in different charsets. An id with any of them, a blank pasted at
# its end say, would load and never authenticate.
_ACCESS_KEY_ID = re.compile(r"(?:(?![,/])[!-~])+")  # `!-~`: printable ASCII, blank excluded
_FIELDS = ("arn", "access_key_id", "secret_access_key", "policies", "session_name", "tags")
_ORGANIZATION_FIELDS = ("id", "accounts")
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)
# IAM's tags on users and roles (Tagging IAM resources): up to 50, a key of 1 to 128 and a value of
# up to 256 letters, digits, blanks and _.:/=+-@; keys unique regardless of case, none beginning aws:.
_TAGS_AT_MOST = 50
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
DEV_ACCOUNT = "000000000000"
log = logging.getLogger(__name__)


class PrincipalsFileError(ValueError):
    """The principals file cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True, slots=True)
class PrincipalsFile:
    """What a principals file says: the credentials by access key id, and the organization id of
    each account its [[organization]] tables list (aws:PrincipalOrgID, aws:ResourceOrgID)."""

    credentials: dict[str, Credential]
    organizations: dict[str, str]


@dataclass(frozen=True, slots=True)
class Credential:
    """An access key's secret, the signing keys derived from it, and the principal it authenticates.
    A reload makes new credentials: one removed or whose secret changed is gone with its keys."""

    secret: str = field(repr=False)
    principal: Principal
    signing_keys: SigningKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signing_keys", SigningKeys(self.secret))


def _principal_id(prefix: str, arn: str) -> str:
    """The identity's unique id (aws:userid, the records' principalId), one whatever the partition
    its entry is written in, as its caller's ARN is (the Region sets it): hashed in the aws partition,
    so ids of entries written so are unchanged."""
    return prefix + hashlib.sha256(with_partition(arn, DEFAULT_PARTITION).encode()).hexdigest()[:17].upper()


def _policies(entry: dict[str, Any], where: str) -> tuple[dict[str, Any], ...]:
    """The identity policies, checked now: a broken one is refused with the file, rather than
    granting nothing at request time without a word (a condition value its operator cannot read:
    a Deny that never applies)."""
    texts = entry.get("policies", [])
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise PrincipalsFileError(f"{where}: 'policies' must be a list of JSON policy strings")
    docs = []
    for number, text in enumerate(texts, 1):
        try:
            docs.append(parse_policy(text, "identity"))
            check_condition_values(docs[-1])
        except KmsError as exc:
            raise PrincipalsFileError(f"{where}: policy {number}: {exc.message}") from None
    return tuple(docs)


def _tags(entry: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    """The identity's IAM tags (aws:PrincipalTag/<key> in policies), checked as IAM checks them: a
    tag IAM would refuse could not be on a real user or role, and a policy written for it would
    hold here and nowhere else."""
    tags = entry.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(value, str) for value in tags.values()):
        raise PrincipalsFileError(f"{where}: 'tags' must be a table of strings, as tags = {{ team = \"payments\" }}")
    if len(tags) > _TAGS_AT_MOST:
        raise PrincipalsFileError(f"{where}: 'tags' holds {len(tags)}; IAM allows {_TAGS_AT_MOST} per user or role")
    seen: dict[str, str] = {}
    for key, value in tags.items():
        if problem := _tag_problem(key, value):
            raise PrincipalsFileError(f"{where}: tag {key!r}: {problem}")
        if (twin := seen.setdefault(key.lower(), key)) != key:
            raise PrincipalsFileError(f"{where}: tags {twin!r} and {key!r} differ only in case; IAM tag keys do not")
    return tuple(sorted(tags.items()))


def _tag_problem(key: str, value: str) -> str | None:
    """Why IAM would refuse this tag, or None."""
    if not 1 <= len(key) <= 128 or len(value) > 256:
        return "a key has 1 to 128 characters and a value up to 256"
    if key.lower().startswith("aws:"):
        return "keys beginning aws: are AWS's own"
    if not all(_tag_character(c) for c in key + value):
        return "keys and values hold letters, digits, blanks and _.:/=+-@ only"
    return None


def _tag_character(character: str) -> bool:
    return character.isalnum() or character == " " or character in _TAG_PUNCTUATION


def _principal(entry: dict[str, Any], where: str) -> Principal:
    arn = entry.get("arn", "")
    match = _IAM_ARN.fullmatch(arn)  # not `$`: it also matches before a final newline
    if not match:
        raise PrincipalsFileError(f"{where}: 'arn' must be an IAM root, user or role ARN, got {arn!r}")
    partition, account, resource = match.groups()
    if "session_name" in entry and not resource.startswith("role/"):
        # Only a role's caller acts as a session; on a user or root the name would be dropped unsaid.
        raise PrincipalsFileError(f"{where}: 'session_name' is for roles only; {arn} is not a role")
    if "tags" in entry and resource == "root":
        raise PrincipalsFileError(f"{where}: 'tags' are for users and roles; IAM tags no account root")
    common = {"account": account, "access_key_id": entry["access_key_id"], "policies": _policies(entry, where),
              "tags": _tags(entry, where)}
    if resource == "root":
        return Principal(arn=arn, type=IdentityType.ROOT, principal_id=account, **common)
    kind, name = _kind_and_name(resource, where)
    if kind == "user":
        return Principal(arn=arn, type=IdentityType.IAM_USER, principal_id=_principal_id("AIDA", arn),
                         user_name=name, **common)
    session = entry.get("session_name", "keytrail-session")  # "" or 0 is a mistake, not the default
    if not isinstance(session, str) or not _SESSION_NAME.fullmatch(session):
        raise PrincipalsFileError(f"{where}: 'session_name' must be 1 to 64 letters, digits and +=,.@- "
                                  f"(an IAM role session name), got {session!r}")
    return Principal(
        arn=f"arn:{partition}:sts::{account}:assumed-role/{name}/{session}", type=IdentityType.ASSUMED_ROLE,
        principal_id=f"{_principal_id('AROA', arn)}:{session}", role_arn=arn, session_name=session, **common,
    )


def _kind_and_name(resource: str, where: str) -> tuple[str, str]:
    """The kind ("user" or "role") and the name that end `resource` (`user/<path><name>`), held to
    IAM's limits: `user/alice/` loaded as an IAMUser without a userName, `role/app/` acted as
    assumed-role//keytrail-session, and a name or path IAM refuses could be no real identity's."""
    kind, _, rest = resource.partition("/")
    path, _, name = f"/{rest}".rpartition("/")
    path += "/"
    if not 1 <= len(name) <= _NAME_AT_MOST:
        raise PrincipalsFileError(f"{where}: 'arn' ends with a {kind} name of {len(name)} characters; IAM's have 1 to "
                                  f"{_NAME_AT_MOST}")
    if path != "/" and not 3 <= len(path) <= _PATH_AT_MOST:
        raise PrincipalsFileError(f"{where}: 'arn' has a path of {len(path)} characters; an IAM path is / or 3 to "
                                  f"{_PATH_AT_MOST} characters beginning and ending with /")
    return kind, name


def _identity(principal: Principal) -> tuple[str, str, str]:
    """The IAM identity an entry's ARN names, as IAM tells them apart: the account, "root", "user"
    or "role", and the name in lower case (a user's or role's name is unique in its account whatever
    its case or path). Not its partition: the caller's follows the Region called (docs/principals.md)."""
    kind, _, rest = principal.policy_arn.split(":", 5)[5].partition("/")
    return principal.account, kind, rest.rpartition("/")[2].lower()


def load_principals(path: Path) -> dict[str, Credential]:
    """Parse a principals file into credentials by access key id."""
    return read_principals_file(path).credentials


def read_principals_file(path: Path) -> PrincipalsFile:
    """Parse a principals file: its [[principal]] and [[organization]] tables."""
    data = _read_toml(path)
    return PrincipalsFile(_credentials(_entries(data, path), path), _organizations(data, path))


def _credentials(entries: list[dict[str, Any]], path: Path) -> dict[str, Credential]:
    credentials: dict[str, Credential] = {}
    first_of: dict[tuple[str, str, str], tuple[int, Principal]] = {}  # each identity's first entry
    for index, entry in enumerate(entries, 1):
        where = f"{path}: principal #{index}"
        _check_fields(entry, where)
        if entry["access_key_id"] in credentials:
            raise PrincipalsFileError(f"{where}: access key {entry['access_key_id']} is used twice")
        principal = _principal(entry, where)
        _check_same_identity(principal, index, first_of.setdefault(_identity(principal), (index, principal)), where)
        credentials[entry["access_key_id"]] = Credential(entry["secret_access_key"], principal)
    return credentials


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's tables; PrincipalsFileError if it cannot be read as a principals file. Read
    without waiting, a regular file only: a FIFO in its place (whoever can write the data dir can
    make one) kept `serve` from starting, and a SIGHUP then stopped the event loop for good."""
    try:
        data = tomllib.loads(read_regular_text(path, "utf-8-sig"))  # TOML is UTF-8; a leading BOM is allowed
    except OSError as exc:  # its reason alone: str(exc) is Python's "[Errno 21] Is a directory: '…'"
        raise PrincipalsFileError(f"{path}: cannot read the principals file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PrincipalsFileError(f"{path}: {exc}") from None
    except UnicodeDecodeError:  # a binary file, or the wrong file named
        raise PrincipalsFileError(f"{path}: not a TOML principals file (not UTF-8 text)") from None
    except RecursionError:  # tomllib recurses per level: arrays or inline tables some hundreds deep
        raise PrincipalsFileError(f"{path}: not a TOML principals file (values nested too deeply)") from None
    unknown = sorted(set(data) - {"principal", "organization"})
    if unknown:
        raise PrincipalsFileError(f"{path}: unknown entry {unknown[0]!r}: principals are [[principal]] tables, "
                                  "organizations [[organization]] tables")
    return data


def _entries(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The file's [[principal]] tables."""
    entries = data.get("principal", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise PrincipalsFileError(f"{path}: principals are [[principal]] tables (note the double brackets)")
    return entries


def _organizations(data: dict[str, Any], path: Path) -> dict[str, str]:
    """The organization id of each account the [[organization]] tables list. Checked as AWS
    Organizations has them: an id of its form, each account in one organization at most."""
    tables = data.get("organization", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise PrincipalsFileError(f"{path}: organizations are [[organization]] tables (note the double brackets)")
    organization_of: dict[str, str] = {}
    for index, table in enumerate(tables, 1):
        where = f"{path}: organization #{index}"
        if unknown := sorted(set(table) - set(_ORGANIZATION_FIELDS)):
            raise PrincipalsFileError(f"{where}: unknown field {unknown[0]!r} (an organization has id, accounts)")
        organization = table.get("id")
        if not isinstance(organization, str) or not ORGANIZATION_ID.fullmatch(organization):
            raise PrincipalsFileError(f"{where}: 'id' must be an AWS Organizations id, o- and 10 to 32 lowercase "
                                      f"letters or digits, got {organization!r}")
        if organization in organization_of.values():
            raise PrincipalsFileError(f"{where}: organization {organization} is listed twice")
        accounts = table.get("accounts")
        if not isinstance(accounts, list) or not accounts or not all(
                isinstance(account, str) and _ACCOUNT.fullmatch(account) for account in accounts):
            raise PrincipalsFileError(f"{where}: 'accounts' must be a list of 12-digit account ids")
        for account in accounts:
            if (other := organization_of.setdefault(account, organization)) != organization:
                raise PrincipalsFileError(f"{where}: account {account} is in organization {other} already; an "
                                          "account belongs to one organization at most")
    return organization_of


def _check_fields(entry: dict[str, Any], where: str) -> None:
    """Refuse an entry with a field unknown, missing or empty, or an access key id no request can name."""
    if unknown := sorted(set(entry) - set(_FIELDS)):  # a misspelt `policies` would drop them unsaid
        raise PrincipalsFileError(f"{where}: unknown field {unknown[0]!r} (a principal has {', '.join(_FIELDS)})")
    for name in ("arn", "access_key_id", "secret_access_key"):
        if entry.get(name) is None:
            raise PrincipalsFileError(f"{where}: '{name}' is required")
        if not isinstance(entry[name], str) or not entry[name]:  # present: "required" would mislead
            raise PrincipalsFileError(f"{where}: '{name}' must be a non-empty string")
    if not _ACCESS_KEY_ID.fullmatch(entry["access_key_id"]):
        raise PrincipalsFileError(f"{where}: 'access_key_id' cannot hold blanks, commas, slashes or characters "
                                  f"other than ASCII (an Authorization header could not name it), "
                                  f"{_first_refused(entry['access_key_id'])}")


def _first_refused(access_key_id: str) -> str:
    """Where an access key id breaks the rule, without the id itself: one with a "/" is most often
    the secret access key, the two fields swapped (AWS's secrets hold "/" and "+"), and the message
    goes to the terminal and, on a reload, to the log."""
    position, character = next((i, c) for i, c in enumerate(access_key_id, 1) if not _ACCESS_KEY_ID.fullmatch(c))
    swapped = " (is it the secret access key? the two may be swapped)" if character == "/" else ""
    return f"has {character!r} at character {position} of {len(access_key_id)}{swapped}"


def _check_same_identity(principal: Principal, index: int, first: tuple[int, Principal], where: str) -> None:
    """An identity with two access keys (a user rotating its key, a role's sessions) has one set of
    identity policies and tags in IAM, whichever key signs: entries that differ would make a call's
    permissions depend on the key it was signed with, and a copied entry that lost its policies
    would leave the new key denied without a word on load."""
    first_index, first_principal = first
    if first_index == index:
        return
    for what in ("policies", "tags"):
        if getattr(principal, what) != getattr(first_principal, what):
            raise PrincipalsFileError(f"{where}: {principal.policy_arn} has other {what} in principal #{first_index}; "
                                      f"an identity's {what} are the same whichever access key signs")
    if _spelling(principal) != _spelling(first_principal):
        # IAM gives an identity one ARN. Key policies and grants name it by that ARN, exactly: two
        # spellings made one user two callers, and a Deny naming user/bob missed the calls signed
        # with its key written user/staff/Bob. The partition is not the spelling (the Region sets it).
        raise PrincipalsFileError(f"{where}: {principal.policy_arn} is {first_principal.policy_arn} of principal "
                                  f"#{first_index} with another path or case; an identity's ARN is the same "
                                  "whichever access key signs")


def _spelling(principal: Principal) -> str:
    """The ARN the entry gives its identity (a role's, for its sessions), less its partition."""
    return principal.policy_arn.split(":", 2)[2]


class CredentialStore:
    """Looks up the principal behind an access key. With `dev_credentials`, any key is accepted
    (signature not checked) as the root of the account its 12-digit id names, else 000000000000."""

    def __init__(self, path: Path | None, *, dev_credentials: bool = False) -> None:
        self.path = path
        self.dev_credentials = dev_credentials
        loaded = read_principals_file(path) if path else PrincipalsFile({}, {})
        if path:
            _check_not_shared(path)
        self._credentials = loaded.credentials
        self.organizations = loaded.organizations  # account → organization id, for the request context
        # How many reloads took: a request checked against an earlier generation, its headers before
        # a reload and its body after, is checked again (KmsApp._current in api/app.py).
        self.generation = 0
        if path:
            self._warn_if_empty()

    def reload(self) -> None:
        """Re-read the principals file (SIGHUP); a broken file, or one other users can change,
        keeps the old credentials."""
        if self.path:
            loaded = read_principals_file(self.path)
            _check_not_shared(self.path)
            self._credentials, self.organizations = loaded.credentials, loaded.organizations
            self.generation += 1
            self._warn_if_empty()

    def _warn_if_empty(self) -> None:
        """A file that names nobody parses, and every call is then refused as an unknown key."""
        if not self._credentials and not self.dev_credentials:
            log.warning("the principals file %s names no principal: every call will be refused "
                        "(UnrecognizedClientException) until it has a [[principal]] entry and is reloaded", self.path)

    def lookup(self, access_key_id: str) -> Credential | None:
        credential = self._credentials.get(access_key_id)
        if credential is None and self.dev_credentials:
            account = access_key_id if re.fullmatch(r"[0-9]{12}", access_key_id) else DEV_ACCOUNT
            return Credential("", Principal.account_root(account, access_key_id))
        return credential

    def verifies_signatures(self, access_key_id: str) -> bool:
        return access_key_id in self._credentials or not self.dev_credentials


def _check_not_shared(path: Path) -> None:
    """PrincipalsFileError when the group or others may write the file: any user could add an
    access key of their own, as an admin. Said when another user owns it (a file bind-mounted from
    the host, as docker-compose.yml's, is its operator's, and read-only inside) or others may read
    it: it holds every secret access key in clear (SigV4 needs the secret itself)."""
    try:
        found = path.stat()
    except OSError as exc:  # removed since it was read
        raise PrincipalsFileError(f"{path}: cannot read the principals file: {exc.strerror or exc}") from None
    if (writable := sharing_problem(found, owner=False)) is not None and writable.changeable:
        raise PrincipalsFileError(f"the principals file {path} {writable}: another user could give themselves any "
                                  f"identity: {writable.fix}")
    if (problem := sharing_problem(found)) is not None:
        log.warning("the principals file %s %s: %s", path, problem, problem.fix)


def write_admin_principals(path: Path, account: str = "111122223333") -> tuple[str, str]:
    """Create a principals file (mode 0600) with one admin user; return its key pair."""
    access_key = "AKIA" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    fd = open_file(path, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "w") as handle:
        handle.write(_admin_principals(access_key, secret, account))
    return access_key, secret


def read_admin_principals(path: Path, account: str = "111122223333") -> tuple[str, str] | None:
    """The key pair of a principals file exactly as `write_admin_principals` wrote it; None for any
    other file (edited, written by hand, unreadable): its secret is not keytrail's to print."""
    try:
        text = read_regular_text(path)
    except (OSError, UnicodeDecodeError):
        return None
    found = _ADMIN_KEYS.search(text)
    if found is None or text != _admin_principals(found[1], found[2], account):
        return None
    return found[1], found[2]


_ADMIN_KEYS = re.compile(r'^access_key_id = "(AKIA[0-9A-F]{16})"\nsecret_access_key = "([A-Za-z0-9_-]{40})"$', re.M)


def _admin_principals(access_key: str, secret: str, account: str) -> str:
    policy = json.dumps({"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
    return (
        "# keytrail principals: see docs/principals.md\n[[principal]]\n"
        f'arn = "arn:aws:iam::{account}:user/admin"\n'
        f'access_key_id = "{access_key}"\nsecret_access_key = "{secret}"\n'
        f"policies = ['''{policy}''']\n"
    )
