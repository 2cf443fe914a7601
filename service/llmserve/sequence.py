"""Per-request generation state shared by the engines: parameters, detokenisation, stops."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass
class SamplingParams:
    """Validated sampling settings of one request."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1.0: off
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


@dataclass
class Event:
    """What the engine hands to the request's asyncio side."""

    kind: str  # "delta" | "finish" | "error"
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


class Sequence:
    """One request as the engine sees it.

    The engine thread appends tokens with `append_token`, which does incremental
    detokenisation and stop-string matching in constant time per token. Events go to
    an asyncio queue owned by the handler; the engine never touches the loop except
    through `call_soon_threadsafe`.
    """

    __slots__ = (
        "arrival",
        "cancelled",
        "decoder",
        "eos_ids",
        "finish_reason",
        "first_token_time",
        "generator",
        "id",
        "internal",
        "last_token_time",
        "loop",
        "oom_retries",
        "output_ids",
        "params",
        "pending",
        "preemptions",
        "prefix_offset",
        "prompt_ids",
        "queue",
        "read_offset",
        "request_id",
        "scheduled",
        "stop_max",
    )

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        decoder: Any,
        eos_ids: frozenset[int],
        loop: asyncio.AbstractEventLoop | None = None,
        request_id: str = "",
        internal: bool = False,
    ) -> None:
        self.id = next(_ids)
        self.request_id = request_id
        # The engine's own requests (warm-up, recovery probes): kept out of the metrics.
        self.internal = internal
        self.prompt_ids = prompt_ids
        self.params = params
        self.decoder = decoder  # a `tokenizers.Tokenizer`
        self.eos_ids = eos_ids
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.arrival = time.monotonic()
        self.scheduled: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.output_ids: list[int] = []
        self.pending = ""  # decoded text not yet released (held back for stop strings)
        self.prefix_offset = 0
        self.read_offset = 0
        self.finish_reason: str | None = None
        self.cancelled = False
        # Times the engine took the request out of the batch to fit its memory budget,
        # and of those, after running out of memory; it then computes it again.
        self.preemptions = 0
        self.oom_retries = 0
        self.stop_max = max((len(s) for s in params.stop), default=0)
        self.generator = None
        if params.seed is not None and not params.greedy:
            import torch

            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def context_ids(self) -> list[int]:
        """The prompt and what has been generated: the input of a (re)computed prefill."""
        return self.prompt_ids + self.output_ids if self.output_ids else self.prompt_ids

    def append_token(self, token_id: int) -> str:
        """Record one generated token; return the newly releasable text.

        Sets `finish_reason` when the sequence is done ("stop" or "length").
        """
        params = self.params
        if (
            token_id in self.eos_ids
            and not params.ignore_eos
            and len(self.output_ids) >= params.min_tokens
        ):
            self.output_ids.append(token_id)
            self.finish_reason = "stop"
            return self._release(final=True)
        self.output_ids.append(token_id)
        ids = self.output_ids
        # Decode only a short window around the new token: constant work per token.
        prefix = self.decoder.decode(ids[self.prefix_offset : self.read_offset])
        full = self.decoder.decode(ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.pending += full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)
        if self.stop_max:
            # A stop string cannot start in text already released (see _held_back), so
            # the held-back tail plus the new text is all there is to search.
            cut = -1
            for stop in params.stop:
                pos = self.pending.find(stop)
                if pos >= 0 and (cut < 0 or pos < cut):
                    cut = pos
            if cut >= 0:
                self.pending = self.pending[:cut]
                self.finish_reason = "stop"
                return self._release(final=True)
        if len(ids) >= params.max_tokens:
            self.finish_reason = "length"
            return self._release(final=True)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        held = 0 if final or not self.stop_max else self._held_back()
        if held >= len(self.pending):
            return ""
        cut = len(self.pending) - held
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def _held_back(self) -> int:
        """Length of the longest pending suffix that could still become a stop string."""
        text = self.pending
        best = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def deliver(self, event: Event) -> None:
        """Called on the event loop thread."""
        self.queue.put_nowait(event)


def deliver_all(events: list[tuple[Sequence, Event]]) -> None:
    """Hand a batch of events to their queues (runs on the event loop)."""
    for seq, event in events:
        seq.queue.put_nowait(event)
