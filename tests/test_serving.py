"""`wangge serve` as a user runs it: several uvicorn worker processes on a port.

With several workers uvicorn binds the socket itself with protocol 0, and asyncio
then leaves Nagle's algorithm on: each keep-alive response waited ~40 ms for the
client's delayed ACK. This runs the real command and checks that back-to-back
requests on one connection answer far below that, on the protocol wangge picks.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.serving import NoDelayH11Protocol, event_loop, http_protocol

ROOT = Path(__file__).resolve().parents[1]
DELAYED_ACK_MS = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_prefers_the_c_parser_on_uvloop():
    # Both are wangge dependencies; without them the h11/asyncio fallback would be used.
    assert http_protocol() is not NoDelayH11Protocol
    assert "HttpTools" in http_protocol().__name__
    assert event_loop() == "uvloop"


def _keep_alive_round_trips(port: int, n: int) -> list[float]:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    times = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        for _ in range(n):
            start = time.perf_counter()
            conn.sendall(request)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = reader.read(length)
            times.append((time.perf_counter() - start) * 1000)
            assert b"ok" in body.lower()
    return times


def test_serve_with_workers_answers_keep_alive_without_delayed_ack(tmp_path):
    port = _free_port()
    env = dict(os.environ, WANGGE_DATA_DIR=str(tmp_path))
    env.pop("WANGGE_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "2",
         "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                raise AssertionError(f"wangge serve did not come up:\n{out}")
            time.sleep(0.2)
        times = _keep_alive_round_trips(port, 30)[5:]  # the first few warm the worker up
        # With Nagle on, every round trip waits out the delayed ACK (~40 ms).
        assert statistics.median(times) < DELAYED_ACK_MS / 4, times
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
