"""The OpenAI endpoints: chat completions, completions and the model list."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmserve.errors import APIError
from llmserve.lifecycle import (
    authenticate,
    check_model,
    finished,
    offload,
    record_end_user,
    streaming,
    submit,
)
from llmserve.loader import LoadedModel
from llmserve.openai_format import Chunks, Envelope
from llmserve.openapi import ERROR_RESPONSES
from llmserve.protocol import ChatCompletionRequest, CompletionRequest
from llmserve.reasoning import ReasoningSplitter, split_reasoning
from llmserve.routes.common import add_generation_route, read, service
from llmserve.schemas import ChatCompletion, Completion, ModelList
from llmserve.state import ServiceState

router = APIRouter()


def _include_usage(req: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def models(request: Request) -> dict[str, Any]:
    state = service(request)
    authenticate(state, request)
    loaded = state.loaded
    return {
        "object": "list",
        "data": [
            {
                "id": state.settings.served_model_name,
                "object": "model",
                "created": state.created,
                "owned_by": "llmserve",
                "root": state.settings.model,
                "max_model_len": loaded.max_model_len if loaded else None,
            }
        ],
    }


def _chat_prompt(loaded: LoadedModel, req: ChatCompletionRequest) -> tuple[str, list[int]]:
    """The prompt text the chat template makes of the messages, and its tokens."""
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in req.messages
    ]
    try:
        text = loaded.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:
        raise APIError(
            400,
            "The model's chat template cannot format these messages "
            "(for example, roles in an order it does not accept).",
            param="messages",
        ) from exc
    ids = loaded.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return text, ids


async def chat(state: ServiceState, request: Request) -> Response:
    raw, req, loaded = await read(state, request, ChatCompletionRequest)
    check_model(state, req.model)
    record_end_user(request, req.user, req.safety_identifier)
    text, ids = await offload(lambda: _chat_prompt(loaded, req), len(raw))
    max_tokens = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
    seq = await submit(state, "chat", req, loaded, ids, text, None, max_tokens)
    envelope = Envelope(
        "chatcmpl-" + uuid.uuid4().hex, "chat.completion", state.settings.served_model_name
    )
    reasoning = state.settings.reasoning_parser == "deepseek_r1"
    if not req.stream:
        out, event = await finished(state, request, seq)
        message: dict[str, Any] = {"role": "assistant", "content": out}
        if reasoning:
            message["reasoning_content"], message["content"] = split_reasoning(out)
        return JSONResponse(envelope.response({"message": message}, event.finish_reason, seq))
    content, closing = _chat_payloads(reasoning)
    chunks = Chunks(
        replace(envelope, object="chat.completion.chunk"),
        seq,
        content,
        closing,
        _include_usage(req),
    )
    return streaming(state, seq, chunks, {"delta": {"role": "assistant", "content": ""}})


def _chat_payloads(
    reasoning: bool,
) -> tuple[Callable[[str], dict[str, Any] | None], Callable[[], dict[str, Any]]]:
    """How stream chunks carry generated text: as `content`, or split at `</think>`."""
    if not reasoning:
        return (lambda text: {"delta": {"content": text}}), (lambda: {"delta": {}})
    splitter = ReasoningSplitter()

    def content(text: str) -> dict[str, Any] | None:
        return _reasoning_delta(*splitter.feed(text))

    def closing() -> dict[str, Any]:
        return _reasoning_delta(*splitter.flush()) or {"delta": {}}

    return content, closing


def _reasoning_delta(reasoning: str, content: str) -> dict[str, Any] | None:
    """A delta with what there is of each; None when there is nothing to send."""
    delta = {"reasoning_content": reasoning, "content": content}
    delta = {key: value for key, value in delta.items() if value}
    return {"delta": delta} if delta else None


def _completion_prompt(loaded: LoadedModel, req: CompletionRequest) -> str | list[int]:
    """The prompt as text or token ids; a list of one prompt counts as that prompt."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise APIError(400, "Only one prompt per request is supported.", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    ids = [int(t) for t in prompt]  # type: ignore[arg-type]
    vocab = int(loaded.model.config.vocab_size)
    if any(not 0 <= t < vocab for t in ids):
        raise APIError(400, f"Prompt token ids must be in [0, {vocab}).", param="prompt")
    return ids


async def completions(state: ServiceState, request: Request) -> Response:
    raw, req, loaded = await read(state, request, CompletionRequest)
    check_model(state, req.model)
    record_end_user(request, req.user, None)
    prompt = _completion_prompt(loaded, req)
    decoder = loaded.tokenizer.backend_tokenizer
    if isinstance(prompt, str):
        text = prompt
        ids = await offload(lambda: decoder.encode(text).ids, len(raw))
    else:
        ids = prompt
        text = await offload(lambda: decoder.decode(ids), len(raw))
    seq = await submit(state, "completions", req, loaded, ids, text, 16)
    envelope = Envelope(
        "cmpl-" + uuid.uuid4().hex, "text_completion", state.settings.served_model_name
    )
    prefix = text if req.echo else ""
    if not req.stream:
        out, event = await finished(state, request, seq)
        return JSONResponse(envelope.response({"text": prefix + out}, event.finish_reason, seq))
    chunks = Chunks(
        envelope, seq, lambda text: {"text": text}, lambda: {"text": ""}, _include_usage(req)
    )
    return streaming(state, seq, chunks, {"text": prefix} if prefix else None)


add_generation_route(
    router,
    "/v1/chat/completions",
    chat,
    request_model=ChatCompletionRequest,
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI)",
)
add_generation_route(
    router,
    "/v1/completions",
    completions,
    request_model=CompletionRequest,
    response_model=Completion,
    summary="Completion (OpenAI)",
)
