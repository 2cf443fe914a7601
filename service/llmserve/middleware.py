"""Request id, body-size limit, access log and a last-resort error guard (pure ASGI)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.errors import APIError, error_body
from llmserve.logs import request_id_var
from llmserve.state import ServiceState

log = logging.getLogger("llmserve.api")
access_log = logging.getLogger("llmserve.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_QUIET_PATHS = {"/health", "/ready", "/metrics"}
# Keys of `request.state` the access line carries, when a handler set them: who called
# (`key:<digest prefix>`, `jwt:<subject>`, or `ip:<address>` when authentication is off;
# never the key itself) and the end-user identifiers the client sent.
LOGGED_STATE = ("principal", "end_user", "safety_identifier")


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
        scope.setdefault("state", {})
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
            state = scope.get("state") or {}
            logged = {key: state[key] for key in LOGGED_STATE if state.get(key)}
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
                    **logged,
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
