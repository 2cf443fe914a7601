#!/usr/bin/env python3
"""Clients that keep sending chat completions through the VIP, for failover tests.

Two kinds run side by side, each in its own threads:
  sdk  the official openai client (its own retries on connection errors and 5xx)
  raw  http.client, one new connection per request, no retry
Every request is timed; the summary JSON (written when --stop-file appears or
--duration ends) gives per kind: requests, failures, the slowest request, and the
errors seen, so a test can assert that no request waited long for an answer or an
error, and that the retrying clients saw no failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field

BODY = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    slowest: float = 0.0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.slowest = max(self.slowest, seconds)
            if error:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(error)


def raw_worker(
    host: str,
    port: int,
    key: str,
    delay: float,
    timeout: float,
    tally: Tally,
    stop: threading.Event,
) -> None:
    context = ssl._create_unverified_context()
    body = json.dumps({**BODY, "fake_delay": delay}).encode()
    while not stop.is_set():
        started = time.monotonic()
        error = None
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=body,
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "application/json",
                    "Connection": "close",
                },
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                error = f"status {response.status}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        tally.add(time.monotonic() - started, error)
        time.sleep(0.05)


def sdk_worker(
    host: str,
    port: int,
    key: str,
    delay: float,
    timeout: float,
    tally: Tally,
    stop: threading.Event,
) -> None:
    import openai

    client = openai.OpenAI(
        base_url=f"https://{host}:{port}/v1",
        api_key=key,
        timeout=timeout,
        max_retries=4,
        http_client=openai.DefaultHttpxClient(verify=False),
    )
    while not stop.is_set():
        started = time.monotonic()
        error = None
        try:
            client.chat.completions.create(
                model=BODY["model"],
                messages=BODY["messages"],
                max_tokens=8,
                extra_body={"fake_delay": delay},
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        tally.add(time.monotonic() - started, error)
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--sdk", type=int, default=2)
    parser.add_argument("--raw", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.8, help="backend answer delay, seconds")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    tallies = {"sdk": Tally(), "raw": Tally()}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=sdk_worker,
            args=(args.host, args.port, args.key, args.delay, args.timeout, tallies["sdk"], stop),
        )
        for _ in range(args.sdk)
    ]
    threads += [
        threading.Thread(
            target=raw_worker,
            args=(args.host, args.port, args.key, args.delay, args.timeout, tallies["raw"], stop),
        )
        for _ in range(args.raw)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline and not os.path.exists(args.stop_file):
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(args.timeout * 6)
    summary = {
        kind: {
            "requests": t.requests,
            "failed": t.failed,
            "slowest": round(t.slowest, 3),
            "errors": t.errors,
        }
        for kind, t in tallies.items()
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
