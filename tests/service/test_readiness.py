"""A real server whose engine stalls or fails: /ready turns 503 with a reason and comes back;
a client that leaves the queue frees its place at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Server, metric_value

# Polling deadline and per-request timeout; a passing run does not wait for them.
TIMEOUT = 30
STALL_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def ops_server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """Fault injection, one batch slot and one queue place, quick engine health limits."""
    srv = Server(
        tiny_model,
        tmp_path_factory.mktemp("logs") / "ops.log",
        "--enable-fault-injection",
        "--max-batch-size",
        "1",
        "--max-queue",
        "1",
        "--rate-limit-rps",
        "0",
        "--drain-timeout",
        "2",
        env={"ENGINE_STALL_TIMEOUT": str(STALL_TIMEOUT), "ENGINE_MAX_FAILURES": "2"},
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def fault(srv: Server, **body: object) -> None:
    resp = httpx.post(srv.url + "/debug/fault", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def poll(srv: Server, path: str, check, what: str) -> httpx.Response:
    deadline = time.monotonic() + TIMEOUT
    while True:
        resp = httpx.get(srv.url + path, timeout=TIMEOUT)
        if check(resp):
            return resp
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {resp.text[:300]}"
        time.sleep(0.05)


def wait_gauges(srv: Server, running: int, waiting: int, what: str) -> None:
    """Poll /metrics until the running and waiting gauges read these numbers."""

    def check(resp: httpx.Response) -> bool:
        return (
            metric_value(resp.text, "llmserve_num_requests_running"),
            metric_value(resp.text, "llmserve_num_requests_waiting"),
        ) == (running, waiting)

    poll(srv, "/metrics", check, what)


class RawRequest:
    """A POST on its own socket, so the test decides when the client goes away."""

    def __init__(self, srv: Server, path: str, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode() + data)

    def status(self) -> int:
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        self.sock.close()
        return int(b"".join(chunks).split(b" ", 2)[1])

    def disconnect(self) -> None:
        self.sock.close()


def test_stalled_engine_turns_ready_503_and_back(ops_server):
    assert httpx.get(ops_server.url + "/ready", timeout=TIMEOUT).status_code == 200
    fault(ops_server, stage="decode", stall_s=TIMEOUT)
    stuck = RawRequest(ops_server, "/generate", {"prompt": "stuck", "max_tokens": 4})
    try:
        ready = poll(ops_server, "/ready", lambda r: r.status_code == 503, "/ready to turn 503")
        assert ready.json()["reason"] == "engine_stalled"
        assert "heartbeat" in ready.json()["detail"]
        health = httpx.get(ops_server.url + "/health", timeout=TIMEOUT)
        assert health.status_code == 200  # liveness: the process still serves
        assert health.json()["engine"]["status"] == "engine_stalled"
        text = httpx.get(ops_server.url + "/metrics", timeout=TIMEOUT).text
        assert metric_value(text, "llmserve_ready") == 0
        assert metric_value(text, "llmserve_engine_heartbeat_age_seconds") > STALL_TIMEOUT
    finally:
        fault(ops_server, release=True)
    assert stuck.status() == 200
    poll(ops_server, "/ready", lambda r: r.status_code == 200, "/ready to turn 200 again")


def test_repeated_failures_turn_ready_503_until_the_engine_works(ops_server):
    fault(ops_server, stage="prefill", count=2)
    for i in range(2):
        rid = f"failing-{i}"
        resp = httpx.post(
            ops_server.url + "/generate",
            json={"prompt": "fail", "max_tokens": 2},
            headers={"X-Request-ID": rid},
            timeout=TIMEOUT,
        )
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["code"] == "generation_failed" and rid in error["message"]
    ready = httpx.get(ops_server.url + "/ready", timeout=TIMEOUT)
    assert ready.status_code == 503 and ready.json()["reason"] == "engine_failing"
    # Nothing else arrives; the engine's own probe finds it working again.
    poll(ops_server, "/ready", lambda r: r.status_code == 200, "the probe to clear the failures")
    ok = httpx.post(
        ops_server.url + "/generate", json={"prompt": "fine", "max_tokens": 2}, timeout=TIMEOUT
    )
    assert ok.status_code == 200, ok.text


def test_client_leaving_the_queue_frees_its_place_at_once(ops_server):
    long = {"prompt": "long", "max_tokens": 4}
    # The only batch slot stays busy for longer than the test may take.
    fault(ops_server, stage="decode", stall_s=4 * TIMEOUT)
    running = RawRequest(ops_server, "/generate", long)
    results: list[int] = []
    later = threading.Thread(
        target=lambda: results.append(
            httpx.post(ops_server.url + "/generate", json=long, timeout=TIMEOUT).status_code
        )
    )
    try:
        wait_gauges(ops_server, 1, 0, "a running request")
        queued = RawRequest(ops_server, "/v1/completions", long)
        wait_gauges(ops_server, 1, 1, "a queued request")
        full = httpx.post(ops_server.url + "/generate", json=long, timeout=TIMEOUT)
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        queued.disconnect()
        # The engine is still stuck in its step: only an immediate removal empties the queue.
        wait_gauges(ops_server, 1, 0, "the queue to empty")
        later.start()
        wait_gauges(ops_server, 1, 1, "its place taken")
    finally:
        fault(ops_server, release=True)
    assert running.status() == 200
    later.join(TIMEOUT)
    assert results == [200]
    text = httpx.get(ops_server.url + "/metrics", timeout=TIMEOUT).text
    assert metric_value(text, "llmserve_request_failure_total", 'reason="cancelled"') == 1
