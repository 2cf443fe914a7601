"""The engine's heartbeat, and whether the engine is fit to take traffic.

The engine thread writes (plain attribute stores); the event loop reads. A stale read
costs at most one probe interval of accuracy, so no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

STALLED = "engine_stalled"
FAILING = "engine_failing"
DEAD = "engine_dead"


@dataclass(frozen=True)
class HealthStatus:
    ok: bool
    reason: str | None  # None, STALLED, FAILING or DEAD
    detail: str
    heartbeat_age_s: float
    consecutive_failures: int
    pending: int

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else self.reason,
            "heartbeat_age_s": round(self.heartbeat_age_s, 3),
            "consecutive_failures": self.consecutive_failures,
            "pending": self.pending,
        }


class Heartbeat:
    """Last loop time and consecutive failed steps of one engine.

    Stalled: work is pending and the loop has not beaten for `stall_timeout` seconds.
    Failing: `max_failures` steps in a row failed (a successful step clears it).
    Either limit at 0 turns that check off.
    """

    def __init__(
        self,
        stall_timeout: float,
        max_failures: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_timeout = max(0.0, stall_timeout)
        self.max_failures = max(0, max_failures)
        self._clock = clock
        self.last_beat = clock()
        self.last_failure = 0.0
        self.consecutive_failures = 0

    def beat(self) -> None:
        self.last_beat = self._clock()

    def failed(self) -> None:
        self.consecutive_failures += 1
        self.last_failure = self._clock()

    def succeeded(self) -> None:
        self.consecutive_failures = 0

    @property
    def failing(self) -> bool:
        return self.max_failures > 0 and self.consecutive_failures >= self.max_failures

    def status(self, pending: int, alive: bool) -> HealthStatus:
        age = max(0.0, self._clock() - self.last_beat)
        failures = self.consecutive_failures

        def result(reason: str | None, detail: str) -> HealthStatus:
            return HealthStatus(reason is None, reason, detail, age, failures, pending)

        if not alive:
            return result(DEAD, "the engine thread has stopped")
        if self.stall_timeout > 0 and pending > 0 and age > self.stall_timeout:
            return result(
                STALLED,
                f"no engine heartbeat for {age:.1f} s with {pending} request(s) pending",
            )
        if self.failing:
            return result(FAILING, f"{failures} engine steps in a row failed")
        return result(None, "")
