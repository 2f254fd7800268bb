"""Route a million case points into ten thousand grids: GridIndex against geopandas.sjoin.

Builds a city-size tessellation (a jittered quad mesh whose neighbours share every
vertex exactly, 8-40 vertices per grid, ~20 km square around Shenyang) and points
(clustered, uniform, exactly on vertices, on edge midpoints, just outside, far
outside), then times in the same run, best of --repeat:

- the baseline named by the issue, `geopandas.sjoin(points_gdf, grids_gdf,
  predicate="within")`, on GeoDataFrames made before the clock starts;
- `GridIndex.build` + `GridIndex.route` from lon/lat arrays, build included.

Each repeat gets fresh polygon copies and fresh frames, so neither side reuses a
spatial index or a prepared geometry from an earlier repeat.

    .venv/bin/python benchmarks/bench_routing.py [--points 1000000] [--grids 10000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gis.assign import assign_points  # noqa: E402
from gis.routing import GridIndex, metres_per_degree  # noqa: E402

CENTRE_LONLAT = (123.43, 41.80)
SIZE_M = 20_000.0


def make_quad_mesh(
    nx: int, ny: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """nx * ny grids over a SIZE_M square: jittered corners, wiggly shared edges.

    Every mesh edge gets 1-9 extra vertices, drawn once and used (reversed) by both
    grids on its sides, so neighbours share vertices bit for bit; the outer edges stay
    straight. Returns the polygons (row-major, west to east within a row) and the box.
    """
    kx, ky = metres_per_degree(CENTRE_LONLAT[1])
    width, height = SIZE_M / kx, SIZE_M / ky
    x0, y0 = CENTRE_LONLAT[0] - width / 2, CENTRE_LONLAT[1] - height / 2
    step_x, step_y = width / nx, height / ny
    cx = x0 + step_x * np.arange(nx + 1)[:, None] + np.zeros((1, ny + 1))
    cy = y0 + step_y * np.arange(ny + 1)[None, :] + np.zeros((nx + 1, 1))
    jitter_x = rng.uniform(-0.2, 0.2, cx.shape) * step_x
    jitter_y = rng.uniform(-0.2, 0.2, cy.shape) * step_y
    jitter_x[[0, -1], :] = 0  # corners on the west and east sides slide along them only
    jitter_y[:, [0, -1]] = 0
    cx, cy = cx + jitter_x, cy + jitter_y

    def wiggle(ax, ay, bx, by, straight):
        """Extra vertices for each edge a -> b: sorted along it, pushed sideways a little."""
        counts = rng.integers(1, 10, ax.size)
        owner = np.repeat(np.arange(ax.size), counts)
        t = rng.uniform(0.05, 0.95, owner.size)
        t = t[np.lexsort((t, owner))]
        ex, ey = (bx - ax)[owner], (by - ay)[owner]
        push = rng.uniform(-0.1, 0.1, owner.size) * np.sin(np.pi * t)
        push[straight[owner]] = 0.0
        px = ax[owner] + t * ex - push * ey
        py = ay[owner] + t * ey + push * ex
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return [
            np.column_stack([px[a:b], py[a:b]])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    h_straight = np.zeros((nx, ny + 1), dtype=bool)
    h_straight[:, [0, -1]] = True
    horizontal = wiggle(
        cx[:-1].ravel(), cy[:-1].ravel(), cx[1:].ravel(), cy[1:].ravel(), h_straight.ravel()
    )
    v_straight = np.zeros((nx + 1, ny), dtype=bool)
    v_straight[[0, -1], :] = True
    vertical = wiggle(
        cx[:, :-1].ravel(),
        cy[:, :-1].ravel(),
        cx[:, 1:].ravel(),
        cy[:, 1:].ravel(),
        v_straight.ravel(),
    )
    polygons = []
    for j in range(ny):
        for i in range(nx):
            ring = np.concatenate(
                [
                    [[cx[i, j], cy[i, j]]],
                    horizontal[i * (ny + 1) + j],
                    [[cx[i + 1, j], cy[i + 1, j]]],
                    vertical[(i + 1) * ny + j],
                    [[cx[i + 1, j + 1], cy[i + 1, j + 1]]],
                    horizontal[i * (ny + 1) + j + 1][::-1],
                    [[cx[i, j + 1], cy[i, j + 1]]],
                    vertical[i * ny + j][::-1],
                ]
            )
            polygons.append(shapely.Polygon(ring))
    return np.array(polygons, dtype=object), (x0, y0, x0 + width, y0 + height)


def make_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """DB11/T 2157-style 15-digit codes (district, street, community, sequence), shuffled
    so that code order differs from polygon order."""
    seq = rng.permutation(n)
    return np.array(
        [f"210102{s // 1000 % 1000:03d}{s // 100 % 10:03d}{s % 100:03d}" for s in seq],
        dtype=object,
    )


def make_points(
    n: int, polygons: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, int]]:
    """Case points: special kinds first in fixed numbers, then clustered and uniform ones."""
    x0, y0, x1, y1 = box
    kx, ky = metres_per_degree(CENTRE_LONLAT[1])
    parts: dict[str, np.ndarray] = {}
    vertices = shapely.get_coordinates(polygons)
    parts["on a vertex"] = vertices[rng.integers(0, len(vertices), 3000)]
    starts = rng.integers(0, len(vertices) - 1, 2000)
    parts["on an edge midpoint"] = (vertices[starts] + vertices[starts + 1]) / 2
    for name, lo_m, hi_m, count in (
        ("just outside (<45 m)", 0.5, 45.0, 3000),
        ("far outside (0.5-5 km)", 500.0, 5000.0, 2000),
    ):
        t = rng.uniform(0, 1, count)
        off_m = rng.uniform(lo_m, hi_m, count)
        side = rng.integers(0, 4, count)
        x = np.where(side == 0, x0 - off_m / kx, np.where(side == 1, x1 + off_m / kx, 0.0))
        y = np.where(side == 2, y0 - off_m / ky, np.where(side == 3, y1 + off_m / ky, 0.0))
        x = np.where(side >= 2, x0 + t * (x1 - x0), x)
        y = np.where(side < 2, y0 + t * (y1 - y0), y)
        parts[name] = np.column_stack([x, y])
    rest = n - sum(len(p) for p in parts.values())
    n_clustered = int(rest * 0.55)
    centres = np.column_stack([rng.uniform(x0, x1, 200), rng.uniform(y0, y1, 200)])
    sigma_m = rng.uniform(100, 600, 200)
    pick = rng.integers(0, 200, n_clustered)
    clustered = centres[pick] + rng.normal(0, 1, (n_clustered, 2)) * (
        sigma_m[pick, None] / np.array([kx, ky])
    )
    # Cluster tails beyond the box are dropped (and made up by uniform points), not
    # clipped: clipping would pile points exactly onto the outer rim.
    in_box = (clustered >= [x0, y0]).all(axis=1) & (clustered <= [x1, y1]).all(axis=1)
    parts["clustered"] = clustered[in_box]
    n_uniform = rest - len(parts["clustered"])
    parts["uniform"] = np.column_stack(
        [rng.uniform(x0, x1, n_uniform), rng.uniform(y0, y1, n_uniform)]
    )
    xy = np.concatenate(list(parts.values()))
    return xy[rng.permutation(len(xy))], {k: len(v) for k, v in parts.items()}


def fresh(polygons: np.ndarray) -> np.ndarray:
    """Copies with no prepared state or cached index attached."""
    return shapely.from_wkb(shapely.to_wkb(polygons))


def time_sjoin(points: np.ndarray, polygons: np.ndarray, codes: np.ndarray):
    points_gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(points, crs=4326))
    grids_gdf = gpd.GeoDataFrame({"code": codes}, geometry=fresh(polygons), crs=4326)
    started = time.perf_counter()
    joined = gpd.sjoin(points_gdf, grids_gdf, predicate="within")
    return time.perf_counter() - started, joined


def time_grid_index(xy: np.ndarray, polygons: np.ndarray, codes: np.ndarray, cell_deg):
    copies = fresh(polygons)
    started = time.perf_counter()
    index = GridIndex.build(copies, codes, cell_deg=cell_deg)
    built = time.perf_counter()
    routed = index.route(xy)
    done = time.perf_counter()
    return built - started, done - built, index, routed


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--grids", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--cell-deg", type=float, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    side = max(1, round(args.grids**0.5))
    polygons, box = make_quad_mesh(side, max(1, args.grids // side), rng)
    codes = make_codes(len(polygons), rng)
    xy, kinds = make_points(args.points, polygons, box, rng)
    n_vertices = shapely.get_num_coordinates(polygons) - 1
    assert shapely.is_valid(polygons).all()
    started = time.perf_counter()
    points = shapely.points(xy)
    points_s = time.perf_counter() - started

    print(
        f"wangge routing benchmark: {len(xy):,} points into {len(polygons):,} grids "
        f"(jittered {side}x{len(polygons) // side} quad mesh, {n_vertices.min()}-"
        f"{n_vertices.max()} vertices per grid, mean {n_vertices.mean():.1f}; "
        f"{SIZE_M / 1000:.0f} x {SIZE_M / 1000:.0f} km around "
        f"{CENTRE_LONLAT[0]}E {CENTRE_LONLAT[1]}N)"
    )
    print("points: " + ", ".join(f"{v:,} {k}" for k, v in kinds.items()))
    print(f"seed {args.seed}, best of {args.repeat} repeats, interleaved\n")

    # First run of ours before any sjoin, so the memory peak so far is ours (plus data).
    build_s, route_s, index, routed = [], [], None, None
    b, r, index, routed = time_grid_index(xy, polygons, codes, args.cell_deg)
    build_s.append(b)
    route_s.append(r)
    peak_ours = peak_mib()
    sjoin_s, joined = [], None
    for repeat in range(args.repeat):
        s, joined = time_sjoin(points, polygons, codes)
        sjoin_s.append(s)
        if repeat + 1 < args.repeat:
            b, r, index, routed = time_grid_index(xy, polygons, codes, args.cell_deg)
            build_s.append(b)
            route_s.append(r)
    ours_s = [b + r for b, r in zip(build_s, route_s, strict=True)]
    copies = fresh(polygons)
    started = time.perf_counter()
    shapely.is_valid(copies)
    validate_s = time.perf_counter() - started
    started = time.perf_counter()
    assigned = assign_points(points, polygons, codes)
    assign_s = time.perf_counter() - started
    peak_all = peak_mib()

    best_sjoin, best_ours = min(sjoin_s), min(ours_s)
    fastest = int(np.argmin(ours_s))
    print(f"{'method':<46}{'best s':>9}{'median s':>10}{'vs sjoin':>10}")
    print("-" * 75)
    rows = [
        ('geopandas.sjoin(predicate="within")', sjoin_s),
        ("GridIndex.build + route", ours_s),
        ("  of which build", [build_s[fastest]]),
        ("    of which validity check (validate=True)", [validate_s]),
        ("  of which route", [route_s[fastest]]),
    ]
    for name, values in rows:
        ratio = f"{best_sjoin / min(values):.2f}x" if not name.startswith("  ") else ""
        median = f"{statistics.median(values):.3f}" if len(values) > 1 else ""
        print(f"{name:<46}{min(values):>9.3f}{median:>10}{ratio:>10}")
    print(
        f"{'gis.assign.assign_points (STRtree, once)':<46}{assign_s:>9.3f}{'':>10}"
        f"{best_sjoin / assign_s:>9.2f}x"
    )
    print("-" * 75)
    verdict = "met" if best_sjoin / best_ours >= 5 else "NOT met"
    print(
        f"speed-up of GridIndex over sjoin: {best_sjoin / best_ours:.2f}x (target >= 5x: {verdict})"
    )
    print(
        f"not counted for sjoin: making {len(xy):,} shapely points for its frame, {points_s:.3f} s"
    )
    print(
        f"raster: {index.shape[0]} x {index.shape[1]} cells of {index.cell_deg:.2e} deg, "
        f"{index.crossed_fraction:.1%} crossed by a boundary; "
        f"{len(index.segments.x1):,} distinct boundary segments"
    )

    flags = Counter(routed.flag.tolist())
    print(f"\n{'GridIndex outcome':<46}{'points':>12}")
    print("-" * 58)
    for name in ("inside", "edge_rule", "near_outside", "unrouted"):
        print(f"{name:<46}{flags.get(name, 0):>12,}")
    near = routed.flag == "near_outside"
    if near.any():
        print(f"{'  near_outside distance, max m':<46}{routed.distance_m[near].max():>12.1f}")

    # sjoin's view: points matched 0, 1, 2+ times.
    matches = np.bincount(joined.index.to_numpy(), minlength=len(xy))
    sjoin_grid = np.full(len(xy), -1)
    single = matches == 1
    first = joined.loc[~joined.index.duplicated()]
    sjoin_grid[first.index.to_numpy()] = first["index_right"].to_numpy()
    covered = np.isin(routed.flag, ["inside", "edge_rule"])
    interior = (routed.flag == "inside") & single
    disagree = int(np.count_nonzero(sjoin_grid[interior] != routed.index[interior]))
    within_missed = covered & (matches == 0)
    print(f"\n{'checks':<46}{'points':>12}")
    print("-" * 58)
    print(f"{'interior: sjoin and GridIndex disagree':<46}{disagree:>12,}  (of {interior.sum():,})")
    print(f"{'sjoin within: no grid':<46}{int((matches == 0).sum()):>12,}")
    print(f"{'  of which covered (edge, vertex, outer rim)':<46}{int(within_missed.sum()):>12,}")
    print(f"{'  of which outside every grid':<46}{int(((matches == 0) & ~covered).sum()):>12,}")
    print(f"{'sjoin within: 2+ grids':<46}{int((matches >= 2).sum()):>12,}")
    print(
        f"{'sjoin within: a grid, GridIndex not inside':<46}"
        f"{int((single & (routed.flag != 'inside')).sum()):>12,}"
    )

    # Edge points: how many grids cover each, by brute force, and was the lowest code taken?
    edge = np.flatnonzero(routed.flag == "edge_rule")
    pt, poly = shapely.STRtree(polygons).query(points[edge], predicate="covered_by")
    by_count = Counter(np.bincount(pt, minlength=len(edge)).tolist())
    ours_code = np.where(routed.index >= 0, codes[np.maximum(routed.index, 0)], None)
    assign_disagree = int(np.count_nonzero(ours_code[covered] != assigned[covered]))
    assign_extra = int(np.count_nonzero((assigned != None) & ~covered))  # noqa: E711
    for k in sorted(by_count):
        print(f"{f'edge_rule: covered by {k} grids':<46}{by_count[k]:>12,}")
    print(
        f"{'covered: code differs from assign_points':<46}{assign_disagree:>12,}"
        "  (lowest-code rule)"
    )
    print(f"{'covered by assign_points, not by GridIndex':<46}{assign_extra:>12,}")
    print(f"{'outside: distance error bound':<46}{index.distance_error:>12.4%}")

    print(
        f"\npeak memory (ru_maxrss): {peak_ours:,.0f} MiB after data + first GridIndex run, "
        f"{peak_all:,.0f} MiB for the whole process (target < 2,048 MiB)"
    )


if __name__ == "__main__":
    main()
