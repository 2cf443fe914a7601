"""Penalties and logit bias over a batch, applied to the logits before sampling.

OpenAI's `presence_penalty` (subtracted once from every token the output already has),
`frequency_penalty` (subtracted once per occurrence) and `logit_bias` (added to the listed
tokens), and the `repetition_penalty` extension of vLLM and transformers (the logits of
tokens in the prompt or the output are divided by it when positive, multiplied when
negative). Only a batch with a row that asks for one of them pays for this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmserve.sequence import SamplingParams


def wants_penalties(p: SamplingParams) -> bool:
    return bool(
        p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 or p.logit_bias
    )


def output_counts(outputs: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, V) float: how often each token occurs in each row's output."""
    counts = torch.zeros(len(outputs), vocab, dtype=torch.float32, device=device)
    longest = max((len(o) for o in outputs), default=0)
    if longest == 0:
        return counts
    ids = torch.zeros(len(outputs), longest, dtype=torch.long)
    weights = torch.zeros(len(outputs), longest, dtype=torch.float32)
    for i, out in enumerate(outputs):
        if out:
            ids[i, : len(out)] = torch.tensor(out, dtype=torch.long).clamp(0, vocab - 1)
            weights[i, : len(out)] = 1.0
    return counts.scatter_add_(1, ids.to(device), weights.to(device))


@dataclass
class Penalties:
    """Per-row settings; the (B, V) tensors are made on first use, for the logits' size."""

    presence: list[float]
    frequency: list[float]
    repetition: list[float]
    bias: list[dict[int, float]]
    prompts: list[list[int]]
    _dense: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, repr=False)
    # Output counts kept between steps (the rows of one instance never change), and how
    # many tokens of each row they hold: a decode step adds only the new token.
    _counts: torch.Tensor | None = field(default=None, repr=False)
    _counted: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, params: list[SamplingParams], prompts: list[list[int]]) -> Penalties | None:
        """None when no row asks for a penalty or a bias."""
        if not any(wants_penalties(p) for p in params):
            return None
        return cls(
            presence=[p.presence_penalty for p in params],
            frequency=[p.frequency_penalty for p in params],
            repetition=[p.repetition_penalty for p in params],
            bias=[dict(p.logit_bias) for p in params],
            prompts=prompts,
        )

    def _rows(self, values: list[float], device: torch.device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

    def _bias(self, vocab: int, device: torch.device) -> torch.Tensor:
        key = (vocab, str(device))
        if key not in self._dense:
            bias = torch.zeros(len(self.bias), vocab, dtype=torch.float32)
            for i, row in enumerate(self.bias):
                for token, value in row.items():
                    if 0 <= token < vocab:
                        bias[i, token] = value
            self._dense[key] = bias.to(device)
        return self._dense[key]

    def _prompt_seen(self, vocab: int, device: torch.device) -> torch.Tensor:
        key = (vocab, str(device) + ":prompt")
        if key not in self._dense:
            with_penalty = [
                p if r != 1.0 else [] for p, r in zip(self.prompts, self.repetition, strict=True)
            ]
            self._dense[key] = output_counts(with_penalty, vocab, device) > 0
        return self._dense[key]

    def _output_counts(
        self, outputs: list[list[int]], vocab: int, device: torch.device
    ) -> torch.Tensor:
        counts = self._counts
        if counts is None or counts.shape != (len(outputs), vocab) or counts.device != device:
            self._counts = output_counts(outputs, vocab, device)
            self._counted = [len(out) for out in outputs]
            return self._counts
        rows: list[int] = []
        tokens: list[int] = []
        for i, out in enumerate(outputs):
            new = out[self._counted[i] :]
            rows.extend([i] * len(new))
            tokens.extend(new)
            self._counted[i] = len(out)
        if tokens:
            index = (
                torch.tensor(rows, dtype=torch.long, device=device),
                torch.tensor(tokens, dtype=torch.long, device=device).clamp(0, vocab - 1),
            )
            ones = torch.ones(len(tokens), dtype=torch.float32, device=device)
            counts.index_put_(index, ones, accumulate=True)
        return counts

    def apply(self, logits: torch.Tensor, outputs: list[list[int]]) -> torch.Tensor:
        """`logits` (B, V) adjusted for each row's settings and output so far."""
        logits = logits.float()
        vocab, device = logits.shape[-1], logits.device
        counted = any(self.presence) or any(self.frequency)
        repeated = any(r != 1.0 for r in self.repetition)
        counts = self._output_counts(outputs, vocab, device) if counted or repeated else None
        if repeated and counts is not None:
            seen = (counts > 0) | self._prompt_seen(vocab, device)
            rp = self._rows(self.repetition, device)
            logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
        if counted and counts is not None:
            logits = logits - self._rows(self.frequency, device) * counts
            logits = logits - self._rows(self.presence, device) * (counts > 0).float()
        if any(self.bias):
            logits = logits + self._bias(vocab, device)
        return logits
