"""Fixtures: one tiny model per session, and real `llmserve serve` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

API_KEYS = ["test-key-alpha", "test-key-beta"]
JWT_SECRET = "test-jwt-secret-" + "0123456789abcdef" * 4
JWT_AUDIENCE = "llmserve-tests"
AUTH_FAILURE_BURST = 30
JWT_ISSUER = "https://issuer.example"
SERVED_NAME = "tiny-r1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `llmserve serve` subprocess with its log in a file."""

    def __init__(self, model: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [
            sys.executable,
            "-m",
            "llmserve",
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            SERVED_NAME,
            *args,
        ]
        full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "PORT")}
        # A server without keys must be told to serve everyone (else it refuses to start).
        full_env.update({"TORCH_THREADS": "1", "ALLOW_UNAUTHENTICATED": "true", **(env or {})})
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 300.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (a line still being written is left out)."""
        complete = self.log().rsplit("\n", 1)[0]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def wait_for_entries(
        self, match: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """At least `count` log lines that `match`: access and prompt lines are written
        after the response has gone out, so a test that reads them right away waits."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.entries() if match(entry)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} log lines in {timeout}s"
            time.sleep(0.05)

    def access_lines(self, *request_ids: str) -> dict[str, dict[str, Any]]:
        """The access line of each request id, once all of them are written."""
        wanted = set(request_ids)
        found = self.wait_for_entries(
            lambda e: e.get("logger") == "llmserve.access" and e.get("request_id") in wanted,
            len(wanted),
        )
        return {entry["request_id"]: entry for entry in found}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmserve.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def loaded_model(tiny_model: Path):
    """The tiny model loaded in this process (for in-process engine and app tests)."""
    import torch

    from llmserve.loader import load_model

    torch.set_num_threads(1)
    return load_model(str(tiny_model), "fp32")


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secrets")
    (d / "keys").write_text("# test keys\n" + "\n".join(API_KEYS) + "\n\n")
    (d / "jwt.secret").write_text(JWT_SECRET + "\n")
    return d


@pytest.fixture(scope="session")
def server(tiny_model: Path, secrets_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Authenticated server with fault injection and prompt logging (shared by most tests)."""
    log = tmp_path_factory.mktemp("logs") / "main.log"
    srv = Server(
        tiny_model,
        log,
        "--jwt-secret-file",
        str(secrets_dir / "jwt.secret"),
        "--jwt-audience",
        JWT_AUDIENCE,
        "--jwt-issuer",
        JWT_ISSUER,
        "--max-body-bytes",
        "65536",
        "--rate-limit-rps",
        "1000",
        "--rate-limit-burst",
        "1000",
        "--enable-fault-injection",
        "--log-prompts",
        # Failed authentications: a burst the 401 tests stay under, and next to no refill,
        # so test_failed_authentication_is_limited_per_address does not race the clock.
        "--auth-failure-burst",
        str(AUTH_FAILURE_BURST),
        "--auth-failure-rps",
        "0.001",
        env={"API_KEYS_FILE": str(secrets_dir / "keys"), "MAX_BATCH_SIZE": "32"},
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def open_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No auth (per-IP rate limiting), a batch of 2 and a queue of 1."""
    log = tmp_path_factory.mktemp("logs") / "open.log"
    srv = Server(
        tiny_model,
        log,
        # Slow refill (one token per 20 s), so a slow machine cannot refill the bucket
        # between the requests of test_rate_limit_per_ip.
        "--rate-limit-rps",
        "0.05",
        "--rate-limit-burst",
        "3",
        "--max-batch-size",
        "2",
        "--max-queue",
        "1",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEYS[0]}"}


def make_jwt(**overrides: object) -> str:
    claims: dict[str, object] = {
        "sub": "tester",
        "aud": JWT_AUDIENCE,
        "iss": JWT_ISSUER,
        "exp": int(time.time()) + 300,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Value of one sample in Prometheus text format (0 when absent)."""
    prefix = name + (("{" + labels + "}") if labels else "")
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0
