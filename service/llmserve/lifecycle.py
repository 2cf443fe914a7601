"""The life of a generation request: admission, submission, waiting or streaming, release.

Every function takes the service state explicitly. A request holds an in-flight slot
(which the drain on SIGTERM waits for) from admission until its response is sent, its
stream included; a client that goes away cancels its sequence, queued or running.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from llmserve.auth import AuthError, Principal
from llmserve.engine import BaseEngine, EngineStopped, QueueFull
from llmserve.errors import APIError
from llmserve.loader import LoadedModel
from llmserve.logs import request_id_var
from llmserve.openai_format import Chunks
from llmserve.params import sampling_params
from llmserve.protocol import SamplingFields
from llmserve.ratelimit import RateLimiter
from llmserve.sequence import Event, Sequence
from llmserve.state import ServiceState
from llmserve.streaming import EventStream, generation_failed, sse, stream_events

log = logging.getLogger("llmserve.api")

# The caller of the request being handled (a `Principal.key`): in-flight slots count per key.
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default="")

# Prompts up to this many characters are tokenized on the event loop; longer ones in a thread.
_INLINE_TOKENIZE_CHARS = 16_384


def too_many(state: ServiceState, reason: str, message: str, code: str, retry: int) -> APIError:
    """A 429 with `Retry-After`, counted as rejected for `reason`."""
    state.reject(reason)
    return APIError(429, message, code=code, headers={"Retry-After": str(retry)})


def authenticate(state: ServiceState, request: Request) -> Principal:
    """The caller, or a 401; a client address that keeps failing gets a 429 instead,
    without its credentials being tried. The access log names the caller."""
    client = request.client.host if request.client else "unknown"
    blocked = state.auth_failures.wait(client)
    if blocked > 0:
        raise too_many(
            state,
            "auth_failures",
            "Too many failed authentication attempts from this address; retry later.",
            "too_many_auth_failures",
            RateLimiter.retry_after(blocked),
        )
    try:
        principal = state.auth.authenticate(request.headers.get("authorization"), client)
    except AuthError as exc:
        state.auth_failures.check(client)
        state.reject("unauthorized")
        raise APIError(
            401, str(exc), code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        ) from exc
    request.state.principal = principal.key
    principal_var.set(principal.key)
    return principal


def admit(state: ServiceState, request: Request) -> Principal:
    """Draining, credentials, rate limit, the caller's concurrency and readiness, in that
    order."""
    if state.draining:
        state.reject("draining")
        raise APIError(503, "Server is shutting down.", code="draining")
    principal = authenticate(state, request)
    wait = state.limiter.check(principal.key)
    if wait > 0:
        raise too_many(
            state,
            "rate_limited",
            "Rate limit exceeded; retry later.",
            "rate_limit_exceeded",
            RateLimiter.retry_after(wait),
        )
    limit = state.settings.max_concurrent_per_key
    if limit > 0 and state.inflight_by_key.get(principal.key, 0) >= limit:
        raise too_many(
            state,
            "concurrency_limit",
            f"This key already has {limit} requests in flight, its limit; retry when one ends.",
            "concurrency_limit_exceeded",
            state.retry_after(),
        )
    if not state.accepting:
        state.reject("not_ready")
        raise APIError(503, f"Model is not ready ({state.phase}).", code="not_ready")
    return principal


async def holding_slot(state: ServiceState, handler: Callable[[], Awaitable[Response]]) -> Response:
    """Run `handler` holding an in-flight slot; a stream releases it when it ends."""
    key = principal_var.get()
    state.acquire(key)
    try:
        response = await handler()
    except APIError as exc:
        state.release(key)
        if exc.status == 400:
            state.reject("invalid_request")
        raise
    except BaseException:
        state.release(key)
        raise
    if not isinstance(response, EventStream):
        state.release(key)
    return response


def check_model(state: ServiceState, name: str | None) -> None:
    settings = state.settings
    if name and name not in (settings.served_model_name, settings.model):
        state.reject("model_not_found")
        raise APIError(
            404,
            f"The requested model does not exist; this server serves "
            f"'{settings.served_model_name}'.",
            param="model",
            code="model_not_found",
        )


def record_end_user(request: Request, user: str | None, safety_identifier: str | None) -> None:
    """Put the client's end-user identifiers on the request's access log line."""
    if user:
        request.state.end_user = user
    if safety_identifier:
        request.state.safety_identifier = safety_identifier


async def offload(fn: Callable[[], Any], size: int) -> Any:
    """Run `fn` (tokenization) inline when the input is small, else in a thread."""
    if size <= _INLINE_TOKENIZE_CHARS:
        return fn()
    return await asyncio.to_thread(fn)


def engine_of(state: ServiceState) -> BaseEngine:
    engine = state.engine
    if engine is None:
        raise APIError(503, "Model is not ready.", code="not_ready")
    return engine


async def submit(
    state: ServiceState,
    kind: str,
    req: SamplingFields,
    loaded: LoadedModel,
    prompt_ids: list[int],
    text: str,
    default_max_tokens: int | None,
    max_tokens: int | None = None,
) -> Sequence:
    """Check the sampling settings, log the prompt if asked to and queue the sequence."""
    params = sampling_params(
        req,
        len(prompt_ids),
        loaded.max_model_len,
        state.defaults,
        default_max_tokens,
        max_tokens,
        vocab_size=int(loaded.model.config.vocab_size),
    )
    if state.settings.log_prompts:
        state.prompt_log.submit(kind, text, request_id_var.get())
    engine = engine_of(state)
    seq = engine.new_sequence(prompt_ids, params, request_id_var.get())
    try:
        engine.submit(seq)
    except QueueFull as exc:
        state.reject("queue_full")
        raise APIError(
            429,
            "Too many requests are waiting; retry later.",
            code="queue_full",
            headers={"Retry-After": str(state.retry_after())},
        ) from exc
    except EngineStopped as exc:
        state.reject("draining")
        raise APIError(503, "Server is shutting down.", code="draining") from exc
    return seq


async def collect(state: ServiceState, request: Request, seq: Sequence) -> tuple[str, Event]:
    """Wait for the whole output; a client that goes away cancels the sequence at once."""
    engine = engine_of(state)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                engine.cancel(seq)
                return

    watcher = asyncio.ensure_future(watch())
    parts: list[str] = []
    try:
        while True:
            event = await seq.queue.get()
            if event.kind == "delta":
                parts.append(event.text)
                continue
            return "".join(parts), event
    finally:
        watcher.cancel()
        if not seq.finished:
            engine.cancel(seq)


async def finished(state: ServiceState, request: Request, seq: Sequence) -> tuple[str, Event]:
    """The whole output and the finish event; a failed generation raises a 503."""
    out, event = await collect(state, request, seq)
    if event.kind == "error":
        raise generation_failed(event)
    return out, event


def streaming(
    state: ServiceState, seq: Sequence, chunks: Chunks, opening: dict[str, Any] | None
) -> EventStream:
    """Stream the chunks, `opening` first when given; cleanup cancels and releases."""
    engine = engine_of(state)
    key = principal_var.get()
    released = False

    def cleanup() -> None:
        nonlocal released
        if not seq.finished:
            engine.cancel(seq)
        if not released:
            released = True
            state.release(key)

    async def body() -> AsyncIterator[str]:
        if opening is not None:
            yield sse(chunks.chunk(opening))
        async for piece in stream_events(seq, chunks.delta, chunks.finish):
            yield piece

    return EventStream(body(), cleanup)
