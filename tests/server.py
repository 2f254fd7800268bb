"""Run the app under a real uvicorn server on a loopback port, for API tests.

The server runs in a background thread of the test process, on a socket bound
here (port 0, so the kernel picks a free one without a race), and is shut down
when the `with` block ends. Tests talk to it over real HTTP with httpx.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.serving import NoDelayH11Protocol
from api.settings import Settings

STARTUP_TIMEOUT_S = 30.0


@contextmanager
def serve(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """Serve `create_app(settings)` (or an app built from it and extended by the
    test); yields the base URL, http://127.0.0.1:PORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app or create_app(settings),
        lifespan="on",
        log_level="warning",
        access_log=False,
        http=NoDelayH11Protocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            # A failed startup (lifespan error) ends the thread without setting started.
            if not thread.is_alive():
                raise RuntimeError("the test server did not start; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
