"""The HTTP application: the routers, the error handlers and the request-context middleware."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from llmserve import __version__
from llmserve.body import validation_error
from llmserve.errors import APIError, error_body
from llmserve.middleware import RequestContextMiddleware
from llmserve.openapi import install_openapi
from llmserve.protocol import REQUESTS
from llmserve.routes import debug, native, openai, probes
from llmserve.routes.common import service
from llmserve.state import ServiceState

log = logging.getLogger("llmserve.api")

DESCRIPTION = (
    "OpenAI-compatible inference with continuous batching. Every request field is either "
    "honoured or answered with a 400 whose `param` names it."
)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    service(request).reject("invalid_request")
    return validation_error(exc.errors()).response()


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("Internal server error.", "internal_error"), status_code=500)


def create_app(state: ServiceState) -> ASGIApp:
    app = FastAPI(
        title="llmserve",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unhandled)
    app.include_router(probes.router)
    app.include_router(openai.router)
    app.include_router(native.router)
    if state.settings.enable_fault_injection:
        app.include_router(debug.router)
    install_openapi(app, REQUESTS)
    return RequestContextMiddleware(app, state)
