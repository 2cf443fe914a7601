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
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llmserve.engine.base import BaseEngine
from llmserve.engine.batch import Batch, sampling_for
from llmserve.engine.faults import COMPACT, DECODE, MERGE, PREFILL, SAMPLING
from llmserve.engine.forward import decode, prefill
from llmserve.sampling import sample
from llmserve.sequence import Sequence


def _split(joiners: list[Sequence], max_tokens: int) -> tuple[list[Sequence], list[Sequence]]:
    """The joiners that fit one prefill pass of `max_tokens` (at least one), and the rest."""
    tokens = 0
    for i, seq in enumerate(joiners):
        tokens += len(seq.prompt_ids)
        if i and tokens > max_tokens:
            return joiners[:i], joiners[i:]
    return joiners, []


class BatchEngine(BaseEngine):
    """Continuous batching over a shared, left-padded KV cache."""

    name = "batch"

    def __init__(self, *args: Any, max_prefill_tokens: int = 8192, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_prefill_tokens = max(1, max_prefill_tokens)
        self.default_generator = torch.Generator(device=self.device)
        self.default_generator.seed()
        self.batch: Batch | None = None
        self._chunk: list[Sequence] = []  # joiners being admitted

    def _running(self) -> list[Sequence]:
        return (self.batch.seqs if self.batch is not None else []) + self._chunk

    def _set_batch(self, batch: Batch | None) -> None:
        self.batch = batch
        self._set_running(len(batch.seqs) if batch is not None else 0)

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
        if rest:
            with self._cond:
                self._waiting.extendleft(reversed(rest))
                self._set_waiting_gauge()
        self._chunk = chunk
        now = time.monotonic()
        for seq in chunk:
            seq.scheduled = now
            m = self._public(seq)
            if m is not None:
                m.queue_time.observe(now - seq.arrival)
                m.prompt_tokens.inc(len(seq.prompt_ids))
        try:
            self.faults.check(PREFILL, chunk)
            done = prefill(self.model, chunk, self.pad_id, self.device)
        except Exception as exc:
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

    # -- decode ----------------------------------------------------------------------------
    def _decode(self) -> None:
        batch = self.batch
        assert batch is not None
        public = sum(not s.internal for s in batch.seqs)
        if self.metrics is not None and public:
            self.metrics.batch_size.observe(len(batch.seqs))
        try:
            self.faults.check(DECODE, batch.seqs)
            logits, mask = decode(self.model, batch)
        except Exception as exc:
            self._fail(batch.seqs, DECODE, exc)
            self._set_batch(None)
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
