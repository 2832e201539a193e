"""A clear error for a port another process holds, naming the flag that moves it."""

from __future__ import annotations

import errno
import socket

from serving.errors import ConfigError


def check_port_free(host: str, port: int, what: str) -> None:
    """Fail with a message naming the port when another process holds it.

    Binding without SO_REUSEPORT fails while anyone listens on the port, a server of ours
    included (whose replicas do set SO_REUSEPORT, and would otherwise share it). SO_REUSEADDR
    is set, as the servers set it: connections of a server that just stopped, left in
    TIME_WAIT, do not block a restart on the same port.

    Raises:
        ConfigError: the port is in use or the address cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            flag, make_var = PORT_FLAGS[what]
            raise ConfigError(
                f"{what} port {port} on {host} is already in use by another process; choose another port: "
                f"{flag} PORT (make serve {make_var}=PORT)"
            ) from None
        raise ConfigError(f"cannot bind {what} port {port} on {host}: {exc.strerror or exc}") from None


PORT_FLAGS = {
    "HTTP": ("--http-port", "HTTP_PORT"),
    "gRPC": ("--grpc-port", "GRPC_PORT"),
    "metrics": ("--metrics-port", "METRICS_PORT"),
}
"""The flag (and ``make serve`` variable) that moves each port, named when the port is taken."""
