"""A real server whose engine stalls or fails: /ready turns 503 with a reason and comes back;
a client that leaves the queue frees its place at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Server, metric_value

# Polling deadline and per-request timeout; a passing run does not wait for them.
TIMEOUT = 30
STALL_TIMEOUT = 1.5
WATCHDOG_S = 0.6


class NotifyListener:
    """Stands in for systemd: collects what the service sends to NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, text: str, after: int = 0) -> int:
        """Index of the first message from `after` on that holds `text`."""
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while True:
                for i, message in enumerate(self.messages[after:], after):
                    if text in message.splitlines():
                        return i
                left = deadline - time.monotonic()
                assert left > 0, f"no {text} from the service after #{after}: {self.messages[-5:]}"
                self._cond.wait(left)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def notify(tmp_path_factory) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path_factory.mktemp("notify") / "sock")
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def ops_server(tiny_model, tmp_path_factory, notify) -> Iterator[Server]:
    """Fault injection, one batch slot and one queue place, quick engine health limits,
    and a systemd watchdog of WATCHDOG_S seconds."""
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
        env={
            "ENGINE_STALL_TIMEOUT": str(STALL_TIMEOUT),
            "ENGINE_MAX_FAILURES": "2",
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000)),
        },
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def fault(srv: Server, auth: dict[str, str] | None = None, **body: object) -> None:
    resp = httpx.post(srv.url + "/debug/fault", json=body, headers=auth, timeout=TIMEOUT)
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

    def __init__(self, srv: Server, path: str, body: dict[str, object], headers: str = "") -> None:
        data = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{headers}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
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


def test_stalled_engine_turns_ready_503_and_back(ops_server, notify):
    assert httpx.get(ops_server.url + "/ready", timeout=TIMEOUT).status_code == 200
    assert "READY=1" in notify.messages[0].splitlines(), notify.messages[:1]
    notify.wait_for("WATCHDOG=1", 1)
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
        # systemd's watchdog gets no ping while the engine is stuck (it would restart us).
        wait_log(ops_server, "watchdog pings withheld")
    finally:
        fault(ops_server, release=True)
    assert stuck.status() == 200
    poll(ops_server, "/ready", lambda r: r.status_code == 200, "/ready to turn 200 again")
    # Pings resume: one arrives after the engine is known to be well again.
    notify.wait_for("WATCHDOG=1", len(notify.messages))


def wait_log(srv: Server, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in srv.log():
        assert time.monotonic() < deadline, f"no '{text}' in the log:\n{srv.log()[-2000:]}"
        time.sleep(0.05)


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


def test_one_key_cannot_take_every_slot(tiny_model, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("key-a\nkey-b\n")
    srv = Server(
        tiny_model,
        tmp_path / "per-key.log",
        "--enable-fault-injection",
        "--max-concurrent-per-key",
        "1",
        env={"API_KEYS_FILE": str(keys)},
    )
    body = {"prompt": "hold", "max_tokens": 2}
    try:
        srv.wait_ready()
        key_a = {"Authorization": "Bearer key-a"}
        fault(srv, key_a, stage="decode", stall_s=4 * TIMEOUT)
        held = RawRequest(srv, "/generate", body, "Authorization: Bearer key-a\r\n")
        other = None
        try:
            wait_gauges(srv, 1, 0, "key-a's request running")
            resp = httpx.post(srv.url + "/generate", json=body, headers=key_a, timeout=TIMEOUT)
            assert resp.status_code == 429, resp.text
            assert resp.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert int(resp.headers["retry-after"]) >= 1
            # Another key still gets in (it waits for the stalled engine like the first).
            other = RawRequest(srv, "/generate", body, "Authorization: Bearer key-b\r\n")
            wait_gauges(srv, 1, 1, "key-b's request queued behind it")
        finally:
            fault(srv, key_a, release=True)
        assert held.status() == 200
        assert other is not None and other.status() == 200
        # The finished request gave its key's place back.
        resp = httpx.post(srv.url + "/generate", json=body, headers=key_a, timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
    finally:
        srv.stop()
