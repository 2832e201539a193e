from __future__ import annotations

import socket

import pytest

from serving.errors import ConfigError
from serving.ports import check_port_free


@pytest.mark.parametrize(
    ("what", "hint"),
    [
        ("HTTP", "--http-port PORT (make serve HTTP_PORT=PORT)"),
        ("gRPC", "--grpc-port PORT (make serve GRPC_PORT=PORT)"),
        ("metrics", "--metrics-port PORT (make serve METRICS_PORT=PORT)"),
    ],
)
def test_a_taken_port_names_the_flag_that_moves_it(what: str, hint: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            check_port_free("127.0.0.1", port, what)
    assert f"{what} port {port} on 127.0.0.1 is already in use" in info.value.message
    assert info.value.message.endswith(hint)
