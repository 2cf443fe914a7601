"""The two forward passes of the batch engine: prefill of joiners, one decode step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmserve.engine.batch import Batch
from llmserve.sequence import Sequence


@dataclass
class Prefilled:
    cache: Any
    mask: torch.Tensor  # (B, L) long
    positions: torch.Tensor  # (B,) long: where each row's next token goes
    logits: torch.Tensor  # (B, V): next-token logits


def prefill(model: Any, seqs: list[Sequence], pad_id: int, device: torch.device) -> Prefilled:
    """Run the prompts of `seqs` through the model together, left-padded."""
    from transformers import DynamicCache

    contexts = [s.context_ids for s in seqs]  # a preempted request resumes where it was
    longest = max(len(c) for c in contexts)
    rows = []
    mask_rows = []
    for context in contexts:
        pad = longest - len(context)
        rows.append([pad_id] * pad + context)
        mask_rows.append([0] * pad + [1] * len(context))
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    mask = torch.tensor(mask_rows, dtype=torch.long, device=device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=DynamicCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
    )
    return Prefilled(out.past_key_values, mask, mask.sum(-1), out.logits[:, -1, :])


def decode(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step; returns the next-token logits (B, V) and the extended mask.

    The step appends to `batch.cache` in place: if it raises, the cache is unusable.
    """
    mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.seqs), 1))], dim=1)
    out = model(
        input_ids=batch.last_tokens.unsqueeze(1),
        attention_mask=mask,
        position_ids=batch.positions.unsqueeze(1),
        past_key_values=batch.cache,
        use_cache=True,
    )
    return out.logits[:, -1, :], mask
