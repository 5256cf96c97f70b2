"""An alarm's attempts at a hook, and what tells a hook that is down from one that refuses an alarm.

A hook that answers and refuses an alarm (a webhook's 4xx but 408 and 429, a record Kafka will
not take) is given up on after the alarm's attempts. A hook out of reach (connection refused, a
timeout, no broker, a webhook's 408, 429, 502, 503, 504 or a CDN's 521-524: `webhook.UNAVAILABLE`)
is another matter: every alarm behind the head one would most likely fail the same way, so the
delivery ends `down` and the dispatcher waits for the hook to come back, keeping the alarms queued
(unless the hook, reached, takes the alarms behind: see the dispatcher's `_deliver`). While a hook
is known down, a delivery is one attempt, the dispatcher's probe, logged by the dispatcher (once
when the hook goes down, once when it is back) rather than once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

__all__ = ["LONGEST_WAIT", "Attempts", "Failure", "retry_waits"]

log = logging.getLogger("keytrail.detect.sinks")


# The longest wait between two attempts of one delivery (unless `backoff` itself is longer), as the
# dispatcher's probes of a hook that is down wait 30 s at most. Doubled without a bound, a webhook
# given `attempts = 20` held an alarm its receiver refused (a 4xx), and every alarm behind it, for
# three days; from 1,025 attempts the wait was too large for a float, and the OverflowError lost
# every alarm for that hook, neither delivered nor dead-lettered.
LONGEST_WAIT = 30.0


def retry_waits(attempts: int, backoff: float) -> Iterator[float | None]:
    """The hooks' retry schedule: what to wait after each failed attempt of a delivery tried
    `attempts` times, `backoff` doubled each time (0.5, 1, 2, 4 s by default) up to LONGEST_WAIT
    (or `backoff`, if longer), and None after the last, which ends the delivery at once (waiting
    then would only hold the alarms queued behind). Lazy: `attempts` may be any whole number."""
    wait, longest = backoff, max(backoff, LONGEST_WAIT)
    for _ in range(attempts - 1):
        yield wait
        wait = min(wait * 2, longest)
    yield None


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one attempt failed; `down`: for want of the hook (it did not answer, or answered that it
    cannot take anything now), not because it refused this alarm; `reached`: the hook was reached
    (a webhook's answer, an MQTT connection open), so the failure may be about this alarm alone."""

    reason: str
    down: bool
    reached: bool = False


class Attempts:
    """The attempts of one hook's deliveries: up to `attempts` with backoff while the hook answers,
    one while it is known down (since a delivery ended down, until an attempt gets an answer)."""

    def __init__(self, hook: str, attempts: int, backoff: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.hook, self.attempts, self.backoff = hook, attempts, backoff
        self.down = False
        self._sleep = sleep  # the waits between attempts (injected by tests)

    async def run(self, attempt: Callable[[], Awaitable[Failure | None]], alarm_id: str) -> Failure | None:
        """Call `attempt` until it succeeds (None) or the schedule ends; the last failure, if any."""
        failure: Failure | None = None
        for number, wait in enumerate(retry_waits(self.attempts, self.backoff), 1):
            failure = await attempt()
            if failure is None:
                self.down = False
                return None
            if self.down and failure.down:  # a probe of a hook still down: the dispatcher waits
                return failure
            self.down = False  # it answered, or this alarm gets its full schedule
            log.warning("%s: alarm %s attempt %d failed: %s", self.hook, alarm_id, number, failure.reason)
            if wait is not None:
                await self._sleep(wait)
        self.down = failure is not None and failure.down
        return failure
