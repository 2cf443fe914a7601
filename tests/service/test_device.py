"""The required device: `cuda` without a usable GPU is a refusal to start, never a CPU
server that reports ready."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmserve.device import CudaReport, DeviceError, select_device

from .conftest import Server

NO_GPU = CudaReport("2.13.0", "12.8", False, reason="Found no NVIDIA driver on your system")
GPU = CudaReport("2.13.0", "12.8", True, 1, ["NVIDIA H100 80GB HBM3"])


def test_auto_takes_the_gpu_when_cuda_works_and_the_cpu_otherwise():
    assert select_device("auto", GPU) == "cuda"
    assert select_device("auto", NO_GPU) == "cpu"


def test_cpu_never_uses_cuda():
    assert select_device("cpu", GPU) == "cpu"


def test_cuda_without_a_usable_gpu_says_why():
    assert select_device("cuda", GPU) == "cuda"
    with pytest.raises(DeviceError, match=r"device cuda is required.*Found no NVIDIA driver"):
        select_device("cuda", NO_GPU)


def test_an_unknown_device_is_named():
    with pytest.raises(DeviceError, match="unknown device 'tpu'; choose one of auto, cuda, cpu"):
        select_device("tpu", GPU)


def test_serve_with_cuda_required_on_a_cpu_host_exits_with_the_reason(tiny_model: Path, tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines too.
    srv = Server(
        tiny_model, tmp_path / "cuda.log", env={"DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    )
    try:
        code = srv.proc.wait(120)
        log = srv.log()
    finally:
        srv.stop()
    assert code == 2, log
    assert "device cuda is required (--device/DEVICE) but CUDA cannot be used" in log, log
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/ready", timeout=2)


def test_check_device_prints_what_torch_sees():
    run = subprocess.run(
        [sys.executable, "-m", "llmserve", "check-device", "--device", "cuda"],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    report = json.loads(run.stdout)
    assert report["usable"] is False and report["selected"] is None
    assert report["torch"].startswith("2.")
    assert "CUDA cannot be used" in run.stderr


def test_model_info_names_the_device(server):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("llmserve_model_info{"))
    assert 'device="cpu"' in line, line
