"""Generation engines.

`BatchEngine` runs continuous batching: one thread owns the model, and all active
sequences share a left-padded KV cache. Between two decode steps, waiting requests are
prefilled together and merged into the batch, finished and cancelled rows are dropped
at once, and padding columns nobody needs any more are trimmed.

`NaiveEngine` is the baseline most deployment guides ship: one `generate()` call per
request, one request at a time. It exists for the benchmark (`serve --engine naive`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmserve.loader import LoadedModel
from llmserve.metrics import Metrics
from llmserve.sampling import BatchSampling, sample
from llmserve.sequence import Event, SamplingParams, Sequence, deliver_all

log = logging.getLogger("llmserve.engine")


class QueueFull(Exception):
    """The waiting queue is at its bound."""


class EngineStopped(Exception):
    """The engine no longer accepts work."""


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook in place of a forward pass."""


class BaseEngine:
    """Queueing, cancellation, events and fault injection shared by both engines."""

    name = "base"

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int = 32,
        max_queue: int = 256,
        metrics: Metrics | None = None,
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
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._cancel_pending = False
        self._thread: threading.Thread | None = None
        self._fault_budget = 0
        self._events: list[tuple[Sequence, Event]] = []
        self.num_running = 0

    # -- public API (event-loop side) ---------------------------------------------------
    def new_sequence(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str = ""
    ) -> Sequence:
        return Sequence(
            prompt_ids,
            params,
            self.decoder,
            self.eos_ids,
            asyncio.get_running_loop(),
            request_id,
        )

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stop:
                raise EngineStopped("engine is stopped")
            if len(self._waiting) >= self.max_queue + max(
                0, self.max_batch_size - self.num_running
            ):
                raise QueueFull
            self._waiting.append(seq)
            self._set_waiting_gauge()
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        if seq.finished:
            return
        seq.cancelled = True
        with self._cond:
            self._cancel_pending = True
            self._cond.notify()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def inject_faults(self, count: int = 1) -> None:
        """Make the next `count` forward passes raise (for testing failure handling)."""
        with self._cond:
            self._fault_budget += max(0, count)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- engine-thread helpers -------------------------------------------------------------
    def _set_waiting_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.waiting.set(len(self._waiting))

    def _set_running(self, n: int) -> None:
        self.num_running = n
        if self.metrics is not None:
            self.metrics.running.set(n)

    def _maybe_fault(self) -> None:
        if self._fault_budget > 0:
            with self._cond:
                if self._fault_budget > 0:
                    self._fault_budget -= 1
                    raise InjectedFault("injected fault in forward pass")

    def _emit(self, seq: Sequence, event: Event) -> None:
        self._events.append((seq, event))

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
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(deliver_all, events)

    def _on_token(self, seq: Sequence, token: int, now: float) -> None:
        """Record one token, emit its text, and the finish event if it ends the sequence."""
        m = self.metrics
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

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.finish_reason = reason
        if self.metrics is not None:
            if reason == "abort":
                self.metrics.request_failed.labels("cancelled").inc()
            else:
                self.metrics.request_success.labels(reason).inc()
                self.metrics.observe_e2e(now - seq.arrival)
        self._emit(seq, Event("finish", finish_reason=reason))

    def _fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        message = f"generation failed: {type(exc).__name__}: {exc}"
        log.error("forward pass failed for %d request(s): %s", len(seqs), message)
        for seq in seqs:
            if seq.finished:
                continue
            seq.finish_reason = "error"
            if self.metrics is not None:
                self.metrics.request_failed.labels("engine_error").inc()
            self._emit(seq, Event("error", error=message))
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):  # the device may be in a bad state
                torch.cuda.empty_cache()

    def _take_waiting(self, limit: int) -> list[Sequence]:
        """Pop up to `limit` live requests from the queue (engine thread, lock held)."""
        taken: list[Sequence] = []
        while self._waiting and len(taken) < limit:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._finish(seq, "abort", time.monotonic())
                continue
            taken.append(seq)
        self._set_waiting_gauge()
        return taken

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                self._loop()
            except Exception:  # pragma: no cover - a bug; make it visible
                log.exception("engine loop crashed")
                raise

    def _loop(self) -> None:
        raise NotImplementedError

    async def warmup(self) -> None:
        """Run one short request through the engine itself (prefill and decode paths)."""
        metrics, self.metrics = self.metrics, None
        try:
            ids = self.tokenizer("warm up", add_special_tokens=False)["input_ids"] or [self.pad_id]
            params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            for _ in range(2):
                seq = self.new_sequence(list(ids), params, "warmup")
                self.submit(seq)
                while True:
                    event = await seq.queue.get()
                    if event.kind == "error":
                        raise RuntimeError(event.error)
                    if event.kind == "finish":
                        break
        finally:
            self.metrics = metrics


class BatchEngine(BaseEngine):
    """Continuous batching over a shared, left-padded KV cache."""

    name = "batch"

    def __init__(self, *args: Any, max_prefill_tokens: int = 8192, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_prefill_tokens = max(1, max_prefill_tokens)
        self.default_generator = torch.Generator(device=self.device)
        self.default_generator.seed()
        self._reset_batch()

    def _reset_batch(self) -> None:
        self.seqs: list[Sequence] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (B, L) long
        self.positions: torch.Tensor | None = None  # (B,) long
        self.last_tokens: torch.Tensor | None = None  # (B,) long
        self.sampling: BatchSampling | None = None
        self._set_running(0)

    # -- main loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self.seqs:
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    break
                cancel = self._cancel_pending
                self._cancel_pending = False
                free = self.max_batch_size - len(self.seqs)
                joiners = self._take_waiting(free) if free > 0 and self._waiting else []
            if cancel:
                self._drop_cancelled()
            if joiners:
                self._admit(joiners)
            if self.seqs:
                self._decode()
            self._flush()
        # Shutdown: fail whatever is left.
        left = list(self.seqs) + list(self._waiting)
        self._waiting.clear()
        if left:
            self._fail(left, EngineStopped("server shutting down"))
        self._reset_batch()
        self._flush()

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        gone = [s for s in self.seqs if s.cancelled and not s.finished]
        for seq in gone:
            self._finish(seq, "abort", now)
        if gone:
            self._compact()

    # -- admission: prefill joiners, merge them into the batch -----------------------------
    def _admit(self, joiners: list[Sequence]) -> None:
        # Bound the work of one prefill pass; the rest go back to the head of the queue.
        chunk: list[Sequence] = []
        tokens = 0
        for seq in joiners:
            n = len(seq.prompt_ids)
            if chunk and (tokens + n) * 1 > self.max_prefill_tokens:
                break
            chunk.append(seq)
            tokens += n
        rest = joiners[len(chunk) :]
        if rest:
            with self._cond:
                self._waiting.extendleft(reversed(rest))
                self._set_waiting_gauge()
        now = time.monotonic()
        m = self.metrics
        for seq in chunk:
            seq.scheduled = now
            if m is not None:
                m.queue_time.observe(now - seq.arrival)
                m.prompt_tokens.inc(len(seq.prompt_ids))
        try:
            self._maybe_fault()
            cache, mask, positions, logits = self._prefill(chunk)
            sampling = self._build_sampling(chunk)
            tokens_t = sample(logits, sampling, self.default_generator)
        except Exception as exc:
            self._fail(chunk, exc)
            return
        self._merge(chunk, cache, mask, positions, tokens_t)
        now = time.monotonic()
        token_list = tokens_t.tolist()
        for seq, tok in zip(chunk, token_list, strict=True):
            self._on_token(seq, tok, now)
        if m is not None:
            m.generation_tokens.inc(len(chunk))
        if any(s.finished for s in chunk):
            self._compact()

    def _prefill(
        self, chunk: list[Sequence]
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        from transformers import DynamicCache

        longest = max(len(s.prompt_ids) for s in chunk)
        rows = []
        mask_rows = []
        for seq in chunk:
            pad = longest - len(seq.prompt_ids)
            rows.append([self.pad_id] * pad + seq.prompt_ids)
            mask_rows.append([0] * pad + [1] * len(seq.prompt_ids))
        input_ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = torch.tensor(mask_rows, dtype=torch.long, device=self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        positions = mask.sum(-1)
        return out.past_key_values, mask, positions, logits

    def _build_sampling(self, seqs: list[Sequence]) -> BatchSampling:
        return BatchSampling.build(
            [s.params.temperature for s in seqs],
            [s.params.top_p for s in seqs],
            [s.params.top_k for s in seqs],
            [s.generator for s in seqs],
            self.device,
        )

    def _merge(
        self,
        chunk: list[Sequence],
        cache: Any,
        mask: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
    ) -> None:
        tokens = tokens.to(self.device)
        if not self.seqs:
            self.seqs = list(chunk)
            self.cache, self.mask, self.positions, self.last_tokens = cache, mask, positions, tokens
        else:
            assert self.mask is not None and self.positions is not None
            assert self.last_tokens is not None
            old_len, new_len = self.mask.shape[1], mask.shape[1]
            length = max(old_len, new_len)
            for old_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
                old_layer.keys = torch.cat(
                    [_pad_left(old_layer.keys, length), _pad_left(new_layer.keys, length)]
                )
                old_layer.values = torch.cat(
                    [_pad_left(old_layer.values, length), _pad_left(new_layer.values, length)]
                )
            self.mask = torch.cat(
                [F.pad(self.mask, (length - old_len, 0)), F.pad(mask, (length - new_len, 0))]
            )
            self.positions = torch.cat([self.positions, positions])
            self.last_tokens = torch.cat([self.last_tokens, tokens])
            self.seqs.extend(chunk)
        self.sampling = self._build_sampling(self.seqs)
        self._set_running(len(self.seqs))

    # -- decode ----------------------------------------------------------------------------
    def _decode(self) -> None:
        assert self.mask is not None and self.positions is not None
        assert self.last_tokens is not None and self.sampling is not None
        batch = len(self.seqs)
        if self.metrics is not None:
            self.metrics.batch_size.observe(batch)
        mask = torch.cat([self.mask, self.mask.new_ones((batch, 1))], dim=1)
        try:
            self._maybe_fault()
            out = self.model(
                input_ids=self.last_tokens.unsqueeze(1),
                attention_mask=mask,
                position_ids=self.positions.unsqueeze(1),
                past_key_values=self.cache,
                use_cache=True,
            )
            tokens = sample(out.logits[:, -1, :], self.sampling, self.default_generator)
        except Exception as exc:
            self._fail(list(self.seqs), exc)
            self._reset_batch()
            return
        self.mask = mask
        self.positions = self.positions + 1
        self.last_tokens = tokens.to(self.device)
        now = time.monotonic()
        for seq, tok in zip(self.seqs, tokens.tolist(), strict=True):
            if seq.cancelled:
                self._finish(seq, "abort", now)
            else:
                self._on_token(seq, tok, now)
        if self.metrics is not None:
            self.metrics.generation_tokens.inc(batch)
        if any(s.finished for s in self.seqs):
            self._compact()

    def _compact(self) -> None:
        """Drop finished rows and trim leading columns that are padding in every row."""
        keep = [i for i, s in enumerate(self.seqs) if not s.finished]
        if not keep:
            self._reset_batch()
            return
        assert self.mask is not None and self.positions is not None
        assert self.last_tokens is not None
        if len(keep) != len(self.seqs):
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
            self.mask = self.mask.index_select(0, idx)
            self.positions = self.positions.index_select(0, idx)
            self.last_tokens = self.last_tokens.index_select(0, idx)
            self.seqs = [self.seqs[i] for i in keep]
            self.sampling = self._build_sampling(self.seqs)
        used = self.mask.any(dim=0)
        first = int(used.to(torch.int8).argmax().item())
        if first > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self.mask = self.mask[:, first:]
        self._set_running(len(self.seqs))


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - t.shape[-2]
    if extra <= 0:
        return t
    return F.pad(t, (0, 0, extra, 0))


class NaiveEngine(BaseEngine):
    """One `model.generate()` per request, one request at a time (the baseline)."""

    name = "naive"

    def _loop(self) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        engine = self

        class _Streamer(BaseStreamer):
            def __init__(self, seq: Sequence) -> None:
                self.seq = seq
                self.prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                if self.seq.finished:
                    return
                for tok in value.reshape(-1).tolist():
                    engine._on_token(self.seq, int(tok), time.monotonic())
                    engine._flush()
                    if self.seq.finished:
                        break

            def end(self) -> None:
                return

        class _Stop(StoppingCriteria):
            def __init__(self, seq: Sequence) -> None:
                self.seq = seq

            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> Any:
                done = self.seq.finished or self.seq.cancelled
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        while True:
            with self._cond:
                while not self._stop and not self._waiting:
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    break
                batch = self._take_waiting(1)
            if not batch:
                self._flush()
                continue
            seq = batch[0]
            now = time.monotonic()
            seq.scheduled = now
            self._set_running(1)
            if self.metrics is not None:
                self.metrics.queue_time.observe(now - seq.arrival)
                self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            p = seq.params
            kwargs: dict[str, Any] = {
                "max_new_tokens": p.max_tokens,
                "min_new_tokens": p.max_tokens if p.ignore_eos else p.min_tokens,
                "do_sample": not p.greedy,
                "pad_token_id": self.pad_id,
            }
            if not p.greedy:
                kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
            if p.seed is not None:
                torch.manual_seed(p.seed)
            try:
                self._maybe_fault()
                if self.metrics is not None:
                    self.metrics.batch_size.observe(1)
                ids = torch.tensor([seq.prompt_ids], device=self.device)
                self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    streamer=_Streamer(seq),
                    stopping_criteria=StoppingCriteriaList([_Stop(seq)]),
                    **kwargs,
                )
                if not seq.finished:
                    reason = "abort" if seq.cancelled else "length"
                    self._finish(seq, reason, time.monotonic())
                if self.metrics is not None:
                    self.metrics.generation_tokens.inc(len(seq.output_ids))
            except Exception as exc:
                self._fail([seq], exc)
            self._set_running(0)
            self._flush()
        left = list(self._waiting)
        self._waiting.clear()
        if left:
            self._fail(left, EngineStopped("server shutting down"))
        self._flush()


ENGINES: dict[str, Callable[..., BaseEngine]] = {"batch": BatchEngine, "naive": NaiveEngine}
