"""What the generation routes share: the state, reading the body, registration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from llmserve.body import parse_body
from llmserve.errors import APIError
from llmserve.lifecycle import admit, holding_slot
from llmserve.loader import LoadedModel
from llmserve.openapi import ERROR_RESPONSES, event_stream, json_body
from llmserve.protocol import StrictModel
from llmserve.state import ServiceState

Handler = Callable[[ServiceState, Request], Awaitable[Response]]
Req = TypeVar("Req", bound=StrictModel)


def service(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def read(
    state: ServiceState, request: Request, model: type[Req]
) -> tuple[bytes, Req, LoadedModel]:
    """The raw body, the validated request and the loaded model."""
    raw = await request.body()
    req = parse_body(raw, model)
    loaded = state.loaded
    if loaded is None:
        raise APIError(503, "Model is not ready.", code="not_ready")
    return raw, req, loaded


def add_generation_route(
    router: APIRouter,
    path: str,
    handler: Handler,
    *,
    request_model: type[BaseModel],
    response_model: type[BaseModel],
    summary: str,
    streams: bool = True,
) -> None:
    """A POST route that admits the request, then runs `handler` holding an in-flight slot."""

    async def endpoint(request: Request) -> Response:
        state = service(request)
        admit(state, request)
        return await holding_slot(state, lambda: handler(state, request))

    responses = dict(ERROR_RESPONSES)
    if streams:
        responses[200] = event_stream(
            'The completion; with `"stream": true`, server-sent events ending in `data: [DONE]`'
        )
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=handler.__name__,
        summary=summary,
        response_model=response_model,
        responses=responses,
        openapi_extra=json_body(request_model),
    )
