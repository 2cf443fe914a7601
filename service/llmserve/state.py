"""What the handlers share: settings, auth, limits, the engine, and whether to take traffic."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from llmserve.auth import Authenticator
from llmserve.config import Settings
from llmserve.engine import BaseEngine
from llmserve.loader import LoadedModel
from llmserve.metrics import Metrics
from llmserve.params import GenerationDefaults
from llmserve.promptlog import PromptLog
from llmserve.ratelimit import RateLimiter


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str | None = None  # a phase, "draining", or an engine health reason
    detail: str = ""


class ServiceState:
    """Everything the handlers share; the server fills in the engine once loaded."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.auth = Authenticator(
            settings.api_keys_file,
            settings.jwt_secret_file,
            settings.jwt_public_key_file,
            settings.jwt_algorithm,
            settings.jwt_audience,
            settings.jwt_issuer,
        )
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        # Failed authentications per client address: a key cannot be guessed at speed.
        self.auth_failures = RateLimiter(settings.auth_failure_rps, settings.auth_failure_burst)
        self.prompt_log = PromptLog()
        self.engine: BaseEngine | None = None
        self.loaded: LoadedModel | None = None
        self.defaults = GenerationDefaults()
        self.phase = "loading"  # loading | warming_up | ready | failed
        self.draining = False
        self.inflight = 0
        self.inflight_by_key: dict[str, int] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.created = int(time.time())
        self.metrics.watch(
            ready=lambda: self.readiness().ok,
            heartbeat_age=lambda: self.engine.health().heartbeat_age_s if self.engine else 0.0,
            consecutive_failures=lambda: (
                self.engine.heartbeat.consecutive_failures if self.engine else 0
            ),
        )

    @property
    def accepting(self) -> bool:
        """Loaded, warmed up and not draining: generation requests are taken."""
        return self.phase == "ready" and not self.draining and self.engine is not None

    def readiness(self) -> Readiness:
        """What /ready answers: accepting, and an engine that moves and does not fail."""
        if self.draining:
            return Readiness(False, "draining")
        if not self.accepting or self.engine is None:
            return Readiness(False, self.phase)
        health = self.engine.health()
        if not health.ok:
            return Readiness(False, health.reason, health.detail)
        return Readiness(True)

    def acquire(self, key: str = "") -> None:
        """Take an in-flight slot, counted against the caller `key` when given."""
        self.inflight += 1
        self.idle.clear()
        if key:
            self.inflight_by_key[key] = self.inflight_by_key.get(key, 0) + 1

    def release(self, key: str = "") -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self.idle.set()
        if key:
            left = self.inflight_by_key.get(key, 0) - 1
            if left > 0:
                self.inflight_by_key[key] = left
            else:
                self.inflight_by_key.pop(key, None)

    def retry_after(self) -> int:
        """Seconds until a place is likely to free: how long the engine has lately taken
        per finished request (1 when it has no history), at most a minute."""
        per_finish = self.engine.seconds_per_finish() if self.engine is not None else None
        if per_finish is None:
            return 1
        return min(60, max(1, math.ceil(per_finish)))

    def reject(self, reason: str) -> None:
        self.metrics.request_rejected.labels(reason).inc()
