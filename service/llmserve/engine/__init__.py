"""Generation engines.

`BatchEngine` runs continuous batching: one thread owns the model, and all active
sequences share a left-padded KV cache. `NaiveEngine` is the baseline most deployment
guides ship: one `generate()` call per request, one request at a time (for the benchmark).
"""

from __future__ import annotations

from collections.abc import Callable

from llmserve.engine.base import BaseEngine, EngineStopped, QueueFull
from llmserve.engine.continuous import BatchEngine
from llmserve.engine.faults import ARMABLE, STAGES, FaultInjector, InjectedFault
from llmserve.engine.health import HealthStatus
from llmserve.engine.naive import NaiveEngine

ENGINES: dict[str, Callable[..., BaseEngine]] = {"batch": BatchEngine, "naive": NaiveEngine}

__all__ = [
    "ARMABLE",
    "ENGINES",
    "STAGES",
    "BaseEngine",
    "BatchEngine",
    "EngineStopped",
    "FaultInjector",
    "HealthStatus",
    "InjectedFault",
    "NaiveEngine",
    "QueueFull",
]
