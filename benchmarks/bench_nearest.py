"""Nearest stations: the vectorised straight-line core, and /stations/nearest?mode=walk over HTTP.

1. Straight line: 100,000 query points against 2,000 stations (metric coordinates over a
   15 km city), `gis.stations.nearest_straight` against its physical baseline
   `shapely.STRtree.query_nearest` on the same arrays (tree build included in both);
   checks that answers are identical. Target: within 1.5x of the baseline.
2. HTTP: a throwaway PostGIS (tests/pgserver.py) with the city demo loaded, `wangge
   serve --workers 2` in production mode (bench_load's server) on loopback, at random
   points in the district: one request at a time, open loop at 100 and 200 req/s
   (latency from each request's due time), and a closed loop of 3,000 requests at
   concurrency 8 (as fast as it answers). Target: p99 < 30 ms. Also times one GET
   /api/v1/coverage end to end, as an admin.

    .venv/bin/python benchmarks/bench_nearest.py [--requests 3000] [--skip-http]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
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
    import secrets

    import httpx

    from benchmarks.bench_intake import load_fresh
    from benchmarks.bench_load import HOST, _http, _server
    from benchmarks.bench_load import _drive as _drive_open
    from data.demo import generate_district
    from gis.cases import Actor
    from gis.db import users_repo
    from gis.db.engine import make_engine, make_sessionmaker
    from tests.pgserver import remove, start_postgis

    started = time.perf_counter()
    district = generate_district("city")
    print(f"\ncity demo generated in {time.perf_counter() - started:.1f} s")
    server = start_postgis()
    try:
        url, counts = load_fresh(server, district)
        password = secrets.token_urlsafe(16)
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session, session.begin():
            users_repo.add_user(
                session, "bench-admin", password, "admin", actor=Actor("admin", "bench")
            )
        engine.dispose()
        print(
            f"loaded into PostGIS: {counts['buildings']:,.0f} buildings, "
            f"{counts['stations']:,.0f} stations, {counts['road_edges']:,.0f} road edges, "
            f"{counts['cases']:,.0f} cases in {counts['seconds']:.1f} s"
        )
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
        with _server(url, args_workers) as port:
            base = f"http://{HOST}:{port}"
            # Warm-up: each worker loads the graph once (cached per network version).
            asyncio.run(_drive(base, params[:64], concurrency))
            print(
                f"GET /api/v1/stations/nearest?mode=walk&k=3&kind=neighbourhood on PostGIS, "
                f"wangge serve --workers {args_workers} (target p99 < 30 ms):"
            )
            print(f"  load average before the runs: {os.getloadavg()[0]:.2f} (2 cores)")
            one, _ = asyncio.run(_drive(base, params[64:564], 1))
            o50, o99 = np.percentile(one * 1000, [50, 99])
            label = f"one request at a time ({len(one)}):"
            print(f"  {label:<38} p50 {o50:5.1f} ms   p99 {o99:5.1f} ms")
            # Open loop: requests leave on schedule; latency from each one's due time.
            encoded = [_http("GET", "/api/v1/stations/nearest", p) for p in params[64:]]
            for rate in (100, 200):
                lat, status, wall = asyncio.run(_drive_open(encoded[: rate * 10], port, rate))
                q50, q99 = np.percentile(lat * 1000, [50, 99])
                bad = int((status != 200).sum())
                print(
                    f"  open loop {rate} req/s for 10 s:          p50 {q50:5.1f} ms   p99 "
                    f"{q99:5.1f} ms   max {lat.max() * 1000:.0f} ms, {bad} non-200"
                )
            started = time.perf_counter()
            lat, errors = asyncio.run(_drive(base, params[64:], concurrency))
            wall = time.perf_counter() - started
            p50, p90, p99 = np.percentile(lat * 1000, [50, 90, 99])
            print(
                f"  closed loop, concurrency {concurrency} ({n_requests:,} requests, as fast as "
                f"it answers: {n_requests / wall:,.0f} req/s): p50 {p50:.1f} ms   p90 {p90:.1f}"
                f" ms   p99 {p99:.1f} ms   max {lat.max() * 1000:.0f} ms, {errors} non-200"
            )
            with httpx.Client(base_url=base, timeout=300) as client:
                token = client.post(
                    "/api/v1/auth/token", data={"username": "bench-admin", "password": password}
                ).json()["access_token"]
                started = time.perf_counter()
                r = client.get(
                    "/api/v1/coverage",
                    params={"kind": "neighbourhood", "limit": 10},
                    headers={"Authorization": f"Bearer {token}"},
                )
            r.raise_for_status()
            totals = r.json()["totals"]
            print(
                f"GET /api/v1/coverage?kind=neighbourhood end to end (store reads included): "
                f"{time.perf_counter() - started:.1f} s, shares 5/10/15 min "
                f"{totals['share_5min']:.1%} / {totals['share_10min']:.1%} / "
                f"{totals['share_15min']:.1%}"
            )
    finally:
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
