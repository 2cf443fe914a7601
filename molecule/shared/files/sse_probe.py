#!/usr/bin/env python3
"""Read a server-sent event stream and print when each event arrived (JSON).

  sse_probe.py URL [--insecure]

Output: {"status": 200, "events": [[seconds_since_request, "data: ..."], ...]}
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.request


def main() -> None:
    url = sys.argv[1]
    context = ssl._create_unverified_context() if "--insecure" in sys.argv else None
    body = json.dumps(
        {"model": "any", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    start = time.monotonic()
    events = []
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append([round(time.monotonic() - start, 3), line[:80]])
        status = response.status
    print(json.dumps({"status": status, "events": events}))


if __name__ == "__main__":
    main()
