"""Fault injection at the engine's stages, for tests of its failure handling.

Nothing arms the injector in production: tests call `arm` on the engine's injector, and
`POST /debug/fault` exists only with `--enable-fault-injection`. Unarmed, a check costs
one list read per stage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from llmserve.sequence import Sequence

PREFILL = "prefill"
MERGE = "merge"
DECODE = "decode"
COMPACT = "compact"
SAMPLING = "sampling"
STAGES = (PREFILL, MERGE, DECODE, COMPACT, SAMPLING)
# Either forward pass (prefill or decode): what `{"count": n}` alone arms.
FORWARD = "forward"
ARMABLE = (*STAGES, FORWARD)


class InjectedFault(RuntimeError):
    """Raised by the injector in place of a stage's work."""


@dataclass
class _Armed:
    stage: str
    count: int
    stall_s: float
    request_id: str | None

    def matches(self, stage: str, seqs: Iterable[Sequence]) -> bool:
        if self.stage != stage and not (self.stage == FORWARD and stage in (PREFILL, DECODE)):
            return False
        return self.request_id is None or any(s.request_id == self.request_id for s in seqs)


class FaultInjector:
    """Makes the next `count` runs of a stage raise `InjectedFault`, or stall.

    `request_id` limits a fault to a stage run that touches that request. A stall blocks
    the engine thread for `stall_s` seconds (or until `release`) and then lets the stage
    run: a stuck engine, as a hung device would leave it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self._released = threading.Event()

    def arm(
        self,
        stage: str = FORWARD,
        count: int = 1,
        *,
        stall_s: float = 0.0,
        request_id: str | None = None,
    ) -> None:
        if stage not in ARMABLE:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(ARMABLE)}")
        if count > 0:
            with self._lock:
                self._armed.append(_Armed(stage, count, max(0.0, stall_s), request_id))

    def release(self) -> None:
        """End a stall in progress."""
        self._released.set()

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()
        self.release()

    def check(self, stage: str, seqs: Iterable[Sequence]) -> None:
        """Called by the engine at the start of each stage; raises or stalls when armed."""
        if not self._armed:
            return
        seqs = list(seqs)
        with self._lock:
            hit = next((a for a in self._armed if a.matches(stage, seqs)), None)
            if hit is None:
                return
            hit.count -= 1
            if hit.count <= 0:
                self._armed.remove(hit)
            if hit.stall_s > 0:
                self._released.clear()
        if hit.stall_s > 0:
            self._released.wait(hit.stall_s)
            return
        raise InjectedFault(f"injected fault at {stage}")
