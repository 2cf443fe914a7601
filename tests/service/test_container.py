"""Build service/Dockerfile with Podman on the local Debian 12 test image; /ready must be 200.

Offline: the Python dependencies come from a wheelhouse built on the host (cached under
.cache/llmserve-wheels, with the CPU torch wheel from /opt/wheels) and mounted into the
build; only apt reaches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("LLMSERVE_TEST_BASE_IMAGE", "localhost/llmfleet-debian12:latest")
TORCH_WHEELS = Path(os.environ.get("LLMSERVE_TORCH_WHEELS", "/opt/wheels"))
IMAGE = "localhost/llmserve-test:latest"


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(REPO / "tests/harness/containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env=_env(), capture_output=True, text=True, check=check, timeout=timeout
    )


def _available() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed"
    try:
        if podman("image", "exists", BASE_IMAGE, check=False, timeout=60).returncode != 0:
            return f"test image {BASE_IMAGE} not found (build it: tests/harness/build-image.sh)"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"podman does not work here: {exc}"
    return None


def _wheelhouse() -> Path:
    """Dependencies as wheels, rebuilt when pyproject.toml changes."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    stamp = hashlib.sha256(pyproject).hexdigest()[:16]
    house = REPO / ".cache" / "llmserve-wheels"
    marker = house / f".stamp-{stamp}"
    if not marker.exists():
        house.mkdir(parents=True, exist_ok=True)
        find_links = ["--find-links", str(TORCH_WHEELS)] if TORCH_WHEELS.is_dir() else []
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", str(REPO), "-w", str(house), *find_links],
            check=True,
            timeout=600,
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "setuptools>=68", "-d", str(house)],
            check=True,
            timeout=300,
        )
        for old in house.glob(".stamp-*"):
            old.unlink()
        marker.touch()
    for stale in house.glob("llmserve-*.whl"):
        stale.unlink()  # the image installs the package from source
    return house


def test_image_builds_and_gets_ready(tiny_model, tmp_path):
    reason = _available()
    if reason:
        pytest.skip(reason)
    house = _wheelhouse()
    context = tmp_path / "context"
    (context / "service").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", context / "pyproject.toml")
    shutil.copytree(
        REPO / "service" / "llmserve",
        context / "service" / "llmserve",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    started = time.monotonic()
    build = podman(
        "build",
        "--format",
        "docker",
        "-f",
        str(REPO / "service" / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        "LLMSERVE_EXTRAS=",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        "PIP_FIND_LINKS=/wheels",
        "--volume",
        f"{house}:/wheels:ro",
        "-t",
        IMAGE,
        str(context),
        check=False,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"image build took {time.monotonic() - started:.0f}s")

    name = f"llmserve-test-{uuid.uuid4().hex[:8]}"
    run = podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "-e",
        "TORCH_THREADS=1",
        "-e",
        "ALLOW_UNAUTHENTICATED=true",
        "-v",
        f"{tiny_model}:/models/model:ro",
        IMAGE,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 300
        healthy = None
        while time.monotonic() < deadline:
            healthy = podman("healthcheck", "run", name, check=False, timeout=60)
            if healthy.returncode == 0:
                break
            state = podman("inspect", "--format", "{{.State.Status}}", name, check=False)
            assert state.stdout.strip() == "running", podman("logs", name, check=False).stderr
            time.sleep(1)
        assert healthy is not None and healthy.returncode == 0, podman("logs", name).stderr
        probe = podman(
            "exec",
            name,
            "python3",
            "-c",
            "import urllib.request as u; r = u.urlopen('http://127.0.0.1:8000/ready');"
            " print(r.status, r.read().decode())",
        )
        assert probe.stdout.startswith("200"), probe.stdout
        user = podman("exec", name, "id", "-u").stdout.strip()
        assert user != "0"
        podman("stop", "-t", "30", name, timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0"
    finally:
        # -v: also the anonymous volume the image declares for /models.
        podman("rm", "-f", "-v", name, check=False, timeout=60)
