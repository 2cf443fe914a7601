"""systemd's notify protocol: readiness, status, and the watchdog.

Under `Type=notify` systemd passes `NOTIFY_SOCKET`; with `WatchdogSec=` it also passes
`WATCHDOG_USEC` (and `WATCHDOG_PID`), and restarts the service when no `WATCHDOG=1`
arrives within that time. Outside systemd every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("llmserve.server")


def notify(*messages: str) -> bool:
    """Send `KEY=value` lines to systemd; False when not run by systemd (or on error)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in ("/", "@"):
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a reader that lags must not stall the event loop
            sock.connect(target)
            sock.sendall("\n".join(messages).encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)
        return False
    return True


def watchdog_seconds() -> float:
    """The watchdog timeout systemd set for this process, or 0 when there is none."""
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0.0
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    return max(0, usec) / 1_000_000
