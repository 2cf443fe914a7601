#!/usr/bin/env python3
"""Stand-in for the inference service in Molecule scenarios (stdlib only).

Speaks the parts of the service's HTTP API that the load balancer cares about:
  GET  /ready                  200 {"status": "ready"} (503 while NOT_READY_FILE exists)
  GET  /health                 200 {"status": "ok"}
  GET  /v1/models              model list
  POST /v1/chat/completions    JSON answer, or server-sent events with "stream": true,
                               one event every --stream-delay seconds, ending "data: [DONE]";
                               a "fake_delay" field (seconds, at most 5) delays the JSON answer
Every answer names the backend and echoes the X-Request-ID it received.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOT_READY_FILE = "/run/fake-llm-backend/not-ready"
MODEL = "fake-llm"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-llm-backend/1"
    stream_delay = 0.3
    stream_events = 5

    def setup(self) -> None:
        super().setup()
        # Answers are written in several pieces: do not let Nagle hold them back.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _base(self) -> dict:
        return {
            "backend": socket.gethostname(),
            "request_id": self.headers.get("X-Request-ID", ""),
        }

    def do_GET(self) -> None:
        if self.path == "/ready":
            if os.path.exists(NOT_READY_FILE):
                self._send_json(503, {"status": "loading", **self._base()})
            else:
                self._send_json(200, {"status": "ready", **self._base()})
        elif self.path == "/health":
            self._send_json(200, {"status": "ok", **self._base()})
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": "not found"})
            return
        try:
            request = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": "invalid JSON"})
            return
        if request.get("stream"):
            self._stream()
        else:
            delay = request.get("fake_delay", 0)
            if isinstance(delay, (int, float)) and 0 < delay <= 5:
                time.sleep(delay)
            self._send_json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hello"},
                            "finish_reason": "stop",
                        }
                    ],
                    **self._base(),
                },
            )

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index in range(self.stream_events):
            event = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f"token{index} "}}],
                **self._base(),
            }
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            time.sleep(self.stream_delay)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stream-delay", type=float, default=0.3)
    parser.add_argument("--stream-events", type=int, default=5)
    args = parser.parse_args()
    Handler.stream_delay = args.stream_delay
    Handler.stream_events = args.stream_events
    ThreadingHTTPServer.daemon_threads = True
    # The default backlog of 5 drops connections when nginx opens many at once.
    ThreadingHTTPServer.request_queue_size = 128
    ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
