"""Host spellings, and whether ``host:port`` can be bound.

An IPv6 literal is accepted with brackets (``[::1]``, as in a URL) or without
(``::1``, as ``ip addr`` prints it). Sockets bind the bare address; gRPC targets, log
lines and ``/metrics`` URLs need the brackets, since ``::1:8001`` cannot be split into
a host and a port.
"""

from __future__ import annotations

import errno
import socket


def bare_host(host: str) -> str:
    """``[::1]`` -> ``::1``; any other host unchanged."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def host_port(host: str, port: int) -> str:
    """``host:port`` for gRPC targets and messages, an IPv6 literal in brackets."""
    host = bare_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_problem(host: str, port: int, reuse_port: bool = False) -> str | None:
    """Why ``host:port`` cannot be bound (``port 8001 is in use``, ``cannot resolve
    host 'x'``), or None when it can.

    gRPC says only "Failed to bind to address" for every cause (and logs its own
    error line to stderr); probing first tells the user which. The probe binds as
    gRPC does: each address the host resolves to in turn, with SO_REUSEADDR (a port
    in TIME_WAIT is free) and SO_REUSEPORT when ``reuse_port`` (``--workers N`` share
    the port). A port in use on any of them is refused: gRPC would serve on the
    others (``localhost`` on ::1 alone, or with SO_REUSEPORT beside another server on
    127.0.0.1), and clients of the taken address would reach that other server. Other
    failures (::1 with IPv6 off) are ignored while some address binds, as gRPC
    ignores them. A race (the port taken between the probe and gRPC's bind) still
    fails in gRPC.
    """
    host = bare_host(host)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror})"
    first: OSError | None = None
    bound = False
    for family, kind, proto, _, address in addresses:
        try:
            # Each probe is closed before the next: "::" and "0.0.0.0" would collide.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
            bound = True
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is in use"
            first = first or exc
    if bound:
        return None
    if first is None:  # getaddrinfo never returns an empty list; kept for the type
        return f"host {host!r} resolves to no address"
    if first.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if first.errno == errno.EACCES and 0 < port < 1024:
        return f"port {port} needs privileges (ports below 1024)"
    return first.strerror or str(first)
