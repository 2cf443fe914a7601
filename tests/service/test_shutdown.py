"""SIGTERM: readiness drops, new work is refused, in-flight streams finish, exit 0."""

from __future__ import annotations

import json
import signal
import time

import httpx

from .conftest import Server

# Deadlines for polling and per-request timeouts; a passing run does not wait for them.
TIMEOUT = 30
# The drain checks below only work while this stream is still running, so it is long
# (the tiny model's context is 2048 tokens; the prompt takes a few).
DRAIN_TOKENS = 1500


def test_sigterm_drains_inflight_stream_then_exits_zero(tiny_model, tmp_path):
    srv = Server(tiny_model, tmp_path / "drain.log", "--drain-timeout", "300")
    try:
        srv.wait_ready()
        body = {
            "prompt": "drain me",
            "max_tokens": DRAIN_TOKENS,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TIMEOUT
            ready = httpx.get(srv.url + "/ready", timeout=TIMEOUT)
            while ready.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
                ready = httpx.get(srv.url + "/ready", timeout=TIMEOUT)
            assert ready.status_code == 503
            assert ready.json()["reason"] == "draining"
            refused = httpx.post(
                srv.url + "/generate",
                json={"prompt": "late", "max_tokens": 2},
                timeout=TIMEOUT,
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "draining"
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        usage = json.loads(rest[-2][6:])["usage"]
        assert usage["completion_tokens"] == DRAIN_TOKENS
        assert srv.proc.wait(30) == 0
        log = srv.log()
        assert "draining" in log and '"exit_code": 0' in log
    finally:
        srv.stop()


def test_drain_timeout_fails_leftovers_and_exits_zero(tiny_model, tmp_path):
    srv = Server(tiny_model, tmp_path / "timeout.log", "--drain-timeout", "1")
    try:
        srv.wait_ready()
        body = {"prompt": "slow", "max_tokens": 1900, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line)
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["type"] == "service_unavailable"
        # The error event above shows the drain timeout cut the stream; the exit follows.
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
