"""How wangge runs under uvicorn.

uvicorn binds its own listening socket when it runs several workers (and when a
caller passes a socket in), creating it with protocol 0 rather than IPPROTO_TCP.
asyncio only sets TCP_NODELAY on sockets whose protocol says TCP, so every
response then waits for the client's delayed ACK: about 40 ms on Linux, on every
request. This protocol sets TCP_NODELAY on each accepted connection itself.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with Nagle's algorithm switched off per connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket after all; nothing to tune
                pass
        super().connection_made(transport)
