"""Prometheus metrics. Names follow vLLM's, with the `llmserve_` prefix."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("llmserve.metrics")

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)

# (attribute on Metrics, metric name, help, buckets)
_HISTOGRAMS: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    (
        "ttft",
        "llmserve_time_to_first_token_seconds",
        "Time from arrival to the first generated token",
        _LATENCY_BUCKETS,
    ),
    (
        "itl",
        "llmserve_inter_token_latency_seconds",
        "Time between consecutive generated tokens of a request",
        _ITL_BUCKETS,
    ),
    (
        "e2e",
        "llmserve_e2e_request_latency_seconds",
        "Time from arrival to the last token",
        _LATENCY_BUCKETS,
    ),
    (
        "inference_latency",
        "model_inference_latency_seconds",
        "End-to-end request latency (same observations as llmserve_e2e_request_latency)",
        _LATENCY_BUCKETS,
    ),
    (
        "queue_time",
        "llmserve_request_queue_time_seconds",
        "Time a request waited before joining the batch",
        _LATENCY_BUCKETS,
    ),
    (
        "batch_size",
        "llmserve_batch_size",
        "Rows in each forward pass of the decode loop",
        _BATCH_BUCKETS,
    ),
)


class NvmlCollector(Collector):
    """GPU utilisation and memory from NVML; yields nothing when there is no GPU."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception:  # no library, no driver or no device: export nothing
            self._nvml = None
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._handles:
            return
        nvml = self._nvml
        util = GaugeMetricFamily(
            "llmserve_gpu_utilization_percent", "GPU utilisation (NVML)", labels=["gpu"]
        )
        used = GaugeMetricFamily(
            "llmserve_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "llmserve_gpu_memory_total_bytes", "GPU memory size (NVML)", labels=["gpu"]
        )
        for i, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:
                continue
            util.add_metric([str(i)], float(rates.gpu))
            used.add_metric([str(i)], float(mem.used))
            total.add_metric([str(i)], float(mem.total))
        yield util
        yield used
        yield total


class Metrics:
    """All service metrics, on a registry of their own."""

    # Filled from _HISTOGRAMS.
    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    inference_latency: Histogram
    queue_time: Histogram
    batch_size: Histogram

    def __init__(self, registry: CollectorRegistry | None = None, nvml: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.running = Gauge(
            "llmserve_num_requests_running", "Requests in the running batch", registry=r
        )
        self.waiting = Gauge(
            "llmserve_num_requests_waiting", "Requests queued for the batch", registry=r
        )
        self.prompt_tokens = Counter(
            "llmserve_prompt_tokens", "Prompt tokens processed", registry=r
        )
        self.generation_tokens = Counter(
            "llmserve_generation_tokens", "Tokens generated", registry=r
        )
        self.request_success = Counter(
            "llmserve_request_success",
            "Finished requests by finish reason",
            ["finished_reason"],
            registry=r,
        )
        self.request_rejected = Counter(
            "llmserve_request_rejected",
            "Requests refused before generation, by reason",
            ["reason"],
            registry=r,
        )
        self.request_failed = Counter(
            "llmserve_request_failure",
            "Requests that failed during generation, by reason",
            ["reason"],
            registry=r,
        )
        for attr, name, doc, buckets in _HISTOGRAMS:
            setattr(self, attr, Histogram(name, doc, buckets=buckets, registry=r))
        self.model_info = Info("llmserve_model", "The loaded model", registry=r)
        self.cold_start = Gauge(
            "llmserve_cold_start_seconds",
            "Seconds from process start until the model was loaded and warmed up",
            registry=r,
        )
        self.ready = Gauge("llmserve_ready", "1 when /ready answers 200", registry=r)
        self.engine_failures = Counter(
            "llmserve_engine_step_failures",
            "Engine steps that failed, by stage",
            ["stage"],
            registry=r,
        )
        self.engine_heartbeat_age = Gauge(
            "llmserve_engine_heartbeat_age_seconds",
            "Seconds since the engine loop last made progress",
            registry=r,
        )
        self.engine_consecutive_failures = Gauge(
            "llmserve_engine_consecutive_failures",
            "Engine steps in a row that failed (0 after a step that succeeds)",
            registry=r,
        )
        self.preemptions = Counter(
            "llmserve_num_preemptions",
            "Requests taken out of the batch to compute again later: budget, out_of_memory",
            ["reason"],
            registry=r,
        )
        self.kv_budget = Gauge(
            "llmserve_kv_cache_budget_tokens",
            "Token slots the KV cache may hold (0: no budget)",
            registry=r,
        )
        self.kv_usage = Gauge(
            "llmserve_kv_cache_usage_perc",
            "Share of the KV budget the running batch holds (rows x width), 0 to 1",
            registry=r,
        )
        self.nvml: NvmlCollector | None = None
        if nvml:
            collector = NvmlCollector()
            if collector.available:
                r.register(collector)
                self.nvml = collector

    def watch(
        self,
        ready: Callable[[], bool],
        heartbeat_age: Callable[[], float],
        consecutive_failures: Callable[[], int],
    ) -> None:
        """Gauges read at scrape time."""
        self.ready.set_function(lambda: float(ready()))
        self.engine_heartbeat_age.set_function(heartbeat_age)
        self.engine_consecutive_failures.set_function(lambda: float(consecutive_failures()))

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(seconds)
        self.inference_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
