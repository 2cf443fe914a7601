"""Request bodies of the API.

The OpenAI endpoints are strict: every field of OpenAI's chat and completions requests is
declared with its type, and is either honoured or, when this server does not implement it,
accepted only with the value that leaves it off (`Only`); anything else, an unknown field
included, is a 400 naming it. Types are strict too: `"5"` is not a number and `1` is not a
boolean. `/generate` is the service's own endpoint and ignores fields it does not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.errors import APIError
from llmserve.unsupported import Only, is_empty, is_false, is_one, is_zero, never, one_of

# Integer sampling fields end up in int64 tensors or C counters in the engine: bound them here
# so an absurd value is a 400 naming the field instead of an overflow inside the engine.
MAX_INT_PARAM = 2**31 - 1
MAX_ID_CHARS = 256

_NO_TOOLS = "this server does not call tools; only null or an empty list is accepted"
_ONLY_NULL = "only null is accepted"
_ONLY_ZERO = "only 0 is accepted"
_ONLY_FALSE = "only false is accepted"

Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
# Token id (a decimal string, as OpenAI sends it) -> bias added to its logit.
MAX_LOGIT_BIAS = 300
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None,
    Field(max_length=MAX_LOGIT_BIAS),
]
NotImplementedObject = Annotated[dict[str, Any] | None, Only(never, _ONLY_NULL)]
Identifier = Annotated[str | None, Field(max_length=MAX_ID_CHARS)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def check(self) -> None:
        """Rules that involve more than one field; raise `APIError`."""


class StreamOptions(StrictModel):
    include_usage: bool | None = False
    include_obfuscation: Annotated[bool | None, Only(is_false, _ONLY_FALSE)] = None


class SamplingFields(StrictModel):
    """The fields every generation endpoint honours."""

    model: Identifier = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT_PARAM)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    # The range torch.Generator.manual_seed accepts.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: Annotated[
        int | None, Only(is_one, "only n=1 is supported: this server returns one choice")
    ] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Extensions (as in vLLM): top-k sampling, fixed-length outputs for benchmarks.
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT_PARAM)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(default=0, ge=0, le=MAX_INT_PARAM)
    # Divides the logits of tokens already in the prompt or output (as in vLLM); 1 is off.
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400,
                "'stream_options' is only allowed when 'stream' is true.",
                param="stream_options",
            )


class _OpenAIFields(SamplingFields):
    """Fields the chat and completions endpoints share beyond sampling."""

    # An end-user identifier: recorded in the request's log line.
    user: Identifier = None
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logit_bias: LogitBias = None


class TextPart(StrictModel):
    type: Annotated[str, Only(one_of("text"), "only content parts of type 'text' are accepted")]
    text: str


_TOOL_ROLES = "tool and function messages need tool calling, which this server does not implement"


class ChatMessage(StrictModel):
    role: Annotated[
        Literal["system", "developer", "user", "assistant", "tool", "function"],
        Only(one_of("system", "developer", "user", "assistant"), _TOOL_ROLES),
    ]
    content: str | list[TextPart] | None = None
    name: Annotated[
        str | None, Only(never, "the chat template has no place for names; only null is accepted")
    ] = None
    refusal: Annotated[str | None, Only(never, _ONLY_NULL)] = None
    tool_calls: Annotated[list[dict[str, Any]] | None, Only(is_empty, _NO_TOOLS)] = None
    function_call: NotImplementedObject = None
    tool_call_id: Annotated[str | None, Only(never, _NO_TOOLS)] = None
    audio: NotImplementedObject = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(StrictModel):
    type: Annotated[
        Literal["text", "json_object", "json_schema"],
        Only(one_of("text"), 'only {"type": "text"} is accepted (no structured output)'),
    ]
    json_schema: NotImplementedObject = None


class ChatCompletionRequest(_OpenAIFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT_PARAM)
    # Like `user`: recorded in the request's log line.
    safety_identifier: Identifier = None
    # Without tools there is nothing to call, so both values hold.
    parallel_tool_calls: bool | None = None
    logprobs: Annotated[bool | None, Only(is_false, _ONLY_FALSE)] = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20), Only(is_zero, _ONLY_ZERO)] = None
    tools: Annotated[list[dict[str, Any]] | None, Only(is_empty, _NO_TOOLS)] = None
    tool_choice: Annotated[
        str | dict[str, Any] | None,
        Only(one_of("none", "auto"), "only 'none' or 'auto' is accepted (no tools)"),
    ] = None
    functions: Annotated[list[dict[str, Any]] | None, Only(is_empty, _NO_TOOLS)] = None
    function_call: Annotated[
        str | dict[str, Any] | None,
        Only(one_of("none", "auto"), "only 'none' or 'auto' is accepted (no tools)"),
    ] = None
    response_format: ResponseFormat | None = None
    modalities: Annotated[list[str] | None, Only(one_of(["text"]), 'only ["text"] is accepted')] = (
        None
    )
    audio: NotImplementedObject = None
    prediction: NotImplementedObject = None
    web_search_options: NotImplementedObject = None
    metadata: Annotated[
        dict[str, str] | None, Only(is_empty, "nothing is stored; only an empty object is accepted")
    ] = None
    store: Annotated[bool | None, Only(is_false, "nothing is stored; only false is accepted")] = (
        None
    )
    service_tier: Annotated[
        str | None, Only(one_of("auto", "default"), "only 'auto' or 'default' is accepted")
    ] = None
    reasoning_effort: Annotated[str | None, Only(never, _ONLY_NULL)] = None
    verbosity: Annotated[str | None, Only(never, _ONLY_NULL)] = None
    prompt_cache_key: Annotated[
        str | None, Only(never, "there is no prompt cache; only null is accepted")
    ] = None

    def check(self) -> None:
        super().check()
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise APIError(
                400,
                "'max_tokens' and 'max_completion_tokens' differ; set one of them.",
                param="max_completion_tokens",
            )


class CompletionRequest(_OpenAIFields):
    """POST /v1/completions. `prompt`: a string, token ids, or a list of one of either."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    best_of: Annotated[int | None, Only(is_one, "only 1 is accepted")] = None
    logprobs: Annotated[int | None, Field(ge=0, le=5), Only(never, _ONLY_NULL)] = None
    suffix: Annotated[str | None, Only(one_of(""), "only null or an empty string is accepted")] = (
        None
    )


class GenerateRequest(SamplingFields):
    """POST /generate: a prompt string and any sampling field; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_INT_PARAM)


REQUESTS: tuple[type[StrictModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
)


_ALL_MODELS = (*REQUESTS, StreamOptions, TextPart, ChatMessage, ResponseFormat)
# Every field name of every request model: what may appear in an error's `param`.
FIELD_NAMES = frozenset(name for model in _ALL_MODELS for name in model.model_fields)
