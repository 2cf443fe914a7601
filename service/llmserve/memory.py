"""The KV-cache budget: how many token slots the running batch may hold.

The batch engine keeps one left-padded cache for all rows, so the batch holds
`rows x width` token slots, each `kv_bytes_per_token` bytes. The budget is what is left
of the device's memory (`gpu_memory_utilization` of it, as in vLLM) once the weights are
loaded, less a reserve for the activations of one prefill pass; on a CPU, of the memory
available to the process. `--kv-cache-tokens` sets it outright.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("llmserve.memory")

# The context limit when none is configured: what a 24-80 GB GPU holds for a 7B-32B model
# with room for a batch, rather than the model's full 128k positions.
DEFAULT_CONTEXT_LIMIT = 32768
GIB = 1024**3


class BudgetError(ValueError):
    """The configured context does not fit in memory."""


@dataclass(frozen=True)
class KVBudget:
    bytes_per_token: int
    tokens: int  # token slots the cache may hold
    detail: str  # how the number came about, for the log

    @property
    def bytes(self) -> int:
        return self.tokens * self.bytes_per_token


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Keys and values of one token across every layer."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * dtype_bytes


def activation_reserve(
    config: Any, dtype_bytes: int, max_prefill_tokens: int, max_batch_size: int
) -> int:
    """Memory one prefill pass and one decode step need beyond the cache: the hidden states
    and MLP intermediates of a layer for every prefill token, and fp32 logits."""
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    per_token = (4 * hidden + 3 * intermediate) * dtype_bytes
    logits = 2 * max_batch_size * int(config.vocab_size) * 4
    return max_prefill_tokens * per_token + logits


def _available_ram() -> int:
    """MemAvailable of /proc/meminfo, in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def compute_budget(
    config: Any,
    dtype_bytes: int,
    device_type: str,
    utilization: float,
    kv_cache_tokens: int,
    max_prefill_tokens: int,
    max_batch_size: int,
) -> KVBudget:
    per_token = kv_bytes_per_token(config, dtype_bytes)
    if kv_cache_tokens > 0:
        return KVBudget(per_token, kv_cache_tokens, "set by --kv-cache-tokens")
    reserve = activation_reserve(config, dtype_bytes, max_prefill_tokens, max_batch_size)
    if device_type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        used = total - free
        budget = int(total * utilization) - used - reserve
        detail = (
            f"{utilization:.2f} of {total / GIB:.1f} GiB, less {used / GIB:.1f} GiB in use "
            f"(weights) and {reserve / GIB:.1f} GiB for activations"
        )
    else:
        available = _available_ram()
        budget = int(available * utilization) - reserve
        detail = (
            f"{utilization:.2f} of {available / GIB:.1f} GiB of available memory, "
            f"less {reserve / GIB:.1f} GiB for activations"
        )
    if budget < per_token:
        raise BudgetError(
            f"no memory is left for the KV cache ({detail}); lower --max-prefill-tokens or "
            "--max-batch-size, raise --gpu-memory-utilization, or use a smaller precision"
        )
    return KVBudget(per_token, budget // per_token, detail)


def context_limit(positions: int, configured: int, budget: KVBudget) -> int:
    """The context limit: the configured one (else the default), at most the model's
    positions, which one request alone must be able to fill."""
    if configured > positions:
        log.warning(
            "max-model-len %d exceeds the model's %d positions; using %d",
            configured,
            positions,
            positions,
        )
    limit = min(positions, configured if configured > 0 else DEFAULT_CONTEXT_LIMIT)
    if limit > budget.tokens:
        if configured > 0:
            raise BudgetError(
                f"--max-model-len {limit} needs {limit * budget.bytes_per_token / GIB:.2f} GiB "
                f"of KV cache, but the budget holds {budget.tokens} tokens "
                f"({budget.bytes / GIB:.2f} GiB: {budget.detail}); lower --max-model-len or "
                "give the cache more memory"
            )
        log.warning(
            "context limit lowered to the KV budget",
            extra={"default_limit": limit, "kv_budget_tokens": budget.tokens},
        )
        limit = budget.tokens
    return limit
