"""The listening sockets of ``baton serve --workers N`` with ``BATON_REUSE_PORT``:
one per worker.

uvicorn's parent binds one socket and every worker accepts from it. A worker
woken by a new connection accepts every connection waiting, so connections
that arrive together (a proxy filling its keep-alive pool, a load test) land
on one worker while the others idle: in ``bench/worker_spread.py`` four
connections opened at once all went to one of two workers in nearly every
round, and that worker's core did the work of two.

With the setting, on Linux, each worker listens on a socket of its own, all
bound to the address with ``SO_REUSEPORT``, and the kernel spreads new
connections over them by a hash of their addresses. The parent keeps a
socket bound to the address that never listens: it holds the port while
workers come and go, and receives no connection. A second server started on
the port by mistake is refused, as it would be without ``SO_REUSEPORT``: the
address is checked with an ordinary bind first.

The price (why it is a setting; ``docs/deploy.md``): what the kernel had
queued for a worker that dies or restarts is reset, where a shared socket
kept it for the others (``net.ipv4.tcp_migrate_req=1`` hands it over
instead), and a worker whose event loop stalls keeps its share of new
connections.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

# Linux spreads the connections of a SO_REUSEPORT group over its listeners;
# other systems accept the option with other meanings (the BSDs, macOS).
SPREADS_CONNECTIONS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bound_socket(family: socket.AddressFamily, address: Any) -> socket.socket:
    """A socket bound to ``address`` with ``SO_REUSEPORT``, not yet listening:
    the parent's, and each worker's own (uvicorn listens on it)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class ParentSocket(socket.socket):
    """The parent's socket. uvicorn hands "the" listening socket to each worker
    it starts (pickled, as multiprocessing passes sockets); this one arrives
    as a new socket of that worker's own, bound to the same address."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return bound_socket, (self.family, self.getsockname())


def reserve(host: str, port: int) -> ParentSocket:
    """The parent's socket on ``host:port``, after checking that nothing else
    holds the address (a plain bind fails where anything is bound or listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host, port)
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    plain = bound_socket(family, address)
    try:
        parent = ParentSocket(family, socket.SOCK_STREAM, fileno=plain.detach())
    finally:
        plain.close()
    parent.set_inheritable(True)
    return parent
