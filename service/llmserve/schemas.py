"""Response bodies of the API, as models for the OpenAPI schema.

The handlers build these bodies as plain dicts (`openai_format`); the tests validate real
responses against these models, which keeps the two in step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

FinishReason = Literal["stop", "length"]


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Response):
    role: Literal["assistant"]
    # null when a reasoning model's output never ended its thinking
    content: str | None
    # with --reasoning-parser: what the model wrote before `</think>`
    reasoning_content: str | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: FinishReason | None


class ChatCompletion(_Response):
    """The body of a non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: None
    finish_reason: FinishReason | None


class Completion(_Response):
    """The body of a non-streamed completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class GenerateResponse(_Response):
    output: str
    finish_reason: FinishReason | None
    usage: Usage


class ModelCard(_Response):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int | None


class ModelList(_Response):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response):
    """Every error, in OpenAI's format."""

    error: ErrorDetail
