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
import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
from typing import Any

from uvicorn.config import STARTUP_FAILURE
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


# ------------------------------------------------------------- several workers
#
# uvicorn's own supervisor (and gunicorn's) binds one listening socket in the parent
# and shares it with every worker. Whichever worker wakes first then accepts every
# connection waiting in the queue, so a client that opens its keep-alive pool in one
# burst (a load balancer, a reverse proxy, a benchmark) lands wholly on one worker
# while the others idle: measured on /stations/nearest with 8 connections, one worker
# took 10.8 s of CPU and the other 0.01 s. With SO_REUSEPORT and one socket per worker
# the kernel spreads connections over the workers itself. Neither uvicorn nor
# gunicorn opens a socket per worker, hence this small supervisor.

log = logging.getLogger("wangge.serve")

#: Workers restarted within a minute before the supervisor calls it a crash loop.
MAX_RESTARTS_PER_MIN = 5
#: How long workers get to finish their requests after SIGTERM.
STOP_GRACE_S = 15.0


def kernel_balances_reuse_port() -> bool:
    """Whether SO_REUSEPORT spreads connections over a group of sockets: Linux does
    (since 3.9); BSD and macOS hand them all to one socket, and Windows lacks it."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not yet listening)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def create_served_app():
    """The app as `wangge serve` runs it (uvicorn's factory): its startup objects frozen
    out of the garbage collector's way (see `api.app.create_app`)."""
    from api.app import create_app

    return create_app(freeze_gc=True)


def _run_worker(config_kwargs: dict[str, Any], host: str, port: int) -> None:
    """One worker process: its own socket in the port's group, one uvicorn server."""
    import uvicorn

    sock = reuse_port_socket(host, port)
    uvicorn.Server(uvicorn.Config(**config_kwargs)).run(sockets=[sock])


def serve_workers(config_kwargs: dict[str, Any], host: str, port: int, workers: int) -> int:
    """Run `workers` uvicorn servers on host:port, one SO_REUSEPORT socket each.

    `config_kwargs` are uvicorn.Config's arguments (picklable: the app as an import
    string). A worker that dies is started again, unless it failed to start
    (uvicorn's startup failure code) or workers keep dying (a crash loop): then
    the rest are stopped too. SIGTERM or SIGINT stops the workers gracefully.
    Returns the exit code.
    """
    # Bound (not listening) for as long as we run: the port is ours from the start and
    # a clash is reported here, once, rather than by every worker. A socket that is
    # not listening is given no connections.
    holder = reuse_port_socket(host, port)
    port = holder.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        proc = context.Process(target=_run_worker, args=(config_kwargs, host, port))
        proc.start()
        return proc

    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    procs = [start() for _ in range(workers)]
    restarts: list[float] = []
    code = 0
    try:
        while not stop.wait(0.5):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if proc.exitcode == STARTUP_FAILURE or len(restarts) > MAX_RESTARTS_PER_MIN:
                    # A worker that cannot start (port, app, store) will not start again.
                    log.error("worker %s exited with code %s: stopping", proc.pid, proc.exitcode)
                    code = proc.exitcode or 1
                    stop.set()
                    break
                log.warning(
                    "worker %s died (exit code %s): starting another", proc.pid, proc.exitcode
                )
                procs[i] = start()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # uvicorn finishes its requests on SIGTERM
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        holder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
