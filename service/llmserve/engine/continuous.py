"""Continuous batching over a shared, left-padded KV cache.

Between two decode steps, waiting requests are prefilled together and merged into the
running batch; finished and cancelled rows are dropped at once, and padding columns
nobody needs any more are trimmed. Each stage is guarded on its own:

| stage    | a failure fails                         | the running batch                 |
|----------|-----------------------------------------|-----------------------------------|
| prefill  | the joiners                             | kept                              |
| sampling | the joiners (first token) or every row  | kept, or reset                    |
| merge    | the joiners                             | kept (a merge is all or nothing)  |
| decode   | every row                               | reset (the cache is half-written) |
| compact  | every row still running                 | reset                             |
| output   | that one row (detokenizing its token)   | kept                              |

Anything else that raises in a step fails the rows it was working on and resets the
batch; the loop itself never ends but on `stop()`.

Memory: with a KV budget (`kv_budget_tokens`, token slots), joiners are admitted only
while the merged batch (rows x width, one decode step ahead) fits, and before each decode
step the newest rows are taken out until the batch fits; they go back to the front of
the queue and resume later by computing their prompt and output again. Running out of
memory anyway (in prefill or decode) puts the rows it touched back the same way, lowers
the budget below what failed, and fails a request only after `MAX_OOM_RETRIES` of them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from llmserve.engine.base import BaseEngine
from llmserve.engine.batch import Batch, sampling_for
from llmserve.engine.faults import COMPACT, DECODE, MERGE, PREFILL, SAMPLING
from llmserve.engine.forward import decode, prefill
from llmserve.sampling import sample
from llmserve.sequence import Sequence

log = logging.getLogger("llmserve.engine")


MAX_OOM_RETRIES = 3


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError)


def _split(joiners: list[Sequence], max_tokens: int) -> tuple[list[Sequence], list[Sequence]]:
    """The joiners that fit one prefill pass of `max_tokens` (at least one), and the rest."""
    tokens = 0
    for i, seq in enumerate(joiners):
        tokens += seq.context_len
        if i and tokens > max_tokens:
            return joiners[:i], joiners[i:]
    return joiners, []


class BatchEngine(BaseEngine):
    """Continuous batching over a shared, left-padded KV cache."""

    name = "batch"

    def __init__(
        self,
        *args: Any,
        max_prefill_tokens: int = 8192,
        kv_budget_tokens: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_prefill_tokens = max(1, max_prefill_tokens)
        self.kv_budget_tokens = max(0, kv_budget_tokens)  # 0: no budget
        self.default_generator = torch.Generator(device=self.device)
        self.default_generator.seed()
        self.batch: Batch | None = None
        self._chunk: list[Sequence] = []  # joiners being admitted
        self._set_kv_gauges()

    def _running(self) -> list[Sequence]:
        return (self.batch.seqs if self.batch is not None else []) + self._chunk

    def _set_batch(self, batch: Batch | None) -> None:
        self.batch = batch
        self._set_running(len(batch.seqs) if batch is not None else 0)
        self._set_kv_gauges()

    def _set_kv_gauges(self) -> None:
        if self.metrics is not None:
            budget = self.kv_budget_tokens
            self.metrics.kv_budget.set(budget)
            self.metrics.kv_usage.set(self._slots() / budget if budget else 0.0)

    # -- main loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._wait_for_work(busy=self.batch is not None):
                    break
                cancel = self._cancel_pending
                self._cancel_pending = False
                free = self.max_batch_size - (len(self.batch.seqs) if self.batch else 0)
                joiners = self._take_waiting(free) if free > 0 and self._waiting else []
            self.heartbeat.beat()
            try:
                self._step(cancel, joiners)
            except Exception as exc:  # past the stage guards: fail what it touched
                self._fail(self._running(), "engine", exc)
                self._set_batch(None)
            finally:
                self._chunk = []
            self._flush()
        self._shutdown(self._running())
        self._set_batch(None)

    def _step(self, cancel: bool, joiners: list[Sequence]) -> None:
        if cancel:
            self._drop_cancelled()
        if joiners:
            self._admit(joiners)
        if self.batch is not None:
            self._decode()

    def _drop_cancelled(self) -> None:
        if self.batch is None:
            return
        now = time.monotonic()
        gone = [s for s in self.batch.seqs if s.cancelled and not s.finished]
        for seq in gone:
            self._finish(seq, "abort", now)
        if gone:
            self._compact()

    # -- admission: prefill joiners, sample their first token, merge them in ---------------
    def _admit(self, joiners: list[Sequence]) -> None:
        chunk, rest = _split(joiners, self.max_prefill_tokens)
        chunk, over = self._within_budget(chunk)
        self._requeue(over + rest)
        if not chunk:
            return
        self._chunk = chunk
        now = time.monotonic()
        for seq in chunk:
            if seq.scheduled is not None:
                continue  # resumed after a preemption: counted when it was first admitted
            seq.scheduled = now
            m = self._public(seq)
            if m is not None:
                m.queue_time.observe(now - seq.arrival)
                m.prompt_tokens.inc(len(seq.prompt_ids))
        try:
            self.faults.check(PREFILL, chunk)
            done = prefill(self.model, chunk, self.pad_id, self.device)
        except Exception as exc:
            if is_oom(exc):
                width = max(s.context_len for s in chunk)
                self._out_of_memory(chunk, PREFILL, exc, self._slots() + len(chunk) * width)
            else:
                self._fail(chunk, PREFILL, exc)
            return
        self.heartbeat.beat()
        try:
            self.faults.check(SAMPLING, chunk)
            sampling = sampling_for(chunk, self.device)
            outputs = [s.output_ids for s in chunk]
            tokens = sample(done.logits, sampling, self.default_generator, outputs)
        except Exception as exc:
            self._fail(chunk, SAMPLING, exc)
            return
        joined = Batch(
            chunk, done.cache, done.mask, done.positions, tokens.to(self.device), sampling
        )
        try:
            self.faults.check(MERGE, self._running())
            merged = joined if self.batch is None else self.batch.merge(joined)
        except Exception as exc:
            self._fail(chunk, MERGE, exc)
            return
        self._set_batch(merged)
        self._chunk = []
        self.heartbeat.succeeded()
        self._deliver(chunk, tokens.tolist(), time.monotonic())
        public = sum(not s.internal for s in chunk)
        if self.metrics is not None and public:
            self.metrics.generation_tokens.inc(public)
        if any(s.finished for s in merged.seqs):
            self._compact()

    # -- the memory budget -----------------------------------------------------------------
    def _slots(self) -> int:
        return self.batch.slots if self.batch is not None else 0

    def _within_budget(self, joiners: list[Sequence]) -> tuple[list[Sequence], list[Sequence]]:
        """The joiners that fit the budget with the running batch, in order, and the rest.

        An empty batch always takes the first: the context limit makes one request fit.
        """
        if self.kv_budget_tokens <= 0 or not joiners:
            return joiners, []
        rows = len(self.batch.seqs) if self.batch is not None else 0
        width = self.batch.mask.shape[1] + 1 if self.batch is not None else 0
        for i, seq in enumerate(joiners):
            wider = max(width, seq.context_len + 1)
            if (rows + 1) * wider > self.kv_budget_tokens and rows > 0:
                return joiners[:i], joiners[i:]
            rows, width = rows + 1, wider
        return joiners, []

    def _requeue(self, seqs: list[Sequence]) -> None:
        """Put `seqs` back at the front of the queue, in order."""
        if seqs:
            with self._cond:
                self._waiting.extendleft(reversed(seqs))
                self._set_waiting_gauge()

    def _fit_budget(self) -> None:
        """Before a decode step: take the newest rows out until the batch fits."""
        batch = self.batch
        if batch is None or self.kv_budget_tokens <= 0:
            return
        width = batch.mask.shape[1] + 1
        keep = len(batch.seqs)
        while keep > 1 and keep * width > self.kv_budget_tokens:
            keep -= 1
        if keep == len(batch.seqs):
            return
        out = batch.seqs[keep:]
        self._preempt(out, "budget")
        try:
            self.faults.check(COMPACT, batch.seqs)
            self._set_batch(batch.keeping(list(range(keep))))
        except Exception as exc:
            self._fail(batch.seqs[:keep], COMPACT, exc)
            self._set_batch(None)

    def _preempt(self, seqs: list[Sequence], reason: str) -> None:
        for seq in seqs:
            seq.preemptions += 1
        public = sum(not s.internal for s in seqs)
        if self.metrics is not None and public:
            self.metrics.preemptions.labels(reason).inc(public)
        log.info(
            "preempted %d request(s): %s",
            len(seqs),
            reason,
            extra={"request_ids": [s.request_id for s in seqs][:64], "reason": reason},
        )
        self._requeue(seqs)

    def _out_of_memory(
        self, seqs: list[Sequence], stage: str, exc: BaseException, slots: int
    ) -> None:
        """Put the rows back in the queue to compute again later, under a lower budget."""
        lowered = max(1, int(slots * 0.9))
        if self.kv_budget_tokens <= 0 or lowered < self.kv_budget_tokens:
            log.warning(
                "out of memory in %s at %d token slots: budget lowered to %d",
                stage,
                slots,
                lowered,
                extra={"stage": stage, "kv_budget_tokens": lowered},
            )
            self.kv_budget_tokens = lowered
        live = [s for s in seqs if not s.finished]
        for seq in live:
            seq.oom_retries += 1
        spent = [s for s in live if s.oom_retries > MAX_OOM_RETRIES]
        if spent:
            self._fail(spent, stage, exc)
        self._preempt([s for s in live if s.oom_retries <= MAX_OOM_RETRIES], "out_of_memory")
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()

    # -- decode ----------------------------------------------------------------------------
    def _decode(self) -> None:
        self._fit_budget()
        batch = self.batch
        if batch is None:
            return
        public = sum(not s.internal for s in batch.seqs)
        if self.metrics is not None and public:
            self.metrics.batch_size.observe(len(batch.seqs))
        try:
            self.faults.check(DECODE, batch.seqs)
            logits, mask = decode(self.model, batch)
        except Exception as exc:  # the cache is half-written: the batch cannot go on
            self._set_batch(None)
            if is_oom(exc):
                self._out_of_memory(batch.seqs, DECODE, exc, batch.slots + len(batch.seqs))
            else:
                self._fail(batch.seqs, DECODE, exc)
            return
        self.heartbeat.beat()
        try:
            self.faults.check(SAMPLING, batch.seqs)
            outputs = [s.output_ids for s in batch.seqs]
            tokens = sample(logits, batch.sampling, self.default_generator, outputs)
        except Exception as exc:
            self._fail(batch.seqs, SAMPLING, exc)
            self._set_batch(None)
            return
        self.batch = batch.advanced(mask, tokens.to(self.device))
        self._set_kv_gauges()
        self.heartbeat.succeeded()
        self._deliver(batch.seqs, tokens.tolist(), time.monotonic())
        if self.metrics is not None and public:
            self.metrics.generation_tokens.inc(public)
        if any(s.finished for s in batch.seqs):
            self._compact()

    def _compact(self) -> None:
        batch = self.batch
        if batch is None:
            return
        try:
            self.faults.check(COMPACT, batch.seqs)
            compacted = batch.compacted()
        except Exception as exc:
            self._fail(batch.seqs, COMPACT, exc)
            compacted = None
        self._set_batch(compacted)
