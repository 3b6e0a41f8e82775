"""What serve() binds besides TCP (``trio_echo._endpoints``): UDP on the TCP addresses, Unix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from trio_echo import ListenerConfig, ServerConfig, UDPConfig
from trio_echo._endpoints import bind_other_endpoints


async def test_udp_binds_each_tcp_address_and_port() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    config = ServerConfig(listener=ListenerConfig(port=0), udp=UDPConfig())
    udp, unix, unix_file = bind_other_endpoints(config, listeners)
    try:
        assert [sock.getsockname() for sock in udp] == [listeners[0].socket.getsockname()]
        assert (unix, unix_file) == (None, None)
    finally:
        for sock in udp:
            sock.close()
        for listener in listeners:
            await listener.aclose()


async def test_a_unix_failure_closes_the_udp_sockets(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    config = ServerConfig(
        listener=ListenerConfig(port=0, tcp=False, unix=str(not_a_socket)), udp=UDPConfig()
    )
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="exists and is not a socket"):
        bind_other_endpoints(config, [])
    # The UDP socket bound first was closed again.
    assert len(os.listdir("/proc/self/fd")) == descriptors
