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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from api.serving import (
    NoDelayH11Protocol,
    event_loop,
    http_protocol,
    kernel_balances_reuse_port,
)

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
    # and on Linux (CI's machine) a socket per worker, which the burst test relies on
    assert kernel_balances_reuse_port()


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


@contextmanager
def _wangge_serve(tmp_path, workers: int = 2) -> Iterator[tuple[subprocess.Popen, int]]:
    """`wangge serve --workers N` on a free port, as a user starts it; stopped after."""
    port = _free_port()
    env = dict(os.environ, WANGGE_DATA_DIR=str(tmp_path))
    env.pop("WANGGE_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers",
         str(workers), "--no-access-log"],
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
        yield proc, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _workers_of(proc: subprocess.Popen) -> list[int]:
    """The worker processes (multiprocessing's resource tracker is a child too)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"spawn_main" in cmdline:
            workers.append(int(pid))
    return sorted(workers)


ESTABLISHED, LISTEN = "01", "0A"  # TCP states as /proc/net/tcp writes them


def _sockets_on(pid: int, port: int, state: str = ESTABLISHED) -> int:
    """How many TCP sockets on local `port` in `state` the process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state and fields[9] in inodes:
            count += 1
    return count


def test_serve_with_workers_answers_keep_alive_without_delayed_ack(tmp_path):
    with _wangge_serve(tmp_path) as (_, port):
        times = _keep_alive_round_trips(port, 30)[5:]  # the first few warm the worker up
    # With Nagle on, every round trip waits out the delayed ACK (~40 ms).
    assert statistics.median(times) < DELAYED_ACK_MS / 4, times


def test_connections_opened_in_a_burst_spread_over_the_workers(tmp_path):
    """A client opening its pool at once (as a proxy does) reaches every worker, not the
    first to wake; a worker that dies is replaced and the port keeps answering."""
    with _wangge_serve(tmp_path) as (proc, port):
        # The first worker to listen answered; wait for both to be up and listening.
        deadline = time.monotonic() + 60
        while True:
            workers = _workers_of(proc)
            if len(workers) == 2 and all(_sockets_on(pid, port, LISTEN) for pid in workers):
                break
            assert time.monotonic() < deadline, f"two listening workers never came: {workers}"
            time.sleep(0.2)
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        try:
            for conn in conns:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for conn in conns:
                assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            held = {pid: _sockets_on(pid, port) for pid in workers}
        finally:
            for conn in conns:
                conn.close()
        assert sum(held.values()) == 32, held
        # The kernel hashes each connection to one socket of the SO_REUSEPORT group, so
        # both get a fair share; uvicorn's shared socket gave 29 and 3, or 32 and 0.
        # Fewer than 6 of 32 on a fair coin: about 1 run in 10,000.
        assert min(held.values()) >= 6, held

        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(set(_workers_of(proc)) - {workers[0]}) < 2:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        answered = 0
        while answered < 20:  # every connection lands on a live worker again
            assert time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    answered += 1
            except httpx.HTTPError:
                time.sleep(0.2)
