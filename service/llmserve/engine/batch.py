"""The running batch as one value: sequences, shared KV cache, mask, positions, sampling.

Rows are left-padded: `mask` (B, L) marks real tokens, `positions` (B,) is the position of
each row's next token, `last_tokens` (B,) its input at the next decode step. `merge` and
`compact` compute every new tensor before they store any, so one that raises leaves the
batch as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from llmserve.penalties import Penalties
from llmserve.sampling import BatchSampling
from llmserve.sequence import Sequence


def sampling_for(seqs: list[Sequence], device: torch.device) -> BatchSampling:
    return BatchSampling.build(
        [s.params.temperature for s in seqs],
        [s.params.top_p for s in seqs],
        [s.params.top_k for s in seqs],
        [s.generator for s in seqs],
        device,
        Penalties.build([s.params for s in seqs], [s.prompt_ids for s in seqs]),
    )


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - t.shape[-2]
    if extra <= 0:
        return t
    return F.pad(t, (0, 0, extra, 0))


def _store(cache: Any, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (keys, values) in zip(cache.layers, layers, strict=True):
        layer.keys = keys
        layer.values = values


@dataclass
class Batch:
    seqs: list[Sequence]
    cache: Any  # a transformers DynamicCache
    mask: torch.Tensor  # (B, L) long
    positions: torch.Tensor  # (B,) long
    last_tokens: torch.Tensor  # (B,) long
    sampling: BatchSampling

    def merge(self, other: Batch) -> Batch:
        """This batch with `other`'s rows appended; `other`'s cache holds the result."""
        old_len, new_len = self.mask.shape[1], other.mask.shape[1]
        length = max(old_len, new_len)
        layers = [
            (
                torch.cat([_pad_left(a.keys, length), _pad_left(b.keys, length)]),
                torch.cat([_pad_left(a.values, length), _pad_left(b.values, length)]),
            )
            for a, b in zip(self.cache.layers, other.cache.layers, strict=True)
        ]
        mask = torch.cat(
            [F.pad(self.mask, (length - old_len, 0)), F.pad(other.mask, (length - new_len, 0))]
        )
        positions = torch.cat([self.positions, other.positions])
        last_tokens = torch.cat([self.last_tokens, other.last_tokens])
        seqs = self.seqs + other.seqs
        sampling = sampling_for(seqs, mask.device)
        _store(other.cache, layers)
        return Batch(seqs, other.cache, mask, positions, last_tokens, sampling)

    def advanced(self, mask: torch.Tensor, tokens: torch.Tensor) -> Batch:
        """The batch after a decode step that used `mask` and produced `tokens`."""
        return replace(self, mask=mask, positions=self.positions + 1, last_tokens=tokens)

    def compacted(self) -> Batch | None:
        """Without finished rows and without leading columns that are padding in every row.

        None when no row is left.
        """
        return self.keeping([i for i, s in enumerate(self.seqs) if not s.finished])

    @property
    def slots(self) -> int:
        """Token slots the cache holds: rows x width."""
        return int(self.mask.shape[0] * self.mask.shape[1])

    def keeping(self, keep: list[int]) -> Batch | None:
        """Only the rows at `keep`, without leading columns that are padding in every row.

        None when no row is left.
        """
        if not keep:
            return None
        layers = [(layer.keys, layer.values) for layer in self.cache.layers]
        mask, positions, last_tokens = self.mask, self.positions, self.last_tokens
        seqs, sampling = self.seqs, self.sampling
        if len(keep) != len(self.seqs):
            idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
            layers = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in layers]
            mask = mask.index_select(0, idx)
            positions = positions.index_select(0, idx)
            last_tokens = last_tokens.index_select(0, idx)
            seqs = [self.seqs[i] for i in keep]
            sampling = sampling_for(seqs, mask.device)
        first = int(mask.any(dim=0).to(torch.int8).argmax().item())
        if first > 0:
            layers = [(k[:, :, first:, :], v[:, :, first:, :]) for k, v in layers]
            mask = mask[:, first:]
        _store(self.cache, layers)
        return Batch(seqs, self.cache, mask, positions, last_tokens, sampling)
