"""OpenAI completion bodies: the full response and the stream chunks, for both endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmserve.sequence import Sequence


def usage(seq: Sequence) -> dict[str, int]:
    prompt, completion = len(seq.prompt_ids), len(seq.output_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def choice(content: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """The single choice; `content` is its payload (`message`, `delta` or `text`)."""
    return {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}


@dataclass(frozen=True)
class Envelope:
    """What every body of one completion shares: its id, object type and model."""

    id: str
    object: str
    model: str

    def body(self, created: int, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def response(
        self, content: dict[str, Any], finish_reason: str | None, seq: Sequence
    ) -> dict[str, Any]:
        """The non-streaming response."""
        return self.body(int(time.time()), [choice(content, finish_reason)], usage=usage(seq))


@dataclass(frozen=True)
class Chunks:
    """Builds the stream chunks of one completion.

    `content` turns a piece of generated text into the choice payload (None: nothing to
    send yet); `closing` makes the payload of the chunk that carries the finish reason.
    With `include_usage`, every chunk has `"usage": null` and a last chunk with no choices
    carries the usage.
    """

    envelope: Envelope
    seq: Sequence
    content: Callable[[str], dict[str, Any] | None]
    closing: Callable[[], dict[str, Any]]
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, content: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"usage": None} if self.include_usage else {}
        return self.envelope.body(self.created, [choice(content, finish_reason)], **extra)

    def delta(self, text: str) -> dict[str, Any] | None:
        content = self.content(text)
        return None if content is None else self.chunk(content)

    def finish(self, reason: str) -> list[dict[str, Any]]:
        out = [self.chunk(self.closing(), reason)]
        if self.include_usage:
            out.append(self.envelope.body(self.created, [], usage=usage(self.seq)))
        return out
