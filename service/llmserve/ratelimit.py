"""Token-bucket rate limiting per API key (or client address when auth is off), and of
failed authentications per client address."""

from __future__ import annotations

import math
import time
from collections import OrderedDict


class RateLimiter:
    """`rate` requests per second per key, bursts up to `burst`.

    Buckets live in an LRU of bounded size, so many distinct clients cannot grow memory
    without limit. Used from the event loop only (no locking).
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = float(max(1, burst))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may take a token (0 when it may now); takes none."""
        if not self.enabled or key not in self._buckets:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets[key]
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def check(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`. Returns 0 when allowed, else seconds until allowed."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        """Value for the Retry-After header (whole seconds, at least 1)."""
        return max(1, math.ceil(wait))
