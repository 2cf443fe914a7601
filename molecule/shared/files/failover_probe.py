#!/usr/bin/env python3
"""Send a request every INTERVAL seconds for DURATION seconds and report the
longest time between two successful answers (the gap a client saw).

  failover_probe.py URL [--duration 8] [--interval 0.05] [--timeout 0.25]

Prints JSON: requests, ok, failed, max_gap (seconds), first/last failure times,
and which backend/load balancer answered.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=0.25)
    args = parser.parse_args()

    start = time.monotonic()
    last_ok = None
    max_gap = 0.0
    gap_end = None
    requests = ok = failed = 0
    errors: dict[str, int] = {}
    while True:
        now = time.monotonic()
        if now - start >= args.duration:
            break
        requests += 1
        try:
            with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
                response.read()
                success = response.status == 200
        except Exception as exc:
            success = False
            key = type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
        done = time.monotonic()
        if success:
            ok += 1
            if last_ok is not None and done - last_ok > max_gap:
                max_gap = done - last_ok
                gap_end = done - start
            last_ok = done
        else:
            failed += 1
        pause = args.interval - (time.monotonic() - now)
        if pause > 0:
            time.sleep(pause)
    print(
        json.dumps(
            {
                "requests": requests,
                "ok": ok,
                "failed": failed,
                "errors": errors,
                "max_gap": round(max_gap, 3),
                "max_gap_ended_at": round(gap_end or 0.0, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
