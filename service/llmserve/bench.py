"""`llmserve bench`: throughput and latency against the naive baseline and the ceiling.

For each concurrency level the same work (N streamed completions of a fixed length, EOS
ignored) goes to three places, one after another so they never share the CPU:

* the continuously batched server (`serve --engine batch`, or `--url`);
* the naive server (`serve --engine naive`: one `generate()` per request, or `--naive-url`);
* the ceiling: one padded static batch through `model.generate` in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_SHAPE = {"hidden_size": 512, "layers": 8, "heads": 8, "kv_heads": 2, "vocab_size": 8192}
PROMPT = (
    "Request {i}: the river gathers water from a thousand small streams, cuts a valley "
    "through the rock and carries silt down to the sea. Tell me more."
)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="bench model dir (default: make one in a temp dir)")
    p.add_argument("--url", default="", help="a running server to measure (default: start one)")
    p.add_argument("--naive-url", default="", help="a running naive server (default: start one)")
    p.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", ""))
    p.add_argument("--concurrency", default="1,4,16,32", help="comma-separated levels")
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=0, help="requests per level; 0 = max(c, 4)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads everywhere; 0 = cores")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-ceiling", action="store_true")
    p.add_argument("--skip-cold-start", action="store_true")


@dataclass
class LevelResult:
    concurrency: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 180.0) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def _server(model: str, *extra: str, threads: int = 0) -> Iterator[tuple[str, float]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--model", model, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--rate-limit-rps", "0", "--log-level", "warning", *extra]
    cmd += ["--allow-unauthenticated"]
    cmd += ["--threads", str(threads)]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("API_KEYS_FILE", "JWT_SECRET_FILE", "JWT_PUBLIC_KEY_FILE")
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        yield url, time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _one(client: Any, url: str, i: int, tokens: int, res: LevelResult) -> None:
    body = {
        "prompt": PROMPT.format(i=i),
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.monotonic()
    first = last = None
    got = 0
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.errors += 1
                await resp.aread()
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.monotonic()
                if '"completion_tokens":' in line:
                    got = int(line.split('"completion_tokens":', 1)[1].split(",", 1)[0])
                    continue
                if '"text":""' in line:
                    continue
                if first is None:
                    first = now
                last = now
    except Exception:
        res.errors += 1
        return
    if first is None or last is None:
        res.errors += 1
        return
    res.tokens += got
    res.ttft.append(first - start)
    if got > 1:
        res.itl.append((last - first) / (got - 1))


async def _level(url: str, api_key: str, c: int, n: int, tokens: int) -> LevelResult:
    import httpx

    res = LevelResult(c)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                await _one(client, url, queue.get_nowait(), tokens, res)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(c)))
        res.seconds = time.monotonic() - start
    return res


def _run_levels(url: str, args: argparse.Namespace, levels: list[int]) -> dict[int, LevelResult]:
    out = {}
    asyncio.run(_level(url, args.api_key, 2, 2, 8))  # warm the connection path
    for c in levels:
        n = args.requests or max(c, 4)
        out[c] = asyncio.run(_level(url, args.api_key, c, n, args.output_tokens))
        print(f"  c={c}: {out[c].tok_s:.1f} tok/s", file=sys.stderr)
    return out


def _ceiling(model_dir: str, levels: list[int], args: argparse.Namespace) -> dict[int, float]:
    import torch

    from llmserve.loader import configure_threads, load_model

    configure_threads(args.threads)
    lm = load_model(model_dir, "auto")
    tok = lm.tokenizer
    tok.padding_side = "left"
    out: dict[int, float] = {}

    def run(c: int, n_tokens: int) -> float:
        n = args.requests or max(c, 4)
        prompts = [PROMPT.format(i=i) for i in range(n)]
        start = time.monotonic()
        for k in range(0, n, c):
            enc = tok(prompts[k : k + c], return_tensors="pt", padding=True).to(lm.device)
            lm.model.generate(
                **enc,
                max_new_tokens=n_tokens,
                min_new_tokens=n_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return n * n_tokens / (time.monotonic() - start)

    with torch.inference_mode():
        run(2, 8)
        for c in levels:
            out[c] = run(c, args.output_tokens)
            print(f"  ceiling c={c}: {out[c]:.1f} tok/s", file=sys.stderr)
    return out


def run_bench(args: argparse.Namespace) -> int:
    from llmserve.tiny_model import TinyShape, make_tiny_model

    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    tmp = tempfile.TemporaryDirectory(prefix="llmserve-bench-")
    model = args.model
    if not model and (not args.url or not args.skip_ceiling):
        model = str(make_tiny_model(Path(tmp.name) / "bench-model", TinyShape(**BENCH_SHAPE)))
    batch_opts = ["--max-batch-size", str(args.max_batch_size)]
    cold = None
    if not args.skip_cold_start:
        tiny = make_tiny_model(Path(tmp.name) / "tiny-model")
        print("measuring cold start (tiny model)...", file=sys.stderr)
        with _server(str(tiny)) as (_, cold):
            pass
    print("batch engine...", file=sys.stderr)
    if args.url:
        batch = _run_levels(args.url.rstrip("/"), args, levels)
    else:
        with _server(model, "--engine", "batch", *batch_opts, threads=args.threads) as (url, _):
            batch = _run_levels(url, args, levels)
    naive: dict[int, LevelResult] = {}
    if not args.skip_naive:
        print("naive baseline...", file=sys.stderr)
        if args.naive_url:
            naive = _run_levels(args.naive_url.rstrip("/"), args, levels)
        else:
            with _server(model, "--engine", "naive", threads=args.threads) as (url, _):
                naive = _run_levels(url, args, levels)
    ceiling: dict[int, float] = {}
    if not args.skip_ceiling:
        print("static-batch ceiling...", file=sys.stderr)
        ceiling = _ceiling(model, levels, args)
    print(
        f"\nllmserve bench: {args.output_tokens} output tokens per request, EOS ignored, "
        f"greedy; requests per level = {args.requests or 'max(c, 4)'}"
    )
    header = (
        f"{'conc':>4} | {'tok/s':>8} | {'TTFT p50 ms':>11} | {'TTFT p99 ms':>11} | "
        f"{'ITL p50 ms':>10} | {'naive tok/s':>11} | {'x naive':>7} | "
        f"{'ceiling tok/s':>13} | {'x ceiling':>9} | {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        r = batch[c]
        nv = naive[c].tok_s if c in naive else float("nan")
        cl = ceiling.get(c, float("nan"))
        itl = statistics.median(r.itl) * 1000 if r.itl else float("nan")
        print(
            f"{c:>4} | {r.tok_s:>8.1f} | {_pct(r.ttft, 0.5) * 1000:>11.1f} | "
            f"{_pct(r.ttft, 0.99) * 1000:>11.1f} | {itl:>10.1f} | "
            f"{nv:>11.1f} | {r.tok_s / nv if nv else float('nan'):>7.2f} | "
            f"{cl:>13.1f} | {r.tok_s / cl if cl else float('nan'):>9.2f} | "
            f"{r.errors + (naive[c].errors if c in naive else 0):>6}"
        )
    if cold is not None:
        print(f"\ncold start (llmserve serve, tiny model, spawn to /ready 200): {cold:.2f} s")
    tmp.cleanup()
    return 0
