"""Online case intake over HTTP on PostGIS: latency at a fixed arrival rate.

Starts a throwaway PostGIS (tests/pgserver.py), loads a demo district, runs
`wangge serve --workers 2` as a subprocess on loopback and sends POST
/api/v1/cases at a fixed rate (open loop: requests leave on schedule whether or
not earlier ones have answered, so queueing shows up in the latency). Prints
p50/p99 latency, the rate sustained, errors, and checks that the number of
stored cases grew by exactly the number of 201 answers. Bounded in time; stops
by itself.

The load generator is plain asyncio on keep-alive HTTP/1.1 connections rather
than httpx: it shares the two cores with the server, and httpx's client costs
about as much CPU per request as the server's handler. Latency is measured from
each request's due time, so a client that falls behind counts against it.
`--database-url` reuses an already loaded store instead of a throwaway PostGIS.

    .venv/bin/python benchmarks/bench_intake.py [--rate 300] [--seconds 20] [--size city]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.demo import generate_district  # noqa: E402
from data.loader import load_district  # noqa: E402
from gis.db.engine import make_engine, make_sessionmaker, migrate  # noqa: E402
from tests.pgserver import remove, start_postgis  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_cases(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT count(*) FROM cases").scalar()
    engine.dispose()
    return n


def load_fresh(server, district) -> tuple[str, dict]:
    """A new database `bench` on `server` holding `district`, vacuumed: (URL, counts).

    The vacuum is what a deployment does after a bulk import: without it, autovacuum
    starts on the 300,000 freshly loaded cases during a run and shares the cores.
    """
    with sa.create_engine(server.url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE bench")
    url = sa.engine.make_url(server.url).set(database="bench").render_as_string(False)
    engine = make_engine(url)
    migrate(engine)
    counts = load_district(make_sessionmaker(engine), district)
    engine.dispose()
    with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    return url, counts


class _Connection:
    """One HTTP/1.1 keep-alive connection: write a request, read one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _request(host: str, port: int, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST /api/v1/cases HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def _drive(
    host: str, port: int, bodies: list[dict], rate: float, connections: int = 64
) -> tuple[list[float], dict[int, int], float]:
    """Send `bodies` at `rate` per second, open loop, on keep-alive connections.

    Request i is due at start + i/rate and leaves then whether or not earlier ones
    have answered (a new connection is opened if all are busy). Its latency runs from
    when it was due, not from when it left, so a late client or a full pool shows up
    as latency instead of hiding it. Idle connections are used in turn (FIFO), so
    requests spread over the connections the uvicorn workers accepted. A request
    with no answer within 10 s counts as status 0.
    """
    requests = [_request(host, port, b) for b in bodies]  # encoded before the clock starts
    idle: deque[_Connection] = deque(
        await asyncio.gather(*(_Connection.open(host, port) for _ in range(connections)))
    )
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(request: bytes, due: float) -> None:
        conn = idle.popleft() if idle else None
        try:
            if conn is None:
                conn = await _Connection.open(host, port)
            code = await asyncio.wait_for(conn.post(request), timeout=10)
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            code = 0
            if conn is not None:
                conn.close()
                conn = None
        latencies.append(time.perf_counter() - due)
        statuses[code] = statuses.get(code, 0) + 1
        if conn is not None:
            idle.append(conn)

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    tasks = []
    for i, request in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(request, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return latencies, statuses, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="city")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--database-url", help="a PostGIS store already loaded with a demo (default: a new one)"
    )
    args = parser.parse_args()

    server = None if args.database_url else start_postgis()
    proc = None
    try:
        if server is None:
            url = args.database_url
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                bounds = conn.exec_driver_sql(
                    "SELECT min(ST_XMin(geom::box3d)), min(ST_YMin(geom::box3d)),"
                    " max(ST_XMax(geom::box3d)), max(ST_YMax(geom::box3d)) FROM areas"
                ).one()
                codes = [c for (c,) in conn.exec_driver_sql(
                    "SELECT DISTINCT category_code FROM cases ORDER BY 1"
                )]  # fmt: skip
            engine.dispose()
            print(f"reusing the store at {url}")
        else:
            district = generate_district(args.size)
            url, counts = load_fresh(server, district)
            print(f"loaded the {args.size} demo into PostGIS: {counts}")
            bounds = district.areas.total_bounds
            codes = sorted(district.cases["category_code"].unique())

        port = _free_port()
        # The load generator is one client: its per-client rate limit is switched off.
        env = dict(os.environ, WANGGE_DATABASE_URL=url, WANGGE_RATE_LIMIT_PER_MIN="0")
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/wangge"),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")

        rng = np.random.default_rng(1)
        minx, miny, maxx, maxy = (float(v) for v in bounds)
        n = int(args.rate * args.seconds)
        bodies = [
            {
                "category": str(rng.choice(codes)),
                "lon": float(rng.uniform(minx, maxx)),
                "lat": float(rng.uniform(miny, maxy)),
                "description": "benchmark report",
                "source": "resident",
            }
            for _ in range(n)
        ]
        # warm up both workers (statement caches, connection pools)
        asyncio.run(_drive("127.0.0.1", port, bodies[:200], 100))
        before = _count_cases(url)
        latencies, statuses, elapsed = asyncio.run(_drive("127.0.0.1", port, bodies, args.rate))
        stored = _count_cases(url) - before
        ms = np.array(latencies) * 1000
        created = statuses.get(201, 0)
        print(
            f"POST /api/v1/cases, {args.workers} uvicorn workers, PostGIS, open loop"
            " (asyncio HTTP/1.1 keep-alive client; latency from each request's due time)"
        )
        print(f"  offered {args.rate:.0f} req/s for {args.seconds:.0f} s: {n} requests")
        print(f"  sustained {n / elapsed:.0f} req/s; statuses {dict(sorted(statuses.items()))}")
        print(
            f"  latency p50 {np.percentile(ms, 50):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms,"
            f" p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms (target p99 < 25 ms)"
        )
        print(f"  cases stored {stored} = 201 answers {created}: {stored == created}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # still draining a backlog: stop it
                os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers
                proc.wait(timeout=20)
        if server is not None:
            remove(server)


if __name__ == "__main__":
    main()
