"""Load a model and tokenizer with the requested precision on the best device."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from llmserve.device import select_device

log = logging.getLogger("llmserve.loader")

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "int8", "int4")


class LoadError(RuntimeError):
    """The model cannot be loaded as configured."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: Any
    dtype: Any
    precision: str
    max_model_len: int
    eos_ids: list[int]


def configure_threads(threads: int = 0) -> int:
    """Use one intra-op thread per available core (cgroup/affinity aware)."""
    import torch

    if threads <= 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # can be set once per process only
        torch.set_num_interop_threads(1)
    return threads


def resolve_precision(precision: str, cuda: bool, bf16_ok: bool) -> str:
    if precision not in PRECISIONS:
        raise LoadError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if bf16_ok else "fp16"
    if precision in ("int8", "int4") and not cuda:
        raise LoadError(
            f"precision {precision} needs a CUDA GPU and bitsandbytes; "
            "use fp32 (or auto) on a CPU-only host"
        )
    return precision


def load_model(path: str, precision: str = "auto", device_type: str = "") -> LoadedModel:
    """Load onto `device_type` ("cuda" or "cpu"; empty: chosen as by --device auto)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not os.path.isdir(path):
        raise LoadError(f"model directory {path!r} does not exist")
    cuda = (device_type or select_device("auto")) == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    resolved = resolve_precision(precision, cuda, bf16_ok)
    device = torch.device("cuda" if cuda else "cpu")
    kwargs: dict[str, Any] = {}
    if resolved in ("int8", "int4"):
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise LoadError(
                f"precision {resolved} needs bitsandbytes: pip install 'llmserve[quant]'"
            ) from exc
        if resolved == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if bf16_ok else torch.float16,
                bnb_4bit_quant_type="nf4",
            )
        kwargs["device_map"] = {"": 0}
        dtype = torch.bfloat16 if bf16_ok else torch.float16
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolved]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if "quantization_config" not in kwargs:
        model = model.to(device)
    model.eval()
    # The model's positions; the server narrows this to its context limit (memory.py).
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 4096
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    return LoadedModel(model, tokenizer, device, dtype, resolved, limit, eos_ids)
