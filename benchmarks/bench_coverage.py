"""Walking coverage of the city-size demo: one multi-source pass per station kind.

Builds the demo's street graph, then for each station kind computes every building's walk
to its nearest station (`gis.stations.compute_coverage`: one multi-source Dijkstra per
kind) and the per-grid/community shares. Baseline: the naive method, one shortest-path
search per building, timed on a 2,000-building sample and extrapolated; the sample's
answers are checked against the multi-source ones. Target: < 60 s per city-size run.

    .venv/bin/python benchmarks/bench_coverage.py [--sample 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.demo import generate_district  # noqa: E402
from gis.network import build_road_graph, search_from_point, snap_points  # noqa: E402
from gis.stations import compute_coverage  # noqa: E402


def naive_walks(graph, building_ll: np.ndarray, station_ll: np.ndarray) -> np.ndarray:
    """One unbounded search per building to every station: what coverage must not do."""
    stations = snap_points(graph, graph.to_metric(station_ll))
    out = np.empty(len(building_ll))
    for i, ll in enumerate(building_ll):
        origin = snap_points(graph, graph.to_metric(ll[None, :]))
        out[i] = search_from_point(graph, origin).distances_to(stations).min()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--kind", default="neighbourhood")
    args = parser.parse_args()

    started = time.perf_counter()
    district = generate_district("city")
    print(f"city demo generated in {time.perf_counter() - started:.1f} s")
    buildings, stations = district.buildings, district.stations
    started = time.perf_counter()
    graph = build_road_graph(district.roads)
    _ = graph.csr, graph.edge_tree
    build_s = time.perf_counter() - started
    print(
        f"street graph: {graph.n_nodes:,} nodes, {graph.n_edges:,} edges, "
        f"{graph.edge_length_m.sum() / 1000:,.0f} km, built in {build_s:.2f} s"
    )
    print(f"{len(buildings):,} buildings, {int(buildings['households'].sum()):,} households")

    total = 0.0
    for kind, group in stations.groupby("kind"):
        started = time.perf_counter()
        cov = compute_coverage(graph, buildings, group)
        took = time.perf_counter() - started
        total += took
        t = cov.totals
        print(
            f"  {kind:15} {len(group):4d} stations  {took:6.2f} s   households within "
            f"5/10/15 min: {t['share_5min']:6.1%} {t['share_10min']:6.1%} {t['share_15min']:6.1%}"
        )
    print(f"all {stations['kind'].nunique()} kinds: {total:.1f} s (target < 60 s per run)")

    kind_stations = stations[stations["kind"] == args.kind]
    started = time.perf_counter()
    cov = compute_coverage(graph, buildings, kind_stations)
    fast_s = time.perf_counter() - started
    rng = np.random.default_rng(3)
    sample = np.sort(rng.choice(len(buildings), args.sample, replace=False))
    b_ll = shapely.get_coordinates(shapely.point_on_surface(buildings.geometry.values[sample]))
    s_ll = shapely.get_coordinates(kind_stations.geometry.values)
    started = time.perf_counter()
    naive = naive_walks(graph, b_ll, s_ll)
    naive_s = time.perf_counter() - started
    per_building_naive = naive_s / args.sample
    per_building_fast = fast_s / len(buildings)
    diff = np.abs(naive - cov.buildings["walk_m"].to_numpy()[sample])
    print(f"\n{args.kind} ({len(kind_stations)} stations):")
    print(f"  multi-source, all {len(buildings):,} buildings     {fast_s:8.2f} s")
    print(
        f"  naive per-building search, {args.sample:,} sample    {naive_s:8.2f} s  "
        f"(extrapolated to all: {per_building_naive * len(buildings):,.0f} s)"
    )
    print(
        f"  per building: naive {per_building_naive * 1e3:.2f} ms vs multi-source "
        f"{per_building_fast * 1e3:.4f} ms  -> {per_building_naive / per_building_fast:,.0f}x"
    )
    print(f"  sample agrees: max |naive - multi-source| = {diff.max():.3g} m")
