"""The OpenAPI schema: request and response bodies of the API endpoints.

The generation handlers read their bodies themselves (to give every bad input a 400 that
names the field), so FastAPI does not see a body parameter; `json_body` declares the
request body, and `install_openapi` puts the request models into the components.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from llmserve.schemas import ErrorResponse

_REF = "#/components/schemas/{model}"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request: the error's `param` names the field"),
        (401, "Missing or invalid credentials"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (429, "Rate limit or queue full (see `Retry-After`)"),
        (503, "Not ready, draining, or generation failed"),
    )
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON request body is `model`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        }
    }


def event_stream(description: str) -> dict[str, Any]:
    """The server-sent events alternative of a 200 answer (`"stream": true`)."""
    return {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": description,
    }


def install_openapi(app: FastAPI, request_models: Iterable[type[BaseModel]]) -> None:
    """Make `app.openapi()` include `request_models` in the components."""
    models = list(request_models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template=_REF)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
