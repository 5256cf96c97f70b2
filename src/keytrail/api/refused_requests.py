"""Requests refused before there is a caller: an unknown access key, a signature that does not
verify, an Authorization header missing or malformed.

They get no audit record: the trail records calls by an identity, as CloudTrail does, and here
the identity is what could not be established (a record would name whoever the request claims to
be). Unseen, though, a caller guessing secrets, or a client whose clock drifted past the 5-minute
window, would leave no trace at all. So they are counted by error code for /metrics and logged,
thinned: the first refusal of a code from an address at once, then at most one line a minute for
that pair, saying how many were refused since its last line (said by `say_overdue`, which the
node calls every few seconds, when no later refusal comes to say it). A flood from many addresses cannot
grow the memory this takes past MAX_SOURCES pairs, nor the log past MAX_LINES lines a minute: a
sender rotating its source address (an IPv6 host has a /64 of them) would otherwise write one
line per request, as fast as it sends.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable

from keytrail.kms.errors import KmsError

__all__ = ["LOG_EVERY_SECONDS", "MAX_LINES", "MAX_SOURCES", "RefusedRequests"]

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 60.0
MAX_SOURCES = 10_000
MAX_LINES = 100  # lines of first refusals from an address, in all, per LOG_EVERY_SECONDS

# The access key a request names, when it names one that looks like an access key: the rest of
# the header is the sender's own text, and is not written to the log.
_ACCESS_KEY = re.compile(r"Credential=([A-Z0-9]{16,128})/")
# What a Credential names before its scope (/YYYYMMDD/region/service/aws4_request), or all of it
# without one: an access key id, or, from a client given its key pair the wrong way round, the
# secret access key, which AWS's secrets often hold a "/" in and so break the scope the error
# message then quotes ("Credential must have exactly 5 slash-delimited elements, …, got '<secret>/2026…'").
_CREDENTIAL_KEY = re.compile(r"Credential=([^,\s]*?)(?:/\d{8}(?:/|[,\s]|$)|[,\s]|$)")
_READABLE_KEY = re.compile(r"[A-Z0-9]{16,128}")
# The whole Credential, and the scope a well-formed one ends with after its key: anything else
# there (a 6th element, a secret pasted after the key id) is the sender's text, and is not logged.
_WHOLE_CREDENTIAL = re.compile(r"Credential=([^,\s]*)")
_SCOPE = re.compile(r"/\d{8}/[a-z0-9-]{1,64}/[a-z0-9-]{1,64}/aws4_request")
_MIN_HIDDEN = 4  # characters of a Credential, or of its head where a message ends cut short, worth hiding


class RefusedRequests:
    """The counts by error code (`counts`, for /metrics) and the thinned log lines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._quiet_until: dict[tuple[str, str], float] = {}  # (address, code): when its next line may go
        self._unsaid: Counter[tuple[str, str]] = Counter()  # refusals since the pair's last line
        self._window = (-LOG_EVERY_SECONDS, 0)  # (when the current minute of lines began, lines in it)
        self._beyond: Counter[str] = Counter()  # by code: first refusals past MAX_LINES, not yet said
        self._beyond_from: set[str] = set()  # their addresses (at most MAX_SOURCES counted)

    def refused(self, error: KmsError, source_ip: str, authorization: str | None) -> None:
        self.counts[error.code] += 1
        pair, now = (source_ip, error.code), self._clock()
        if now < self._quiet_until.get(pair, 0.0):
            self._unsaid[pair] += 1
            return
        if not self._may_log(now):
            self._hold_back(pair, 1)
            return
        if len(self._quiet_until) >= MAX_SOURCES:
            self._quiet_until.clear()
            self._unsaid.clear()
        self._quiet_until[pair] = now + LOG_EVERY_SECONDS
        since = self._unsaid.pop(pair, 0)
        named = _ACCESS_KEY.search(authorization or "")
        log.warning("refused a request from %s before authentication (%s, access key %s): %s%s", source_ip,
                    error.code, named.group(1) if named else "none readable",
                    _printable(_without_credential(error.message, authorization)),
                    f" ({since} more from there since its last line)" if since else "")

    def say_overdue(self) -> None:
        """Say what the thinning held back once its minute is over, when no later refusal came to
        say it: a flood that stopped kept its count (and the summary of addresses past MAX_LINES)
        to itself until the next refusal, which may never come. Pairs whose minute is over and
        that have nothing unsaid are forgotten, so the next refusal from them is a first again."""
        now = self._clock()
        for pair in [pair for pair, until in self._quiet_until.items() if until <= now]:
            del self._quiet_until[pair]
            if since := self._unsaid.pop(pair, 0):
                self._say_unsaid(pair, since, now)
        started, _ = self._window
        if now - started >= LOG_EVERY_SECONDS and self._beyond:
            self._say_beyond()
            self._window = (now, 0)

    def _say_unsaid(self, pair: tuple[str, str], since: int, now: float) -> None:
        """One line for a pair's refusals since its last line, within this minute's MAX_LINES;
        past them, they join the minute's summary."""
        if not self._may_log(now):
            self._hold_back(pair, since)
            return
        self._quiet_until[pair] = now + LOG_EVERY_SECONDS
        log.warning("refused %d more requests from %s before authentication (%s) since its last line",
                    since, *pair)

    def _hold_back(self, pair: tuple[str, str], refusals: int) -> None:
        """Count refusals past this minute's MAX_LINES for its summary line."""
        source_ip, code = pair
        self._beyond[code] += refusals
        if len(self._beyond_from) < MAX_SOURCES:
            self._beyond_from.add(source_ip)

    def _may_log(self, now: float) -> bool:
        """Whether this minute's lines are fewer than MAX_LINES; the first line of a new minute
        first says what the last one left out."""
        started, lines = self._window
        if now - started >= LOG_EVERY_SECONDS:
            self._say_beyond()
            started, lines = now, 0
        self._window = (started, lines + 1)
        return lines < MAX_LINES

    def _say_beyond(self) -> None:
        if not self._beyond:
            return
        codes = ", ".join(f"{code} {count}" for code, count in sorted(self._beyond.items()))
        addresses = len(self._beyond_from)
        log.warning("refused %d more requests before authentication from %s%d addresses without a line each "
                    "(over %d lines a minute): %s", sum(self._beyond.values()),
                    "at least " if addresses >= MAX_SOURCES else "", addresses, MAX_LINES, codes)
        self._beyond.clear()
        self._beyond_from.clear()


def _without_credential(message: str, authorization: str | None) -> str:
    """`message` without the Credential the header names, unless that reads as an access key id:
    messages quote the header, and what a Credential holds in place of one may be the secret
    access key. Its head is also taken off where the message ends with it, cut short (a message
    quotes at most the first 200 characters of the header)."""
    found = _CREDENTIAL_KEY.search(authorization or "")
    key = found.group(1) if found else ""
    whole = _WHOLE_CREDENTIAL.search(authorization or "")
    scope = whole.group(1)[len(key):] if whole else ""
    if scope and not _SCOPE.fullmatch(scope):  # quoted whole by "… 5 slash-delimited elements, got '…'"
        message = message.replace(scope, "/***")
    if len(key) < _MIN_HIDDEN or _READABLE_KEY.fullmatch(key):
        return message
    # Where the message quotes it, not inside one of its words (a Credential "lid" in "invalid").
    message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", "***", message)
    for length in range(len(key) - 1, _MIN_HIDDEN - 1, -1):
        message, cut = re.subn(rf"(?<![A-Za-z0-9]){re.escape(key[:length])}\Z", "***", message)
        if cut:
            break
    return message


def _printable(text: str) -> str:
    """The message as one line: it quotes parts of the sender's header, which may hold any character."""
    return "".join(c if c.isprintable() else "?" for c in text[:400])
