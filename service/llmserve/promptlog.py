"""Prompt logging off the event loop: redaction runs on one worker thread, in order.

Redaction is linear in the prompt's length, but a long prompt still takes milliseconds
that would stall every stream served by the event loop. Past `max_pending` prompts not
yet written, new ones are dropped and counted rather than queued without bound.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from llmserve.redact import redact

log = logging.getLogger("llmserve.api")


class PromptLog:
    def __init__(self, max_pending: int = 1024) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt-log")

    def submit(self, endpoint: str, text: str, request_id: str) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return
            self._pending += 1
        self._executor.submit(self._write, endpoint, text, request_id)

    def _write(self, endpoint: str, text: str, request_id: str) -> None:
        try:
            log.info(
                "prompt",
                extra={"endpoint": endpoint, "prompt": redact(text), "request_id": request_id},
            )
        except Exception:
            log.exception("cannot log a prompt", extra={"request_id": request_id})
        finally:
            with self._lock:
                self._pending -= 1
                dropped, self.dropped = self.dropped, 0
            if dropped:
                log.warning("prompt log behind: %d prompt(s) not logged", dropped)

    def close(self) -> None:
        """Write what is queued, then stop the worker."""
        self._executor.shutdown(wait=True)
