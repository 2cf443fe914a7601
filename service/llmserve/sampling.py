"""Vectorised next-token sampling over a batch with per-row settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.penalties import Penalties


@dataclass
class BatchSampling:
    """Per-row sampling settings of the running batch, rebuilt when the batch changes."""

    temperature: torch.Tensor  # (B,) float, 1.0 for greedy rows
    top_p: torch.Tensor  # (B,) float
    top_k: torch.Tensor  # (B,) long, 0 = off
    greedy: torch.Tensor  # (B,) bool
    generators: list[torch.Generator | None]
    all_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_temperature: bool
    max_top_k: int
    penalties: Penalties | None = None

    @classmethod
    def build(
        cls,
        temperature: list[float],
        top_p: list[float],
        top_k: list[int],
        generators: list[torch.Generator | None],
        device: torch.device,
        penalties: Penalties | None = None,
    ) -> BatchSampling:
        greedy = [t <= 1e-5 for t in temperature]
        temps = [1.0 if g else t for t, g in zip(temperature, greedy, strict=True)]
        sampled_k = [k for k, g in zip(top_k, greedy, strict=True) if not g and k > 0]
        sampled_p = [p for p, g in zip(top_p, greedy, strict=True) if not g and p < 1.0]
        return cls(
            temperature=torch.tensor(temps, dtype=torch.float32, device=device),
            top_p=torch.tensor(top_p, dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.long, device=device),
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            generators=generators,
            all_greedy=all(greedy),
            any_top_k=bool(sampled_k),
            any_top_p=bool(sampled_p),
            any_temperature=any(t != 1.0 for t in temps),
            max_top_k=max(sampled_k, default=0),
            penalties=penalties,
        )


def sample(
    logits: torch.Tensor,
    cfg: BatchSampling,
    default_generator: torch.Generator | None = None,
    outputs: list[list[int]] | None = None,
) -> torch.Tensor:
    """Pick one token per row from `logits` (B, V). Returns a (B,) long tensor on CPU.

    `outputs`, each row's tokens so far, feed the penalties when the batch has any.
    """
    if cfg.penalties is not None:
        logits = cfg.penalties.apply(logits, outputs or [[] for _ in range(logits.shape[0])])
    if cfg.all_greedy:
        return logits.argmax(dim=-1).cpu()
    logits = logits.float()
    greedy_tokens = logits.argmax(dim=-1) if bool(cfg.greedy.any()) else None
    if cfg.any_temperature:
        logits = logits / cfg.temperature.unsqueeze(1)
    if cfg.any_top_k:
        k = min(cfg.max_top_k, logits.shape[-1])
        top_vals = torch.topk(logits, k, dim=-1).values
        row_k = cfg.top_k.clamp(min=0, max=k)
        kth = top_vals.gather(1, (row_k - 1).clamp(min=0).unsqueeze(1))
        kth = torch.where(row_k.unsqueeze(1) > 0, kth, torch.full_like(kth, float("-inf")))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.any_top_p:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        cum = sorted_probs.cumsum(dim=-1)
        remove = (cum - sorted_probs) > cfg.top_p.unsqueeze(1)
        remove[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)
    probs = logits.softmax(dim=-1)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    unseeded = [i for i, g in enumerate(cfg.generators) if g is None]
    if len(unseeded) == probs.shape[0]:
        out = torch.multinomial(probs, 1, generator=default_generator).squeeze(1)
    else:
        if unseeded:
            idx = torch.tensor(unseeded, device=probs.device)
            out[idx] = torch.multinomial(probs[idx], 1, generator=default_generator).squeeze(1)
        for i, gen in enumerate(cfg.generators):
            if gen is not None:
                row = probs[i].cpu() if probs.device.type != "cpu" else probs[i]
                out[i] = torch.multinomial(row, 1, generator=gen)[0]
    if greedy_tokens is not None:
        out = torch.where(cfg.greedy, greedy_tokens, out)
    return out.cpu()
