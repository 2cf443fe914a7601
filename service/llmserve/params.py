"""From a validated request to the engine's SamplingParams: defaults, limits, context length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmserve.errors import APIError
from llmserve.protocol import SamplingFields
from llmserve.sequence import SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults from the model's generation_config, used when a request omits them."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_generation_config(cls, cfg: Any) -> GenerationDefaults:
        if cfg is None or not getattr(cfg, "do_sample", False):
            return cls()
        return cls(
            temperature=float(getattr(cfg, "temperature", None) or 1.0),
            top_p=float(getattr(cfg, "top_p", None) or 1.0),
            top_k=0,
        )


def logit_bias(bias: dict[str, float] | None, vocab_size: int | None) -> dict[int, float]:
    """Token ids from the request's decimal strings, each checked against the vocabulary."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        token = int(key) if key.isascii() and key.isdigit() and len(key) < 10 else -1
        if token < 0 or (vocab_size is not None and vocab_size > 0 and token >= vocab_size):
            high = f" below {vocab_size}" if vocab_size else ""
            raise APIError(
                400,
                f"'logit_bias' keys must be token ids (decimal strings of integers{high}).",
                param="logit_bias",
            )
        out[token] = value
    return out


def sampling_params(
    req: SamplingFields,
    prompt_tokens: int,
    max_model_len: int,
    defaults: GenerationDefaults,
    default_max_tokens: int | None,
    max_tokens: int | None = None,
    vocab_size: int | None = None,
) -> SamplingParams:
    """Check limits and build SamplingParams. `default_max_tokens` None = rest of context.

    `vocab_size`, when given, caps top_k (a larger k keeps every token anyway).
    """
    if prompt_tokens == 0:
        raise APIError(400, "The prompt is empty.", param="prompt")
    room = max_model_len - prompt_tokens
    requested = max_tokens if max_tokens is not None else req.max_tokens
    if requested is None:
        requested = room if default_max_tokens is None else min(default_max_tokens, room)
        if requested < 1:
            raise APIError(
                400,
                f"This model's maximum context length is {max_model_len} tokens; "
                f"the prompt alone has {prompt_tokens} tokens.",
                param="messages" if default_max_tokens is None else "prompt",
                code="context_length_exceeded",
            )
    elif prompt_tokens + requested > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, "
            f"{requested} for max_tokens). Please reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise APIError(
            400,
            f"At most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_LENGTH} characters.",
            param="stop",
        )
    stop = [s for s in stop if s]
    temperature = defaults.temperature if req.temperature is None else req.temperature
    top_p = defaults.top_p if req.top_p is None else req.top_p
    top_k = defaults.top_k if req.top_k is None else max(0, req.top_k)
    if vocab_size is not None and vocab_size > 0:
        top_k = min(top_k, vocab_size)
    seed = None if req.seed is None else req.seed & 0xFFFF_FFFF_FFFF_FFFF
    return SamplingParams(
        presence_penalty=getattr(req, "presence_penalty", None) or 0.0,
        frequency_penalty=getattr(req, "frequency_penalty", None) or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        logit_bias=logit_bias(getattr(req, "logit_bias", None), vocab_size),
        max_tokens=requested,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        seed=seed,
        ignore_eos=bool(req.ignore_eos),
        min_tokens=min(req.min_tokens or 0, requested),
    )
