"""Hand-drawn street networks and a brute-force walking distance to check gis.network against.

The brute force shares nothing with the code under test: it finds each point's nearest
segment by looping over all of them, splits those segments at the feet, and runs
Floyd-Warshall over every node in plain numpy.

Networks are drawn in metres in a local frame (x east, y north) around ORIGIN and
converted to lon/lat with a transverse Mercator centred there.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyproj
import shapely

ORIGIN = (123.43, 41.80)
_LOCAL = (
    f"+proj=tmerc +lat_0={ORIGIN[1]} +lon_0={ORIGIN[0]} +k=1 +x_0=0 +y_0=0 "
    "+ellps=WGS84 +units=m +no_defs"
)
_TO_LL = pyproj.Transformer.from_crs(_LOCAL, 4326, always_xy=True)
_TO_M = pyproj.Transformer.from_crs(4326, _LOCAL, always_xy=True)

#: Two blocks with a gap and a dead end::
#:
#:     A(0,400) ------ B(300,400) ------ C(600,400)
#:      |               |
#:      |               |                 G(650,200)
#:      |               |                /
#:     D(0,0) ------- E(300,0) ------- F(600,0)
#:
#: C and F are not joined (C is a dead end); G hangs off F.
BLOCKS = [
    [(0, 400), (300, 400), (600, 400)],
    [(0, 0), (300, 0), (600, 0)],
    [(0, 0), (0, 400)],
    [(300, 0), (300, 400)],
    [(600, 0), (650, 200)],
]

#: A straight street with a ladder of rungs::
#:
#:     H(0,100) --- I(100,100) --- J(200,100) --- K(300,100)
#:      |            |              |              |
#:     L(0,0) ----- M(100,0) ------ N(200,0) ----- O(300,0)
LADDER = [
    [(0, 100), (100, 100), (200, 100), (300, 100)],
    [(0, 0), (100, 0), (200, 0), (300, 0)],
    [(0, 0), (0, 100)],
    [(100, 0), (100, 100)],
    [(200, 0), (200, 100)],
    [(300, 0), (300, 100)],
]


def to_lonlat(xy_m) -> np.ndarray:
    xy_m = np.asarray(xy_m, dtype=float).reshape(-1, 2)
    lon, lat = _TO_LL.transform(xy_m[:, 0], xy_m[:, 1])
    return np.column_stack([lon, lat])


def to_metres(lonlat) -> np.ndarray:
    lonlat = np.asarray(lonlat, dtype=float).reshape(-1, 2)
    x, y = _TO_M.transform(lonlat[:, 0], lonlat[:, 1])
    return np.column_stack([x, y])


def lines_gdf(polylines_m) -> gpd.GeoDataFrame:
    geoms = [shapely.LineString(to_lonlat(line)) for line in polylines_m]
    return gpd.GeoDataFrame(
        {"code": [f"R{i}" for i in range(len(geoms))], "name": "路", "kind": "residential"},
        geometry=geoms,
        crs=4326,
    )


def _segments(polylines_m) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for line in polylines_m:
        for a, b in zip(line[:-1], line[1:], strict=True):
            out.append((np.asarray(a, float), np.asarray(b, float)))
    return out


def _foot(p, a, b):
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1))
    q = a + t * ab
    return q, float(np.hypot(*(p - q)))


def brute_walk_m(polylines_m, p_m, q_m) -> float:
    """Walking metres from p to q: straight to the nearest street, along streets, straight off."""
    segs = _segments(polylines_m)
    nodes: list[tuple[float, float]] = []

    def node(xy) -> int:
        key = (round(float(xy[0]), 6), round(float(xy[1]), 6))
        if key not in nodes:
            nodes.append(key)
        return nodes.index(key)

    feet = []
    for point in (np.asarray(p_m, float), np.asarray(q_m, float)):
        best = min(range(len(segs)), key=lambda i: (_foot(point, *segs[i])[1], i))
        foot, access = _foot(point, *segs[best])
        feet.append((best, foot, access))
    edges = []
    for i, (a, b) in enumerate(segs):
        cuts = [a, b] + [f for s, f, _ in feet if s == i]
        cuts.sort(key=lambda c: float(np.dot(c - a, b - a)))
        for u, v in zip(cuts[:-1], cuts[1:], strict=True):
            edges.append((node(u), node(v), float(np.hypot(*(v - u)))))
    n = len(nodes)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0)
    for u, v, w in edges:
        dist[u, v] = min(dist[u, v], w)
        dist[v, u] = min(dist[v, u], w)
    for k in range(n):
        dist = np.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
    (_, fp, ap), (_, fq, aq) = feet
    return ap + float(dist[node(fp), node(fq)]) + aq


# ----------------------------------------------------------- a seeded store

DISTRICT = "210103"
STREET = "210103001"
COMMUNITY = "210103001001"
GRID_W, GRID_E = f"{COMMUNITY}001", f"{COMMUNITY}002"


def _box_ll(x0, y0, x1, y1) -> shapely.Polygon:
    return shapely.Polygon(to_lonlat([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]))


def seed_blocks_district(
    sessions, stations: list[dict], buildings: list[dict] | None = None, network=BLOCKS
) -> None:
    """The BLOCKS network's district: one street, one community, grids west and east of
    x = 300 m; `stations` and `buildings` carry x_m, y_m in the local frame. `network`
    None stores no street network."""
    from gis.db import network_repo, repo
    from gis.network import build_road_graph

    outline = (-200, -200, 800, 600)
    areas = gpd.GeoDataFrame(
        [
            {"code": DISTRICT, "name": "示范区", "level": "district", "parent_code": None,
             "geometry": _box_ll(*outline)},
            {"code": STREET, "name": "街道", "level": "street", "parent_code": DISTRICT,
             "geometry": _box_ll(*outline)},
            {"code": COMMUNITY, "name": "社区", "level": "community", "parent_code": STREET,
             "geometry": _box_ll(*outline)},
            {"code": GRID_W, "name": "西网格", "level": "grid", "parent_code": COMMUNITY,
             "geometry": _box_ll(-200, -200, 300, 600)},
            {"code": GRID_E, "name": "东网格", "level": "grid", "parent_code": COMMUNITY,
             "geometry": _box_ll(300, -200, 800, 600)},
        ],
        geometry="geometry",
        crs=4326,
    )  # fmt: skip
    with sessions() as s, s.begin():
        repo.seed_categories(s)
        gen = repo.create_generation(s, "initial")
        repo.write_areas(s, areas, gen)
        repo.activate_generation(s, gen)
        st = gpd.GeoDataFrame(
            [{k: v for k, v in row.items() if k not in ("x_m", "y_m")} for row in stations],
            geometry=shapely.points(to_lonlat([(r["x_m"], r["y_m"]) for r in stations])),
            crs=4326,
        )
        repo.write_stations(s, st)
        if buildings:
            b = gpd.GeoDataFrame(
                [{k: v for k, v in row.items() if k not in ("x_m", "y_m")} for row in buildings],
                geometry=shapely.points(to_lonlat([(r["x_m"], r["y_m"]) for r in buildings])),
                crs=4326,
            )
            repo.write_buildings(s, b)
        if network is not None:
            network_repo.write_road_network(s, build_road_graph(lines_gdf(network)))
