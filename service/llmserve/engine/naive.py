"""The baseline most deployment guides ship: one `model.generate()` per request, one at a time.

It exists for the benchmark (`serve --engine naive`). Its stages are the prefill (before
`generate`) and each decode step (the stopping criterion runs once per token); a failure
fails the one request.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from llmserve.engine.base import BaseEngine
from llmserve.engine.faults import DECODE, PREFILL
from llmserve.penalties import Penalties
from llmserve.sequence import Sequence


class NaiveEngine(BaseEngine):
    """One `model.generate()` per request, one request at a time (the baseline)."""

    name = "naive"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current: Sequence | None = None

    def _running(self) -> list[Sequence]:
        return [self._current] if self._current is not None else []

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._wait_for_work(busy=False):
                    break
                taken = self._take_waiting(1)
            self.heartbeat.beat()
            if taken:
                seq = self._current = taken[0]
                self._set_running(1)
                try:
                    self._generate(seq)
                except Exception as exc:
                    self._fail([seq], "generate", exc)
                self._current = None
                self._set_running(0)
            self._flush()
        self._shutdown(self._running())

    def _generate(self, seq: Sequence) -> None:
        from transformers import StoppingCriteriaList

        streamer, stop = _hooks()
        now = time.monotonic()
        seq.scheduled = now
        m = self._public(seq)
        if m is not None:
            m.queue_time.observe(now - seq.arrival)
            m.prompt_tokens.inc(len(seq.prompt_ids))
            m.batch_size.observe(1)
        p = seq.params
        kwargs: dict[str, Any] = {
            "max_new_tokens": p.max_tokens,
            "min_new_tokens": p.max_tokens if p.ignore_eos else p.min_tokens,
            "do_sample": not p.greedy,
            "pad_token_id": self.pad_id,
        }
        if not p.greedy:
            kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
        penalties = Penalties.build([p], [seq.prompt_ids])
        if penalties is not None:
            kwargs["logits_processor"] = _penalty_processor(penalties, len(seq.prompt_ids))
        if p.seed is not None:
            torch.manual_seed(p.seed)
        self.faults.check(PREFILL, [seq])
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer(self, seq),
            stopping_criteria=StoppingCriteriaList([stop(self, seq)]),
            **kwargs,
        )
        self.heartbeat.succeeded()
        if not seq.finished:
            self._finish(seq, "abort" if seq.cancelled else "length", time.monotonic())
        if m is not None:
            m.generation_tokens.inc(len(seq.output_ids))


def _penalty_processor(penalties: Penalties, prompt_len: int) -> Any:
    """`generate()`'s logits processors with ours: penalties and bias on the output so far."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Apply(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            outputs = [row[prompt_len:].tolist() for row in input_ids]
            return penalties.apply(scores, outputs).to(scores.dtype)

    return LogitsProcessorList([Apply()])


@functools.cache
def _hooks() -> tuple[type, type]:
    """The streamer and stopping criterion classes (transformers is imported late)."""
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class Streamer(BaseStreamer):
        """Hands each generated token to the engine as it comes."""

        def __init__(self, engine: NaiveEngine, seq: Sequence) -> None:
            self.engine = engine
            self.seq = seq
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            if self.seq.finished:
                return
            self.engine.heartbeat.succeeded()  # a forward pass made a token
            for tok in value.reshape(-1).tolist():
                self.engine._on_token(self.seq, int(tok), time.monotonic())
                self.engine._flush()
                if self.seq.finished:
                    break

        def end(self) -> None:
            return

    class Stop(StoppingCriteria):
        """Stops `generate` once the sequence is done; also the per-step heartbeat."""

        def __init__(self, engine: NaiveEngine, seq: Sequence) -> None:
            self.engine = engine
            self.seq = seq

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            self.engine.heartbeat.beat()
            self.engine.faults.check(DECODE, [self.seq])
            done = self.seq.finished or self.seq.cancelled
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    return Streamer, Stop
