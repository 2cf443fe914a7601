"""What every engine shares: the queue, cancellation, events, failures and the heartbeat.

One thread owns the model. The event loop submits and cancels sequences; the engine
thread hands their events back in one `call_soon_threadsafe` per step. Every step of
the engine loop is guarded: a failure fails the requests it touched (an error event
with the request id, never the exception text), the engine resets what it was working
on, and the loop goes on. The heartbeat tells readiness whether the loop is moving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from typing import Any

import torch

from llmserve.engine.failures import failure_message, shutdown_message
from llmserve.engine.faults import FaultInjector, InjectedFault
from llmserve.engine.health import HealthStatus, Heartbeat
from llmserve.loader import LoadedModel
from llmserve.metrics import Metrics
from llmserve.sequence import Event, SamplingParams, Sequence, deliver_all

log = logging.getLogger("llmserve.engine")

# While failing, the engine runs a short request of its own this often when idle; one
# that succeeds clears the failure count (and /ready turns 200 again).
PROBE_INTERVAL_S = 2.0
_PROBE_ID = "engine-probe"
_IDLE_WAIT_S = 1.0


class QueueFull(Exception):
    """The waiting queue is at its bound."""


class EngineStopped(Exception):
    """The engine no longer accepts work."""


class BaseEngine:
    """Queueing, cancellation, events, failure handling and health shared by both engines."""

    name = "base"

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int = 32,
        max_queue: int = 256,
        metrics: Metrics | None = None,
        *,
        stall_timeout: float = 60.0,
        max_failures: int = 3,
        probe_interval: float = PROBE_INTERVAL_S,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.decoder = loaded.tokenizer.backend_tokenizer
        self.device = loaded.device
        self.eos_ids = frozenset(loaded.eos_ids)
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (loaded.eos_ids or [0])[0])
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue = max(0, max_queue)
        self.metrics = metrics
        self.faults = FaultInjector()
        self.heartbeat = Heartbeat(stall_timeout, max_failures)
        self.probe_interval = probe_interval
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._dead = False
        self._cancel_pending = False
        self._thread: threading.Thread | None = None
        self._events: list[tuple[Sequence, Event]] = []
        self._last_probe = 0.0
        # When the last client requests finished: how fast places free up (Retry-After).
        self._finishes: collections.deque[float] = collections.deque(maxlen=32)
        ids = self.tokenizer("warm up", add_special_tokens=False)["input_ids"]
        self._probe_prompt: list[int] = list(ids) or [self.pad_id]
        self.num_running = 0

    # -- public API (event-loop side) ---------------------------------------------------
    def new_sequence(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str = "",
        internal: bool = False,
    ) -> Sequence:
        return Sequence(
            prompt_ids,
            params,
            self.decoder,
            self.eos_ids,
            asyncio.get_running_loop(),
            request_id,
            internal,
        )

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stop or self._dead:
                raise EngineStopped("engine is stopped")
            if len(self._waiting) >= self.max_queue + max(
                0, self.max_batch_size - self.num_running
            ):
                raise QueueFull
            self._waiting.append(seq)
            self._set_waiting_gauge()
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """The client went away: a queued request leaves the queue now, a running one at
        the next step."""
        if seq.finished:
            return
        seq.cancelled = True
        with self._cond:
            try:
                self._waiting.remove(seq)
            except ValueError:  # running (or being admitted): the engine drops it
                self._cancel_pending = True
                self._cond.notify()
                return
            self._set_waiting_gauge()
            seq.finish_reason = "abort"
        if self.metrics is not None and not seq.internal:
            self.metrics.request_failed.labels("cancelled").inc()
        self._deliver_now(seq, Event("finish", finish_reason="abort"))

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def seconds_per_finish(self) -> float | None:
        """Mean time between the latest finished requests; None without two of them."""
        times = list(self._finishes)  # appended by the engine thread; copying is safe
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (times[-1] - times[0]) / (len(times) - 1)

    def health(self) -> HealthStatus:
        alive = not self._dead and (self._thread is None or self._thread.is_alive())
        pending = len(self._waiting) + self.num_running
        return self.heartbeat.status(pending, alive or self._stop)

    def inject_faults(self, count: int = 1) -> None:
        """Make the next `count` forward passes raise (for testing failure handling)."""
        self.faults.arm(count=count)

    def start(self) -> None:
        self.heartbeat.beat()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.faults.release()
        if self._thread is not None:
            self._thread.join(timeout)

    async def warmup(self) -> None:
        """Run short requests through the engine itself (prefill and decode paths)."""
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        for _ in range(2):
            seq = self.new_sequence(list(self._probe_prompt), params, "warmup", internal=True)
            self.submit(seq)
            while True:
                event = await seq.queue.get()
                if event.kind == "error":
                    raise RuntimeError(event.error)
                if event.kind == "finish":
                    break

    # -- engine thread: the loop ----------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException:  # a bug past every guard: fail what is left, say so
            self._dead = True
            log.critical("engine loop ended unexpectedly", exc_info=True)
            with contextlib.suppress(Exception):
                self._shutdown(self._running())

    def _loop(self) -> None:
        raise NotImplementedError

    def _running(self) -> list[Sequence]:
        """The sequences the engine is working on (outside the queue)."""
        raise NotImplementedError

    def _wait_for_work(self, busy: bool) -> bool:
        """Wait (lock held) until there is work or a stop; False on stop."""
        while not self._stop and not self._waiting and not busy:
            self._maybe_probe()
            if self._waiting:
                break
            self._cond.wait(timeout=_IDLE_WAIT_S)
            self.heartbeat.beat()
        return not self._stop

    def _maybe_probe(self) -> None:
        """While failing, queue a short request of the engine's own to find out if it works."""
        if not self.heartbeat.failing:
            return
        now = time.monotonic()
        if now - max(self.heartbeat.last_failure, self._last_probe) < self.probe_interval:
            return
        self._last_probe = now
        params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        seq = Sequence(
            list(self._probe_prompt), params, self.decoder, self.eos_ids, None, _PROBE_ID, True
        )
        self._waiting.append(seq)
        log.info(
            "engine is failing: probing",
            extra={"consecutive_failures": self.heartbeat.consecutive_failures},
        )

    def _shutdown(self, running: list[Sequence]) -> None:
        with self._cond:
            left = running + list(self._waiting)
            self._waiting.clear()
            self._set_waiting_gauge()
        for seq in left:
            if not seq.finished:
                seq.finish_reason = "error"
                self._count_failure(seq)
                self._emit(seq, Event("error", error=shutdown_message(seq.request_id)))
        self._set_running(0)
        self._flush()

    # -- engine thread: helpers -----------------------------------------------------------
    def _set_waiting_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.waiting.set(len(self._waiting))

    def _set_running(self, n: int) -> None:
        self.num_running = n
        if self.metrics is not None:
            self.metrics.running.set(n)

    def _public(self, seq: Sequence) -> Metrics | None:
        """The metrics, for a client's request; None for the engine's own."""
        return None if seq.internal else self.metrics

    def _emit(self, seq: Sequence, event: Event) -> None:
        self._events.append((seq, event))

    def _deliver_now(self, seq: Sequence, event: Event) -> None:
        if seq.loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                seq.loop.call_soon_threadsafe(deliver_all, [(seq, event)])

    def _flush(self) -> None:
        if not self._events:
            return
        by_loop: dict[Any, list[tuple[Sequence, Event]]] = {}
        for seq, event in self._events:
            by_loop.setdefault(seq.loop, []).append((seq, event))
        self._events = []
        for loop, events in by_loop.items():
            if loop is None:
                continue
            try:
                loop.call_soon_threadsafe(deliver_all, events)
            except RuntimeError:  # loop closed during shutdown
                pass
            except Exception:
                log.exception("cannot hand events to the event loop")

    def _on_token(self, seq: Sequence, token: int, now: float) -> None:
        """Record one token, emit its text, and the finish event if it ends the sequence."""
        m = self._public(seq)
        if seq.first_token_time is None:
            seq.first_token_time = now
            if m is not None:
                m.ttft.observe(now - seq.arrival)
        elif m is not None and seq.last_token_time is not None:
            m.itl.observe(now - seq.last_token_time)
        seq.last_token_time = now
        delta = seq.append_token(token)
        if delta:
            self._emit(seq, Event("delta", text=delta))
        if seq.finish_reason is not None:
            self._finish(seq, seq.finish_reason, now)

    def _deliver(self, seqs: list[Sequence], tokens: list[int], now: float) -> None:
        """Hand one new token to each live row; a row whose output fails fails alone."""
        for seq, tok in zip(seqs, tokens, strict=True):
            if seq.finished:
                continue
            if seq.cancelled:
                self._finish(seq, "abort", now)
                continue
            try:
                self._on_token(seq, tok, now)
            except Exception as exc:
                self._fail([seq], "output", exc)

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.finish_reason = reason
        if not seq.internal:
            self._finishes.append(now)
        m = self._public(seq)
        if m is not None:
            if reason == "abort":
                m.request_failed.labels("cancelled").inc()
            else:
                m.request_success.labels(reason).inc()
                m.observe_e2e(now - seq.arrival)
        self._emit(seq, Event("finish", finish_reason=reason))

    def _count_failure(self, seq: Sequence) -> None:
        m = self._public(seq)
        if m is not None:
            m.request_failed.labels("engine_error").inc()

    def _fail(self, seqs: list[Sequence], stage: str, exc: BaseException) -> None:
        """Fail the live requests among `seqs` after `stage` raised `exc`."""
        live = list({id(s): s for s in seqs if not s.finished}.values())
        self.heartbeat.failed()
        if self.metrics is not None:
            self.metrics.engine_failures.labels(stage).inc()
        log.error(
            "engine %s step failed for %d request(s)",
            stage,
            len(live),
            exc_info=None if isinstance(exc, InjectedFault) else exc,
            extra={
                "stage": stage,
                "error": type(exc).__name__,
                "request_ids": [s.request_id for s in live][:64],
                "consecutive_failures": self.heartbeat.consecutive_failures,
            },
        )
        for seq in live:
            seq.finish_reason = "error"
            self._count_failure(seq)
            self._emit(seq, Event("error", error=failure_message(exc, stage, seq.request_id)))
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):  # the device may be in a bad state
                torch.cuda.empty_cache()

    def _take_waiting(self, limit: int) -> list[Sequence]:
        """Pop up to `limit` live requests from the queue (engine thread, lock held)."""
        taken: list[Sequence] = []
        while self._waiting and len(taken) < limit:
            seq = self._waiting.popleft()
            if seq.finished:
                continue
            if seq.cancelled:
                self._finish(seq, "abort", time.monotonic())
                continue
            taken.append(seq)
        self._set_waiting_gauge()
        return taken
