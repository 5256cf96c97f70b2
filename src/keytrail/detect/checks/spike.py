"""`usage-spike`: a key x principal's calls in one minute far above its rolling per-minute baseline.

CloudTrail Insights-style (audit-anchors §2.1) for the read calls Insights cannot see: the
baseline is the average calls per minute over the last `baseline_days` (or the pair's history,
if shorter); the alarm carries the baseline and the observed rate.

What it keeps is bounded: a pair idle for longer than `baseline_days` is let go at a tick, and of
each key only the pairs of KEY_PRINCIPALS callers are kept at once (a key every federated user
calls, each its own principal, would otherwise grow the detector with each of them).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from keytrail.detect.alarms import Finding
from keytrail.detect.checks import caller_id, caller_name, caller_scope
from keytrail.detect.events import KmsEvent
from keytrail.detect.ledger import KEY_PRINCIPALS, UNCONFIRMED_KEYS, KeyLedger
from keytrail.detect.rules import Rule
from keytrail.detect.severity import Severity

__all__ = ["UsageSpike"]

# Minutes of event time between two looks for idle pairs at a tick: a look reads every pair, and a
# live detector ticks every few seconds; a pair idle for days may stay an hour longer.
_SWEEP_EVERY = 60
# Minutes a call may be dated before its pair's latest minute and still count in that minute: the
# calls of several nodes, or of one crossing a minute's end, come a little out of order. A call dated
# earlier (a node's clock stepped back, and its calls repeat minutes the pair has had) counts in its
# own minute: counted in the latest, every call of the minutes the step repeats piled up in one, and a
# pair calling at its steady rate fired (2 calls a minute, stepped back 15 minutes: "21 calls/min").
# Below `factor` (10) minutes, so that what does pile up stays under a spike.
_LATE_MINUTES = 2


@dataclass(slots=True)
class _Rate:
    """Per-minute call counts of one key x principal."""

    first_minute: int
    minute: int
    count: int = 0
    total: int = 0  # calls in `past`
    # (minute, count) of the earlier minutes with calls; None until the pair's second minute: an
    # empty deque is 760 bytes, most of a pair's memory, and most pairs of many keys x principals
    # are seen in one minute only.
    past: deque[tuple[int, int]] | None = None
    # The minutes of `past` that no later minute outdoes, counts falling (a sliding-window maximum):
    # the first is the busiest minute of the baseline, kept without scanning `past` each call.
    peaks: deque[tuple[int, int]] | None = None
    fired_minute: int = -1
    # The count at which the minute that fired below HIGH becomes HIGH (None: it fired HIGH already,
    # or not at all): the minute's later calls are watched for it, not only the call that fired.
    high_at: float | None = None

    def roll(self, minute: int, horizon: int) -> None:
        """Move on to a later `minute`, dropping counts older than `horizon` minutes. A pair silent
        for longer than the horizon starts its history again: its baseline of zero calls would
        make any return to work a spike."""
        if minute - self.minute > horizon:
            self.first_minute, self.minute, self.count, self.total = minute, minute, 0, 0
            self.past = self.peaks = None
            return
        past, peaks = self.past, self.peaks
        if self.count:
            if past is None or peaks is None:  # the two come and go together
                past, peaks = self.past, self.peaks = deque(), deque()
            past.append((self.minute, self.count))
            self.total += self.count
            while peaks and peaks[-1][1] <= self.count:
                peaks.pop()
            peaks.append((self.minute, self.count))
        self.minute, self.count = minute, 0
        while past and past[0][0] < minute - horizon:
            self.total -= past.popleft()[1]
        while peaks and peaks[0][0] < minute - horizon:
            peaks.popleft()
        if past is not None and not past:  # all older than the horizon: as light as a new pair again
            self.past = self.peaks = None

    def peak(self) -> int:
        """Calls in the busiest minute of the baseline (0 without one)."""
        return self.peaks[0][1] if self.peaks else 0

    def count_late(self, minute: int, horizon: int) -> None:
        """Count a call of `minute`, earlier than the pair's latest, in that minute's baseline (a
        call older than the baseline is not counted). Not judged: its minute has passed."""
        if minute < self.minute - horizon:
            return
        if self.past is None or self.peaks is None:
            self.past, self.peaks = deque(), deque()
        count = _add_call(self.past, minute)
        self.total += 1
        self.first_minute = min(self.first_minute, minute)
        _raise_peak(self.peaks, minute, count)


def _add_call(past: deque[tuple[int, int]], minute: int) -> int:
    """Add a call to `minute` in `past` (minutes rising) and return its count there. Searched from
    the end: a late call is mostly of a recent minute."""
    at = len(past)
    while at and past[at - 1][0] > minute:
        at -= 1
    if at and past[at - 1][0] == minute:
        count = past[at - 1][1] + 1
        past[at - 1] = (minute, count)
        return count
    past.insert(at, (minute, 1))
    return 1


def _raise_peak(peaks: deque[tuple[int, int]], minute: int, count: int) -> None:
    """Keep `peaks` the minutes no later minute outdoes (counts falling) once `minute`'s count rose
    to `count`: it joins them unless a later one has as many calls, and outdoes the earlier ones
    with no more calls than it (just before it, as counts fall)."""
    at = len(peaks)
    while at and peaks[at - 1][0] > minute:
        at -= 1
    if at < len(peaks) and peaks[at][1] >= count:
        return  # outdone by a later minute (so it was no peak before either)
    if at and peaks[at - 1][0] == minute:
        at -= 1
        del peaks[at]
    while at and peaks[at - 1][1] <= count:
        at -= 1
        del peaks[at]
    peaks.insert(at, (minute, count))


class UsageSpike:
    """Fires once per spiking minute, when the count crosses `factor` x baseline, `peak_factor` x
    the baseline's busiest minute (and `min_calls`), and once more, HIGH, if that minute's count
    goes on to reach `high_factor` x baseline."""

    rule_id = "usage-spike"
    event_names = None

    def __init__(self, rule: Rule, ledger: KeyLedger, unconfirmed_limit: int = UNCONFIRMED_KEYS,
                 principals_limit: int = KEY_PRINCIPALS) -> None:
        self.rule, self.ledger = rule, ledger
        self._rates: dict[tuple[str, str], _Rate] = {}  # pairs of keys seen to exist
        # Key ARN -> the principals of its pairs in `_rates`: a key's DeleteKey drops them, which a
        # node creating and deleting keys otherwise kept for good (some 600 bytes a pair). At most
        # `principals_limit` of them: the callers past it are not judged until idle pairs are let go.
        self._principals: dict[str, list[str]] = {}
        self._principals_limit = principals_limit
        # Pairs of keys no successful call named yet (denied probes of random ARNs, say): only the
        # latest `unconfirmed_limit`, as the ledger keeps those keys, so that they cannot grow the
        # detector without bound; a pair moves to `_rates` once its key is seen to exist.
        self._probes: OrderedDict[tuple[str, str], _Rate] = OrderedDict()
        self._probes_limit = unconfirmed_limit
        self._horizon = int(float(rule.param("baseline_days")) * 1440)
        self._min_history = int(rule.param("min_history_minutes"))
        self._min_calls = int(rule.param("min_calls"))
        self._factor = float(rule.param("factor"))
        self._high_factor = float(rule.param("high_factor"))
        self._peak_factor = float(rule.param("peak_factor"))
        self._last_minute = (datetime.min, 0)  # the last event time seen and its minute
        self._swept_minute = -_SWEEP_EVERY  # the minute idle pairs were last let go as of

    def observe(self, event: KmsEvent) -> list[Finding]:
        # Every event of the stream passes here: the common case (same pair, same minute, under
        # min_calls) is kept to a lookup and two comparisons.
        key_arn = event.key_arn
        if key_arn is None or event.event_name == "DeleteKey":
            if key_arn is not None:  # KMS's own event, when the wait ends
                self._forget(key_arn)
            return []
        # A caller with no ARN (a SAML or web identity user, an AWS service) by its account and
        # what tells it apart there: stolen federated credentials surge as any others do.
        pair = (key_arn, event.principal_arn or caller_id(event))
        minute = self._minute(event.event_time)
        rate = self._rates.get(pair) or self._rate_of_new_pair(pair, minute)
        if rate is None:  # a caller of a key whose pairs are all kept
            return []
        if minute > rate.minute:
            rate.roll(minute, self._horizon)
        elif minute < rate.minute - _LATE_MINUTES:
            rate.count_late(minute, self._horizon)
            return []
        rate.count += 1  # a call a little late counts in the current minute
        if rate.count < self._min_calls:
            return []
        if rate.fired_minute == rate.minute:
            return self._escalate(event, rate) if rate.high_at is not None and rate.count >= rate.high_at else []
        return self._judge(event, rate)

    def pairs(self) -> int:
        """Key x principal pairs whose rates are kept."""
        return len(self._rates) + len(self._probes)

    def _rate_of_new_pair(self, pair: tuple[str, str], minute: int) -> _Rate | None:
        """The rate of a pair not in `_rates`: a probe's (moved to `_rates` once its key exists) or
        a new one; None when the key has `principals_limit` pairs already."""
        key_arn, principal = pair
        probe = self._probes.pop(pair, None)
        if not self.ledger.exists(key_arn):
            rate = self._probes[pair] = probe or _Rate(minute, minute)  # the most recent last
            if len(self._probes) > self._probes_limit:
                self._probes.popitem(last=False)
            return rate
        principals = self._principals.setdefault(key_arn, [])
        if len(principals) >= self._principals_limit:
            return None
        principals.append(principal)
        rate = self._rates[pair] = probe or _Rate(minute, minute)
        return rate

    def _forget(self, key_arn: str) -> None:
        for principal in self._principals.pop(key_arn, ()):
            del self._rates[key_arn, principal]

    def _minute(self, moment: datetime) -> int:
        # CloudTrail times are whole seconds, so consecutive events mostly share one: its minute
        # is worked out once per run (datetime.timestamp was a fifth of this check's cost).
        if moment != self._last_minute[0]:
            self._last_minute = (moment, int(moment.timestamp()) // 60)
        return self._last_minute[1]

    def _judge(self, event: KmsEvent, rate: _Rate) -> list[Finding]:
        history, baseline = self._baseline(rate)
        if history < self._min_history:
            return []
        # A regularly bursty pair (a nightly batch at 30x its average) is judged against its
        # busiest minute too, or every one of its bursts would be a spike.
        if rate.count < self._factor * baseline or rate.count < self._peak_factor * rate.peak():
            return []
        rate.fired_minute = rate.minute
        high_at = self._high_factor * baseline
        rate.high_at = None if rate.count >= high_at else high_at
        return [self._finding(event, rate, baseline, history)]

    def _escalate(self, event: KmsEvent, rate: _Rate) -> list[Finding]:
        """The minute that fired goes on to HIGH: judged only at the call that crossed `factor` x
        baseline, a surge of any size stayed MEDIUM for a pair whose baseline was over
        `min_calls` / `high_factor` (2 calls a minute by default)."""
        rate.high_at = None
        history, baseline = self._baseline(rate)
        return [self._finding(event, rate, baseline, history)]

    def _baseline(self, rate: _Rate) -> tuple[int, float]:
        """(minutes of history, average calls per minute over them): none yet with
        `min_history_minutes` 0, which a pair's first minute divided by."""
        history = min(rate.minute - rate.first_minute, self._horizon)
        return history, rate.total / history if history else 0.0

    def tick(self, now: datetime) -> list[Finding]:
        # As of the last event, if earlier than `now`: a stream running behind the clock still
        # brings calls a tick's time has left behind, which must find their pairs' history.
        latest = min(int(now.timestamp()) // 60, self._last_minute[1])
        if latest - self._swept_minute >= _SWEEP_EVERY:
            self._swept_minute = latest
            self._let_go_of_idle_pairs(latest)
        return []

    def _let_go_of_idle_pairs(self, latest: int) -> None:
        """Drop the pairs with no call within `baseline_days` before `latest`: the next call of one
        would start its history again (`_Rate.roll`), just as a new pair's starts."""
        for key_arn, principals in list(self._principals.items()):
            active = []
            for principal in principals:
                if latest - self._rates[key_arn, principal].minute > self._horizon:
                    del self._rates[key_arn, principal]
                else:
                    active.append(principal)
            if active:
                self._principals[key_arn] = active
            else:
                del self._principals[key_arn]

    def _finding(self, event: KmsEvent, rate: _Rate, baseline: float, history: int) -> Finding:
        observed = rate.count
        high = observed >= self._high_factor * baseline
        return Finding.on_event(
            self.rule_id,
            event,
            severity=Severity.HIGH if high else None,
            summary=f"{caller_name(event)} made {observed} calls/min on {event.key_arn} "
            f"against a baseline of {baseline:.2f}/min",
            recommendation="Confirm the caller's new load is expected (deploy, backfill, cache off); "
            "if not, treat its credentials as compromised. Data-key caching or S3 "
            "Bucket Keys cut KMS calls and cost.",
            details={
                "baselineAverage": f"{baseline:.4f}",
                "observedRate": str(observed),
                "baselineDurationMinutes": str(history),
                "baselinePeakRate": str(rate.peak()),
                "eventName": event.event_name,
            },
            scope=caller_scope(event),
        )
