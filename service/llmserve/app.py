"""The HTTP API: OpenAI-compatible endpoints, /generate, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve import __version__
from llmserve.auth import Authenticator, AuthError, Principal
from llmserve.config import Settings
from llmserve.engine import BaseEngine, EngineStopped, QueueFull
from llmserve.errors import APIError, error_body
from llmserve.loader import LoadedModel
from llmserve.logs import request_id_var
from llmserve.metrics import Metrics
from llmserve.openai_format import Chunks, Envelope, usage
from llmserve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerationDefaults,
    parse_body,
    sampling_params,
    validation_error,
)
from llmserve.ratelimit import RateLimiter
from llmserve.redact import redact
from llmserve.sequence import Event, Sequence
from llmserve.streaming import EventStream, generation_failed, sse, stream_events

log = logging.getLogger("llmserve.api")
access_log = logging.getLogger("llmserve.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_QUIET_PATHS = {"/health", "/ready", "/metrics"}
_INLINE_TOKENIZE_CHARS = 16_384

Handler = Callable[[Request], Awaitable[Response]]
_Req = TypeVar("_Req", bound=BaseModel)


class ServiceState:
    """Everything the handlers share; the server fills in the engine once loaded."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.auth = Authenticator(
            settings.api_keys_file,
            settings.jwt_secret_file,
            settings.jwt_public_key_file,
            settings.jwt_algorithm,
            settings.jwt_audience,
            settings.jwt_issuer,
        )
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.engine: BaseEngine | None = None
        self.loaded: LoadedModel | None = None
        self.defaults = GenerationDefaults()
        self.phase = "loading"  # loading | warming_up | ready | draining | failed
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.created = int(time.time())

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and not self.draining and self.engine is not None

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self.idle.set()

    def reject(self, reason: str) -> None:
        self.metrics.request_rejected.labels(reason).inc()


# -- middleware -----------------------------------------------------------------------------
class RequestContextMiddleware:
    """Request id, body-size limit, access log and a last-resort error guard (pure ASGI)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        start = time.monotonic()
        status = {"code": 0, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *list(message["headers"]),
                    (b"x-request-id", rid.encode("latin-1")),
                ]
            await send(message)

        try:
            replay = await self._read_body(scope, receive, headers)
            if isinstance(replay, Response):
                await replay(scope, receive, send_wrapper)
            else:
                await self.app(scope, replay, send_wrapper)
        except Exception:
            log.exception("unhandled error")
            if not status["started"]:
                resp = JSONResponse(
                    error_body("Internal server error.", "internal_error"), status_code=500
                )
                await resp(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
            client = scope.get("client")
            access_log.log(
                level,
                "%s %s %s",
                scope.get("method"),
                path,
                status["code"],
                extra={
                    "method": scope.get("method"),
                    "path": path,
                    "status": status["code"],
                    "duration_ms": round((time.monotonic() - start) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
            request_id_var.reset(token)

    async def _read_body(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes]
    ) -> Receive | Response:
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return receive
        limit = self.state.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return APIError(400, "Invalid Content-Length header.").response()
            if size > limit:
                self.state.reject("body_too_large")
                return APIError(
                    413, f"Request body of {size} bytes exceeds the limit of {limit} bytes."
                ).response()
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([], message, receive)
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                self.state.reject("body_too_large")
                return APIError(413, f"Request body exceeds the limit of {limit} bytes.").response()
            chunks.append(body)
            if not message.get("more_body", False):
                break
        return _replay(chunks, None, receive)


def _replay(chunks: list[bytes], disconnect: Message | None, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if disconnect is not None:
                return disconnect
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await receive()

    return replay


def _include_usage(req: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


# -- application ------------------------------------------------------------------------------
def create_app(state: ServiceState) -> ASGIApp:
    app = FastAPI(title="llmserve", version=__version__, docs_url=None, redoc_url=None)
    app.state.service = state
    settings = state.settings

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.reject("invalid_request")
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("Internal server error.", "internal_error"), status_code=500)

    # -- public probes ------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "phase": state.phase}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready", "model": settings.served_model_name})
        reason = "draining" if state.draining else state.phase
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- guards -------------------------------------------------------------------------------
    def authenticate(request: Request) -> Principal:
        client = request.client.host if request.client else "unknown"
        try:
            return state.auth.authenticate(request.headers.get("authorization"), client)
        except AuthError as exc:
            state.reject("unauthorized")
            raise APIError(
                401,
                str(exc),
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            ) from exc

    def guard(request: Request) -> Principal:
        if state.draining:
            state.reject("draining")
            raise APIError(503, "Server is shutting down.", code="draining")
        principal = authenticate(request)
        wait = state.limiter.check(principal.key)
        if wait > 0:
            state.reject("rate_limited")
            raise APIError(
                429,
                "Rate limit exceeded; retry later.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RateLimiter.retry_after(wait))},
            )
        if not state.ready or state.engine is None:
            state.reject("not_ready")
            raise APIError(503, f"Model is not ready ({state.phase}).", code="not_ready")
        return principal

    def check_model(name: str | None) -> None:
        if name and name not in (settings.served_model_name, settings.model):
            state.reject("model_not_found")
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves "
                f"'{settings.served_model_name}'.",
                param="model",
                code="model_not_found",
            )

    async def run_in_thread(fn: Callable[[], Any], size: int) -> Any:
        if size <= _INLINE_TOKENIZE_CHARS:
            return fn()
        return await asyncio.to_thread(fn)

    async def start(
        kind: str,
        req: ChatCompletionRequest | CompletionRequest | GenerateRequest,
        loaded: LoadedModel,
        prompt_ids: list[int],
        text: str,
        default_max_tokens: int | None,
        max_tokens: int | None = None,
    ) -> Sequence:
        """Check the sampling settings, log the prompt if asked to and submit the sequence."""
        params = sampling_params(
            req,
            len(prompt_ids),
            loaded.max_model_len,
            state.defaults,
            default_max_tokens,
            max_tokens,
            vocab_size=int(loaded.model.config.vocab_size),
        )
        if settings.log_prompts:
            log.info("prompt", extra={"endpoint": kind, "prompt": redact(text)})
        engine = state.engine
        assert engine is not None
        seq = engine.new_sequence(prompt_ids, params, request_id_var.get())
        try:
            engine.submit(seq)
        except QueueFull as exc:
            state.reject("queue_full")
            raise APIError(
                429,
                "Too many requests are waiting; retry later.",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from exc
        except EngineStopped as exc:
            state.reject("draining")
            raise APIError(503, "Server is shutting down.", code="draining") from exc
        return seq

    async def collect(request: Request, seq: Sequence) -> tuple[str, Event]:
        """Wait for the whole output; a client that goes away cancels the sequence."""
        engine = state.engine
        assert engine is not None

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

    async def finished(request: Request, seq: Sequence) -> tuple[str, Event]:
        """The whole output and the finish event; a failed generation raises."""
        out, event = await collect(request, seq)
        if event.kind == "error":
            raise generation_failed(event)
        return out, event

    def streaming(seq: Sequence, chunks: Chunks, opening: dict[str, Any] | None) -> EventStream:
        """Stream the chunks, `opening` first when given; cleanup cancels and releases."""
        engine = state.engine
        assert engine is not None
        released = False

        def cleanup() -> None:
            nonlocal released
            if not seq.finished:
                engine.cancel(seq)
            if not released:
                released = True
                state.release()

        async def body() -> AsyncIterator[str]:
            if opening is not None:
                yield sse(chunks.chunk(opening))
            async for piece in stream_events(seq, chunks.delta, chunks.finish):
                yield piece

        return EventStream(body(), cleanup)

    async def guarded(handler: Callable[[], Awaitable[Response]]) -> Response:
        state.acquire()
        try:
            response = await handler()
        except APIError as exc:
            state.release()
            if exc.status == 400:
                state.reject("invalid_request")
            raise
        except BaseException:
            state.release()
            raise
        if not isinstance(response, EventStream):
            state.release()
        return response

    def guarded_post(path: str) -> Callable[[Handler], Handler]:
        """Register a generation endpoint: guard, then run it holding an in-flight slot."""

        def register(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                guard(request)
                return await guarded(lambda: handler(request))

            app.post(path, name=handler.__name__)(endpoint)
            return handler

        return register

    async def read(request: Request, model: type[_Req]) -> tuple[bytes, _Req, LoadedModel]:
        """The raw body, the validated request and the loaded model."""
        raw = await request.body()
        req: _Req = parse_body(raw, model)
        loaded = state.loaded
        assert loaded is not None
        return raw, req, loaded

    # -- OpenAI endpoints ---------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authenticate(request)
        loaded = state.loaded
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.served_model_name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "llmserve",
                    "root": settings.model,
                    "max_model_len": loaded.max_model_len if loaded else None,
                }
            ],
        }

    @guarded_post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        raw, req, loaded = await read(request, ChatCompletionRequest)
        check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"

        def encode() -> tuple[str, list[int]]:
            try:
                text = loaded.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:
                raise APIError(
                    400, f"Cannot apply the chat template: {exc}", param="messages"
                ) from exc
            ids = loaded.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
            return text, ids

        text, ids = await run_in_thread(encode, len(raw))
        max_tokens = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
        seq = await start("chat", req, loaded, ids, text, None, max_tokens)
        envelope = Envelope(
            "chatcmpl-" + uuid.uuid4().hex, "chat.completion", settings.served_model_name
        )
        if not req.stream:
            out, event = await finished(request, seq)
            message = {"role": "assistant", "content": out}
            return JSONResponse(envelope.response({"message": message}, event.finish_reason, seq))
        chunks = Chunks(
            replace(envelope, object="chat.completion.chunk"),
            seq,
            lambda text: {"delta": {"content": text}},
            {"delta": {}},
            _include_usage(req),
        )
        return streaming(seq, chunks, {"delta": {"role": "assistant", "content": ""}})

    @guarded_post("/v1/completions")
    async def completions(request: Request) -> Response:
        raw, req, loaded = await read(request, CompletionRequest)
        check_model(req.model)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "Only one prompt per request is supported.", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, list):
            vocab = int(loaded.model.config.vocab_size)
            if any(not 0 <= t < vocab for t in prompt):  # type: ignore[operator]
                raise APIError(400, f"Prompt token ids must be in [0, {vocab}).", param="prompt")
            ids = [int(t) for t in prompt]
            text = await run_in_thread(
                lambda: loaded.tokenizer.backend_tokenizer.decode(ids), len(raw)
            )
        else:
            text = str(prompt)
            ids = await run_in_thread(
                lambda: loaded.tokenizer.backend_tokenizer.encode(text).ids, len(raw)
            )
        seq = await start("completions", req, loaded, ids, text, 16)
        envelope = Envelope(
            "cmpl-" + uuid.uuid4().hex, "text_completion", settings.served_model_name
        )
        prefix = text if req.echo else ""
        if not req.stream:
            out, event = await finished(request, seq)
            return JSONResponse(envelope.response({"text": prefix + out}, event.finish_reason, seq))
        chunks = Chunks(
            envelope, seq, lambda text: {"text": text}, {"text": ""}, _include_usage(req)
        )
        return streaming(seq, chunks, {"text": prefix} if prefix else None)

    @guarded_post("/generate")
    async def generate(request: Request) -> Response:
        raw, req, loaded = await read(request, GenerateRequest)
        ids = await run_in_thread(
            lambda: loaded.tokenizer.backend_tokenizer.encode(req.prompt).ids, len(raw)
        )
        seq = await start("generate", req, loaded, ids, req.prompt, 16)
        out, event = await finished(request, seq)
        return JSONResponse(
            {"output": out, "finish_reason": event.finish_reason, "usage": usage(seq)}
        )

    if settings.enable_fault_injection:

        @app.post("/debug/fault")
        async def fault(request: Request) -> dict[str, Any]:
            """Make the next `count` forward passes raise (fault-injection testing)."""
            authenticate(request)
            try:
                data = json.loads(await request.body() or b"{}")
                count = int(data.get("count", 1)) if isinstance(data, dict) else 1
            except (ValueError, TypeError):
                count = 1
            if state.engine is None:
                raise APIError(503, "Model is not ready.")
            state.engine.inject_faults(max(0, min(count, 1000)))
            return {"armed": count}

    return RequestContextMiddleware(app, state)
