"""Public probes: liveness, readiness (with the engine's health) and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from llmserve.routes.common import service

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health(request: Request) -> JSONResponse:
    """200 while the process serves HTTP and its engine thread runs; the body tells more."""
    state = service(request)
    body: dict[str, Any] = {"status": "ok", "phase": state.phase}
    if state.engine is not None:
        engine = state.engine.health()
        body["engine"] = engine.as_dict()
        if engine.reason == "engine_dead":
            body["status"] = "engine_dead"
            return JSONResponse(body, status_code=503)
    return JSONResponse(body)


@router.get("/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    state = service(request)
    readiness = state.readiness()
    if readiness.ok:
        return JSONResponse({"status": "ready", "model": state.settings.served_model_name})
    body = {"status": "unavailable", "reason": readiness.reason}
    if readiness.detail:
        body["detail"] = readiness.detail
    return JSONResponse(body, status_code=503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(service(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
