"""Process lifecycle: listen at once, load and warm up, serve, drain on SIGTERM, exit.

Exit codes: 0 after a signal-initiated shutdown (drained or drain timeout reached),
1 when the model cannot be loaded or the listener fails, 2 for bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from llmserve import sdnotify
from llmserve.app import create_app
from llmserve.auth import Authenticator
from llmserve.config import Settings
from llmserve.device import select_device
from llmserve.engine.health import DEAD, STALLED
from llmserve.loader import LoadedModel
from llmserve.memory import GIB, KVBudget, compute_budget, context_limit
from llmserve.proxies import resolve_proxies
from llmserve.state import ServiceState

log = logging.getLogger("llmserve.server")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: shutdown is driven by `serve()` below."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _in_daemon_thread(fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run `fn` in a daemon thread (so a stuck load never blocks process exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exc, fut, exc)
        else:
            loop.call_soon_threadsafe(_set_result, fut, result)

    threading.Thread(target=target, name="model-loader", daemon=True).start()
    return fut


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


async def _load(state: ServiceState, t0: float, device_type: str) -> None:
    from llmserve.engine import ENGINES
    from llmserve.loader import configure_threads, load_model
    from llmserve.params import GenerationDefaults

    s = state.settings
    threads = configure_threads(s.threads)
    loaded = await _in_daemon_thread(lambda: load_model(s.model, s.precision, device_type))
    budget = kv_budget(loaded, s)
    state.loaded = loaded
    state.defaults = GenerationDefaults.from_generation_config(loaded.model.generation_config)
    engine = ENGINES[s.engine](
        loaded,
        max_batch_size=s.max_batch_size,
        max_queue=s.max_queue,
        metrics=state.metrics,
        stall_timeout=s.engine_stall_timeout,
        max_failures=s.engine_max_failures,
        **(
            {"max_prefill_tokens": s.max_prefill_tokens, "kv_budget_tokens": budget.tokens}
            if s.engine == "batch"
            else {}
        ),
    )
    engine.start()
    state.phase = "warming_up"
    await engine.warmup()
    state.engine = engine
    cold = time.monotonic() - t0
    state.metrics.cold_start.set(cold)
    state.metrics.model_info.info(
        {
            "model": s.served_model_name,
            "path": s.model,
            "precision": loaded.precision,
            "device": str(loaded.device),
            "engine": s.engine,
            "max_model_len": str(loaded.max_model_len),
            "max_batch_size": str(s.max_batch_size),
        }
    )
    state.phase = "ready"
    log.info(
        "ready",
        extra={
            "cold_start_s": round(cold, 3),
            "device": str(loaded.device),
            "precision": loaded.precision,
            "threads": threads,
            "engine": s.engine,
        },
    )


async def _systemd(state: ServiceState, server: uvicorn.Server) -> None:
    """READY=1 once the port listens (/ready says when the model is); then, under a
    watchdog, a ping every third of its timeout while the event loop runs and the engine
    is neither stalled nor dead. Withheld pings make systemd restart the service."""
    while not server.started:
        await asyncio.sleep(0.05)
    sdnotify.notify("READY=1", f"STATUS=listening, model {state.phase}")
    timeout = sdnotify.watchdog_seconds()
    if timeout <= 0:
        return
    phase = ""
    withheld = False
    while True:
        await asyncio.sleep(timeout / 3)
        health = state.engine.health() if state.engine is not None else None
        if health is not None and health.reason in (STALLED, DEAD):
            if not withheld:
                log.error(
                    "engine %s: watchdog pings withheld, systemd will restart the service",
                    health.reason,
                    extra={"detail": health.detail, "watchdog_s": timeout},
                )
            withheld = True
            continue
        withheld = False
        messages = ["WATCHDOG=1"]
        if state.phase != phase:
            phase = state.phase
            messages.append(f"STATUS=model {phase}")
        sdnotify.notify(*messages)


def kv_budget(loaded: LoadedModel, s: Settings) -> KVBudget:
    """The KV budget, and the context limit that one request alone can fill; logged."""
    import torch

    budget = compute_budget(
        loaded.model.config,
        torch.finfo(loaded.dtype).bits // 8,
        loaded.device.type,
        s.gpu_memory_utilization,
        s.kv_cache_tokens,
        s.max_prefill_tokens,
        s.max_batch_size,
    )
    loaded.max_model_len = context_limit(loaded.max_model_len, s.max_model_len, budget)
    log.info(
        "KV cache budget: %d tokens (%.2f GiB), context limit %d",
        budget.tokens,
        budget.bytes / GIB,
        loaded.max_model_len,
        extra={
            "kv_budget_tokens": budget.tokens,
            "kv_bytes_per_token": budget.bytes_per_token,
            "max_model_len": loaded.max_model_len,
            "budget": budget.detail,
        },
    )
    return budget


def reload_api_keys(auth: Authenticator) -> None:
    """SIGHUP: re-read the API keys file; a failure keeps the old keys and is logged."""
    try:
        count = auth.reload()
        log.info("reloaded API keys", extra={"keys": count})
    except (OSError, ValueError) as exc:  # ValueError covers UnicodeDecodeError
        log.error("cannot reload API keys: %s", exc)


async def serve(settings: Settings, t0: float | None = None) -> int:
    t0 = time.monotonic() if t0 is None else t0
    if not 0.0 < settings.gpu_memory_utilization <= 1.0:
        raise ValueError(
            f"--gpu-memory-utilization must be above 0 and at most 1, "
            f"not {settings.gpu_memory_utilization}"
        )
    # Before the port opens: with --device cuda and no usable GPU the process exits
    # (status 2, no restart) and /ready never answers 200.
    device_type = select_device(settings.device)
    log.info("device", extra={"device": device_type, "required": settings.device})
    state = ServiceState(settings)
    if not state.auth.enabled:
        if not settings.allow_unauthenticated:
            raise ValueError(
                "no credentials configured: give API_KEYS_FILE, JWT_SECRET_FILE or "
                "JWT_PUBLIC_KEY_FILE, or pass --allow-unauthenticated to serve everyone"
            )
        log.warning("authentication is disabled (--allow-unauthenticated): anyone can call")
    proxies = resolve_proxies(settings.trusted_proxies)
    log.info("trusted proxies", extra={"trusted_proxies": proxies})
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if state.draining:
            log.warning("second %s: stopping without waiting", sig.name)
            server.force_exit = True
            server.should_exit = True
            force.set()
            return
        log.info("received %s: draining", sig.name, extra={"inflight": state.inflight})
        sdnotify.notify("STOPPING=1", "STATUS=draining")
        state.draining = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_api_keys(state.auth))

    serve_task = asyncio.create_task(server.serve(), name="http")
    load_task = asyncio.create_task(_load(state, t0, device_type), name="load")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    systemd_task = asyncio.create_task(_systemd(state, server), name="systemd")
    code = 0
    pending: set[asyncio.Task[Any]] = {serve_task, load_task, stop_task}
    while True:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if load_task in done:
            exc = load_task.exception()
            if exc is not None:
                log.error("model load failed: %s", exc, exc_info=exc)
                state.phase = "failed"
                code = 1
                break
            continue
        if serve_task in done:
            if not state.draining:
                log.error("HTTP server stopped unexpectedly")
                code = 1
            break
        if stop_task in done:
            break

    systemd_task.cancel()
    if not load_task.done():
        load_task.cancel()
    state.draining = True
    if not serve_task.done():
        await _drain(state, settings.drain_timeout, force)
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await serve_task
    if state.engine is not None:
        state.engine.stop()
    await asyncio.to_thread(state.prompt_log.close)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    log.info("stopped", extra={"exit_code": code})
    return code


async def _drain(state: ServiceState, timeout: float, force: asyncio.Event) -> None:
    """Wait for in-flight requests; past the timeout (or a second signal), fail the rest."""
    start = time.monotonic()
    idle = asyncio.ensure_future(state.idle.wait())
    forced = asyncio.ensure_future(force.wait())
    await asyncio.wait(
        {idle, forced}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
    )
    idle.cancel()
    forced.cancel()
    if state.idle.is_set():
        log.info("drained", extra={"seconds": round(time.monotonic() - start, 3)})
    else:
        log.warning(
            "drain timeout reached; failing in-flight requests",
            extra={"inflight": state.inflight},
        )
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.idle.wait(), timeout=2.0)
