"""Nearest stations: the vectorised straight-line core, and /stations/nearest?mode=walk over HTTP.

1. Straight line: 100,000 query points against 2,000 stations (metric coordinates over a
   15 km city), `gis.stations.nearest_straight` against its physical baseline
   `shapely.STRtree.query_nearest` on the same arrays (tree build included in both);
   checks that answers are identical. Target: within 1.5x of the baseline.
2. HTTP: a throwaway PostGIS (tests/pgserver.py) with the city demo loaded, uvicorn with
   2 workers as a subprocess on loopback, driven by a bounded async httpx loop (3,000
   requests, concurrency 8) at random points in the district. Prints p50/p90/p99 latency.
   Target: p99 < 30 ms. Also times one GET /api/v1/coverage end to end.

    .venv/bin/python benchmarks/bench_nearest.py [--requests 3000] [--skip-http]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gis.stations import nearest_straight  # noqa: E402


def best_of(fn, repeat: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def bench_straight(n_points: int = 100_000, n_stations: int = 2_000) -> None:
    rng = np.random.default_rng(42)
    stations = rng.uniform(0, 15_000, (n_stations, 2))
    points = rng.uniform(0, 15_000, (n_points, 2))

    def baseline():
        tree = shapely.STRtree(shapely.points(stations))
        return tree.query_nearest(shapely.points(points), all_matches=False, return_distance=True)

    base_s, (pairs, base_d) = best_of(baseline)
    ours_s, (idx, dist) = best_of(lambda: nearest_straight(points, stations, 1))
    k3_s, _ = best_of(lambda: nearest_straight(points, stations, 3))
    base_idx = np.empty(n_points, dtype=np.int64)
    base_idx[pairs[0]] = pairs[1]
    dist_b = np.empty(n_points)
    dist_b[pairs[0]] = base_d
    same_idx = int((idx[:, 0] == base_idx).sum())
    max_diff = float(np.abs(dist[:, 0] - dist_b).max())
    print(f"straight-line nearest: {n_points:,} points x {n_stations:,} stations (best of 5)")
    print(f"  shapely.STRtree.query_nearest (baseline)  {base_s * 1000:8.1f} ms")
    print(f"  gis.stations.nearest_straight k=1         {ours_s * 1000:8.1f} ms")
    print(f"  ratio ours / baseline                     {ours_s / base_s:8.2f}x  (target ≤ 1.5x)")
    print(f"  gis.stations.nearest_straight k=3 (k-d)   {k3_s * 1000:8.1f} ms")
    print(
        f"  exact: {same_idx:,}/{n_points:,} same station, max distance difference {max_diff:.3g} m"
    )


# ---------------------------------------------------------------------- HTTP


# uvicorn with N workers, as `uvicorn --workers N` runs it, except for the listening
# socket: created with proto=IPPROTO_TCP. asyncio sets TCP_NODELAY on accepted sockets only
# when the socket's proto says TCP, and uvicorn's own bind_socket() leaves proto 0, so
# Nagle's algorithm holds the response body (a second small write after the headers)
# until the client's delayed ACK: +40 ms on every request. Measured here: /healthz takes
# 44 ms with uvicorn's socket and 1.5 ms with this one.
RUNNER = """
import socket, sys
import uvicorn
from uvicorn.supervisors import Multiprocess
port, workers = int(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.set_inheritable(True)
config = uvicorn.Config("api.app:create_app", factory=True, workers=workers,
                        log_level="warning", access_log=False)
Multiprocess(config, sockets=[sock]).run()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _drive(base: str, params: list[dict], concurrency: int) -> tuple[np.ndarray, int]:
    import httpx

    latencies = np.zeros(len(params))
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(params)):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            r = await client.get("/api/v1/stations/nearest", params=params[i])
            latencies[i] = time.perf_counter() - started
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.wait_for(
            asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout=600
        )
    return latencies, errors


def bench_http(n_requests: int, concurrency: int, args_workers: int = 2) -> None:
    import httpx

    from data.demo import generate_district
    from data.loader import load_district
    from gis.db.engine import make_engine, make_sessionmaker, migrate
    from tests.pgserver import remove, start_postgis

    started = time.perf_counter()
    district = generate_district("city")
    print(f"\ncity demo generated in {time.perf_counter() - started:.1f} s")
    server = start_postgis()
    proc = None
    try:
        url = server.url
        engine = make_engine(url)
        migrate(engine)
        counts = load_district(make_sessionmaker(engine), district)
        engine.dispose()
        print(
            f"loaded into PostGIS: {counts['buildings']:,.0f} buildings, "
            f"{counts['stations']:,.0f} stations, {counts['road_edges']:,.0f} road edges, "
            f"{counts['cases']:,.0f} cases in {counts['seconds']:.1f} s"
        )
        port = _free_port()
        env = {**os.environ, "WANGGE_DATABASE_URL": url, "WANGGE_DATA_DIR": tempfile.mkdtemp()}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(port), str(args_workers)],
            cwd=ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.2)

        rng = np.random.default_rng(7)
        buildings = district.buildings
        anchors = shapely.get_coordinates(
            shapely.point_on_surface(
                buildings.geometry.values[rng.integers(0, len(buildings), n_requests + 64)]
            )
        )
        # Jitter by up to ~100 m so points fall on streets, yards and between blocks.
        anchors += rng.uniform(-0.001, 0.001, anchors.shape)
        params = [
            {"lon": float(x), "lat": float(y), "kind": "neighbourhood", "k": 3, "mode": "walk"}
            for x, y in anchors
        ]
        # Warm-up: each worker loads the graph once (cached per network version).
        asyncio.run(_drive(base, params[:64], concurrency))
        one, _ = asyncio.run(_drive(base, params[64:564], 1))
        o50, o99 = np.percentile(one * 1000, [50, 99])
        print(f"  one request at a time (500): p50 {o50:.1f} ms   p99 {o99:.1f} ms")
        print(f"  load average before the run: {os.getloadavg()[0]:.2f} (2 cores, shared)")
        started = time.perf_counter()
        lat, errors = asyncio.run(_drive(base, params[64:], concurrency))
        wall = time.perf_counter() - started
        p50, p90, p99 = np.percentile(lat * 1000, [50, 90, 99])
        print(
            f"GET /api/v1/stations/nearest?mode=walk&k=3&kind=neighbourhood on PostGIS, "
            f"uvicorn {args_workers} workers, {n_requests:,} requests, concurrency {concurrency}:"
        )
        print(
            f"  p50 {p50:.1f} ms   p90 {p90:.1f} ms   p99 {p99:.1f} ms   max {lat.max() * 1000:.1f}"
            f" ms   (target p99 < 30 ms)"
        )
        print(f"  {n_requests / wall:,.0f} requests/s, {errors} non-200 answers")
        started = time.perf_counter()
        r = httpx.get(
            f"{base}/api/v1/coverage", params={"kind": "neighbourhood", "limit": 10}, timeout=300
        )
        body = r.json()
        print(
            f"GET /api/v1/coverage?kind=neighbourhood end to end (store reads included): "
            f"{time.perf_counter() - started:.1f} s, status {r.status_code}, "
            f"shares 5/10/15 min {body['totals']['share_5min']:.1%} / "
            f"{body['totals']['share_10min']:.1%} / {body['totals']['share_15min']:.1%}"
        )
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        remove(server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    bench_straight()
    if not args.skip_http:
        bench_http(args.requests, args.concurrency)
