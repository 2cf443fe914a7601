"""SIGTERM: readiness drops, new work is refused, in-flight streams finish, exit 0."""

from __future__ import annotations

import json
import signal
import time

import httpx

from .conftest import Server


def test_sigterm_drains_inflight_stream_then_exits_zero(tiny_model, tmp_path):
    srv = Server(tiny_model, tmp_path / "drain.log", "--drain-timeout", "60")
    try:
        srv.wait_ready()
        body = {
            "prompt": "drain me",
            "max_tokens": 600,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            ready = httpx.get(srv.url + "/ready")
            while ready.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
                ready = httpx.get(srv.url + "/ready")
            assert ready.status_code == 503
            assert ready.json()["reason"] == "draining"
            refused = httpx.post(srv.url + "/generate", json={"prompt": "late", "max_tokens": 2})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "draining"
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        usage = json.loads(rest[-2][6:])["usage"]
        assert usage["completion_tokens"] == 600
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
            sent = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["error"]["type"] == "service_unavailable"
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - sent < 15
    finally:
        srv.stop()
