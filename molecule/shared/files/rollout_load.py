#!/usr/bin/env python3
"""Keep sending completions through a load balancer until SIGTERM, and count what
came back: a plain request and a streamed one in turn from each worker.

  rollout_load.py BASE_URL --key KEY --model NAME [--workers 2] [--out FILE] [--pause 0.05]

Writes JSON to FILE every second and once more at the end: requests, ok, failed,
streams_ok, statuses (code -> count), errors (first 20 failures, with the time in
seconds since the start).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

stop = threading.Event()
lock = threading.Lock()
start = time.monotonic()
statuses: dict[str, int] = {}
errors: list[dict[str, object]] = []
totals = {"requests": 0, "ok": 0, "failed": 0, "streams_ok": 0}


def record(status: int, ok: bool, streamed: bool, detail: str) -> None:
    with lock:
        totals["requests"] += 1
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if ok:
            totals["ok"] += 1
            totals["streams_ok"] += int(streamed)
            return
        totals["failed"] += 1
        if len(errors) < 20:
            at = round(time.monotonic() - start, 2)
            errors.append({"at": at, "status": status, "detail": detail[:300]})


def one(base: str, key: str, model: str, streamed: bool) -> None:
    body = {"model": model, "prompt": "The fleet", "max_tokens": 8, "stream": streamed}
    request = urllib.request.Request(
        base.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode(errors="replace")
            status = response.status
    except urllib.error.HTTPError as exc:
        record(exc.code, False, streamed, exc.read().decode(errors="replace"))
        return
    except Exception as exc:  # every failure counts, whatever its kind
        record(0, False, streamed, f"{type(exc).__name__}: {exc}")
        return
    complete = text.rstrip().endswith("data: [DONE]") if streamed else '"choices"' in text
    ok = status == 200 and complete
    record(status, ok, streamed, "" if ok else text)


def worker(base: str, key: str, model: str, pause: float) -> None:
    streamed = False
    while not stop.is_set():
        one(base, key, model, streamed)
        streamed = not streamed
        stop.wait(pause)


def write(path: str) -> None:
    with lock:
        data = json.dumps({**totals, "statuses": statuses, "errors": errors})
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        out.write(data)
    os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--out", default="/run/rollout-load.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(target=worker, args=(args.base, args.key, args.model, args.pause))
        for _ in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(1.0):
        write(args.out)
    for thread in threads:
        thread.join()
    write(args.out)


if __name__ == "__main__":
    main()
