"""Host spellings: an IPv6 literal is accepted with brackets (``[::1]``, as in a URL) or
without (``::1``, as ``ip addr`` prints it).

Sockets bind the bare address; gRPC targets, log lines and ``/metrics`` URLs need the
brackets, since ``::1:8001`` cannot be split into a host and a port.
"""

from __future__ import annotations


def bare_host(host: str) -> str:
    """``[::1]`` -> ``::1``; any other host unchanged."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def host_port(host: str, port: int) -> str:
    """``host:port`` for gRPC targets and messages, an IPv6 literal in brackets."""
    host = bare_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
