"""Online case intake over HTTP on PostGIS: latency at a fixed arrival rate.

Starts a throwaway PostGIS (tests/pgserver.py), loads a demo district, runs
`wangge serve --workers 2` as a subprocess on loopback and sends POST
/api/v1/cases at a fixed rate (open loop: requests leave on schedule whether or
not earlier ones have answered, so queueing shows up in the latency). Prints
p50/p99 latency, the rate sustained, errors, and checks that the number of
stored cases grew by exactly the number of 201 answers. Bounded in time; stops
by itself.

    .venv/bin/python benchmarks/bench_intake.py [--rate 300] [--seconds 20] [--size city]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
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


async def _drive(base: str, bodies: list[dict], rate: float) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:

        async def one(body: dict) -> None:
            started = time.perf_counter()
            try:
                r = await client.post("/api/v1/cases", json=body)
                code = r.status_code
            except httpx.HTTPError:
                code = 0
            latencies.append(time.perf_counter() - started)
            statuses[code] = statuses.get(code, 0) + 1

        start = time.perf_counter()
        tasks = []
        for i, body in enumerate(bodies):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return latencies, statuses, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="city")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    server = start_postgis()
    proc = None
    try:
        admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE bench")
        admin.dispose()
        url = sa.engine.make_url(server.url).set(database="bench").render_as_string(False)
        engine = make_engine(url)
        migrate(engine)
        district = generate_district(args.size)
        counts = load_district(make_sessionmaker(engine), district)
        engine.dispose()
        print(f"loaded the {args.size} demo into PostGIS: {counts}")

        port = _free_port()
        env = dict(os.environ, WANGGE_DATABASE_URL=url)
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
        minx, miny, maxx, maxy = district.areas.total_bounds
        n = int(args.rate * args.seconds)
        codes = sorted(district.cases["category_code"].unique())
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
        # warm up both workers (graph caches, connection pools)
        asyncio.run(_drive(base, bodies[:50], 50))
        before = _count_cases(url)
        latencies, statuses, elapsed = asyncio.run(_drive(base, bodies, args.rate))
        stored = _count_cases(url) - before
        ms = np.array(latencies) * 1000
        created = statuses.get(201, 0)
        print(f"POST /api/v1/cases, {args.workers} uvicorn workers, PostGIS, open loop")
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
            proc.wait(timeout=20)
        remove(server)


if __name__ == "__main__":
    main()
