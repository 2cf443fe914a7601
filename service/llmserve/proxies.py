"""The load balancers whose `X-Forwarded-For` names the client.

Behind nginx every connection comes from a load balancer; without this, per-client limits
(failed authentication, the rate limit without keys) and the access log would see one
client per load balancer, and one bad client could lock out everyone behind it. Only the
listed peers are believed; anyone else's `X-Forwarded-For` is ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

log = logging.getLogger("llmserve.server")


def resolve_proxies(spec: str) -> list[str]:
    """Addresses and networks from a comma-separated list; host names are resolved now
    (one that does not resolve is left out, with a warning)."""
    trusted: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            trusted.append(str(ipaddress.ip_network(item, strict=False)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(item, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("trusted proxy %s does not resolve: %s", item, exc)
            continue
        trusted.extend(sorted({str(info[4][0]) for info in infos}))
    return trusted
