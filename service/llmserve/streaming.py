"""Server-sent events: the framing, the streaming response and the event-to-chunk loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llmserve.errors import APIError
from llmserve.sequence import Event, Sequence

DONE = "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """A streaming response that always runs its cleanup, even if never iterated."""

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.headers["cache-control"] = "no-cache"
        self.headers["x-accel-buffering"] = "no"
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


def sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n\n"


def generation_failed(event: Event) -> APIError:
    return APIError(
        503,
        event.error or "generation failed",
        code="generation_failed",
        headers={"Retry-After": "1"},
    )


async def stream_events(
    seq: Sequence,
    on_delta: Callable[[str], dict[str, Any] | None],
    on_finish: Callable[[str], list[dict[str, Any]]],
) -> AsyncIterator[str]:
    """Turn the sequence's events into SSE lines, ending with `[DONE]`."""
    while True:
        event = await seq.queue.get()
        text = ""
        # Coalesce what has piled up since the last write.
        while event.kind == "delta":
            text += event.text
            if seq.queue.empty():
                break
            event = seq.queue.get_nowait()
        chunk = on_delta(text) if text else None
        if chunk is not None:
            yield sse(chunk)
        if event.kind == "delta":
            continue
        if event.kind == "error":
            yield sse(generation_failed(event).body())
            yield DONE
            return
        for chunk in on_finish(event.finish_reason or "stop"):
            yield sse(chunk)
        yield DONE
        return
