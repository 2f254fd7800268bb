"""How wangge runs under uvicorn.

uvicorn binds its own listening socket when it runs several workers (and when a
caller passes a socket in), creating it with protocol 0 rather than IPPROTO_TCP.
asyncio only sets TCP_NODELAY on sockets whose protocol says TCP, so every
response then waits for the client's delayed ACK: about 40 ms on Linux, on every
request. The protocols here set TCP_NODELAY on each accepted connection themselves.

`wangge serve` prefers httptools (a C HTTP parser) on uvloop when both are
installed, as they are with wangge's own dependencies: on intake they save about
0.4 ms of CPU per request against h11 on asyncio (measured; see the intake
benchmark), which matters at hundreds of requests per second on two cores. h11 on
asyncio stays the fallback and is what the tests' in-process servers use.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket after all; nothing to tune
            pass


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with Nagle's algorithm switched off per connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


try:  # httptools is optional: uvicorn falls back to h11 without it
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - wangge's dependencies include httptools
    HttpToolsProtocol = None
else:

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with Nagle's algorithm switched off per connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _no_delay(transport)
            super().connection_made(transport)


def http_protocol() -> type:
    """The fastest HTTP protocol class available, with TCP_NODELAY set per connection.

    Module-level classes: with several workers uvicorn pickles its config for each
    spawned process, and a class made inside a function would not pickle."""
    return NoDelayH11Protocol if HttpToolsProtocol is None else NoDelayHttpToolsProtocol


def event_loop() -> str:
    """uvicorn's `loop` setting: uvloop when installed, else asyncio."""
    return "uvloop" if _has("uvloop") else "asyncio"
