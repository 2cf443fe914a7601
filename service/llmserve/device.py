"""Which device the service runs on, and why CUDA cannot be used when it cannot.

`auto` takes the GPU when CUDA works and the CPU otherwise; `cuda` refuses to start
without a usable GPU (a GPU host with a broken driver must not serve at CPU speed);
`cpu` never touches CUDA.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

DEVICES = ("auto", "cuda", "cpu")


class DeviceError(ValueError):
    """The required device cannot be used."""


@dataclass(frozen=True)
class CudaReport:
    """What this process can see of CUDA (`llmserve check-device` prints it)."""

    torch: str
    torch_cuda: str | None
    usable: bool
    device_count: int = 0
    devices: list[str] = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_nodes() -> str:
    try:
        nodes = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))
    except OSError:
        nodes = []
    return ", ".join(f"/dev/{n}" for n in nodes) or "none"


def cuda_report() -> CudaReport:
    import torch

    version = str(torch.__version__)
    built = torch.version.cuda
    if built is None:
        return CudaReport(
            version,
            None,
            False,
            reason=f"this torch build ({version}) has no CUDA support; install the CUDA build "
            "of the same release",
        )
    try:
        torch.cuda.init()
        count = torch.cuda.device_count()
    except Exception as exc:  # the driver's own words: no driver, too old, no device
        return CudaReport(version, built, False, reason=_why(str(exc)))
    if count == 0:
        return CudaReport(version, built, False, reason=_why("no CUDA device found"))
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return CudaReport(version, built, True, count, names)


def _why(detail: str) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    parts = [
        detail.strip().rstrip(".") or "CUDA is not available",
        f"device nodes: {_device_nodes()}",
    ]
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    return "; ".join(parts)


def select_device(required: str, report: CudaReport | None = None) -> str:
    """The torch device type to use for `required`, or DeviceError saying why not."""
    if required not in DEVICES:
        raise DeviceError(f"unknown device {required!r}; choose one of {', '.join(DEVICES)}")
    if required == "cpu":
        return "cpu"
    report = report or cuda_report()
    if report.usable:
        return "cuda"
    if required == "cuda":
        raise DeviceError(
            f"device cuda is required (--device/DEVICE) but CUDA cannot be used: {report.reason}"
        )
    return "cpu"
