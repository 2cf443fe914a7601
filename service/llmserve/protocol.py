"""Request bodies and their validation into prompt tokens plus sampling parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmserve.errors import APIError
from llmserve.sequence import SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
# Integer sampling fields end up in int64 tensors or C counters in the engine: bound them here
# so an absurd value is a 400 naming the field instead of an overflow inside the engine.
MAX_INT_PARAM = 2**31 - 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Model):
    include_usage: bool = False


class _Sampling(_Model):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT_PARAM)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT_PARAM)
    stop: str | list[str] | None = None
    # The range torch.Generator.manual_seed accepts.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extensions (as in vLLM): fixed-length outputs for benchmarks and tests.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=MAX_INT_PARAM)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT_PARAM)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    echo: bool = False


class GenerateRequest(_Sampling):
    prompt: str
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_INT_PARAM)


def parse_body(raw: bytes, model: type[_Model]) -> Any:
    """Decode JSON and validate it; every failure is a 400 in the OpenAI format."""
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise APIError(400, "Request body is not valid UTF-8.", code="invalid_json") from exc
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False, include_input=False)) from exc
    except RecursionError as exc:
        raise APIError(400, "Request body is nested too deeply.") from exc


def validation_error(errors: Any) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the parameter."""
    errors = list(errors)
    if not errors:
        return APIError(400, "Invalid request.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return APIError(400, f"Invalid value for '{param}': {msg}{more}", param=param)


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


def sampling_params(
    req: _Sampling,
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
    if req.n is not None and req.n != 1:
        raise APIError(400, "Only n=1 is supported: this server returns one choice.", param="n")
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
        max_tokens=requested,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        seed=seed,
        ignore_eos=req.ignore_eos,
        min_tokens=min(req.min_tokens, requested),
    )
