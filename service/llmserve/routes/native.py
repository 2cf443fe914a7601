"""POST /generate: the service's own minimal endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmserve.lifecycle import finished, offload, submit
from llmserve.openai_format import usage
from llmserve.protocol import GenerateRequest
from llmserve.routes.common import add_generation_route, read
from llmserve.schemas import GenerateResponse
from llmserve.state import ServiceState

router = APIRouter()


async def generate(state: ServiceState, request: Request) -> Response:
    raw, req, loaded = await read(state, request, GenerateRequest)
    decoder = loaded.tokenizer.backend_tokenizer
    ids = await offload(lambda: decoder.encode(req.prompt).ids, len(raw))
    seq = await submit(state, "generate", req, loaded, ids, req.prompt, 16)
    out, event = await finished(state, request, seq)
    return JSONResponse({"output": out, "finish_reason": event.finish_reason, "usage": usage(seq)})


add_generation_route(
    router,
    "/generate",
    generate,
    request_model=GenerateRequest,
    response_model=GenerateResponse,
    summary="Generate text from a prompt",
    streams=False,
)
