"""What a client is told when the engine fails its request: a cause, never the exception text.

The exception itself (which may quote prompts, tensor contents or device state) goes to
the server log, with the request ids it touched.
"""

from __future__ import annotations

import torch

from llmserve.engine.faults import InjectedFault


def cause(exc: BaseException) -> str:
    """A short, fixed description of what went wrong."""
    if isinstance(exc, InjectedFault):
        return "injected fault"
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of accelerator memory"
    if isinstance(exc, MemoryError):
        return "out of memory"
    return "internal engine error"


def failure_message(exc: BaseException, stage: str, request_id: str) -> str:
    rid = request_id or "none"
    return (
        f"Generation failed: {cause(exc)} in the {stage} step (request id {rid}). "
        "The request can be retried."
    )


def shutdown_message(request_id: str) -> str:
    rid = request_id or "none"
    return f"The server shut down before the generation finished (request id {rid})."
