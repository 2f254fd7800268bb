"""Stations for residents and planners: nearest (straight and on foot), open now, coverage
of every building by walking life circles, isochrones, and siting of new stations.

Pure: GeoDataFrames in EPSG:4326 are checked once at the edge and projected to a local
metric CRS; the numeric work runs on arrays (shapely STRtree, scipy csgraph) and the
siting models go to PuLP with the HiGHS solver (CBC, bundled with PuLP, if HiGHS is
missing). Without a street network, walking distance is the straight line times a
detour factor, and results say so (`network=False`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import geopandas as gpd
import numpy as np
import pandas as pd
import pulp
import pyproj
import scipy.sparse as sp
import shapely
from scipy.spatial import cKDTree

from gis.crs import local_metric_crs
from gis.errors import CRSMismatch, InvalidInput
from gis.hours import OpeningHours, parse_opening_hours
from gis.network import (
    RoadGraph,
    isochrone_polygon,
    nearest_source_distances,
    pair_distances_within,
    snap_points,
)

WALK_SPEED_M_PER_MIN = 80.0
DETOUR_FACTOR = 1.3
LIFE_CIRCLE_MIN = (5, 10, 15)  # GB 50180-2018 life circles


# --------------------------------------------------------------------- checks


def _check_frames(*frames: gpd.GeoDataFrame) -> None:
    """Every frame in EPSG:4326 (raises CRSMismatch naming what was found)."""
    for frame in frames:
        if frame.crs is None or not frame.crs.equals(4326):
            raise CRSMismatch(
                f"expected EPSG:4326 coordinates, found {frame.crs or 'no CRS'}",
                expected="EPSG:4326",
                found=str(frame.crs),
            )


def _points_of(frame: gpd.GeoDataFrame) -> np.ndarray:
    """Representative lon/lat of each feature (the point itself, or a point inside)."""
    geoms = np.asarray(frame.geometry.values, dtype=object)
    if len(geoms) == 0:
        return np.zeros((0, 2))
    pts = np.where(shapely.get_type_id(geoms) == 0, geoms, shapely.point_on_surface(geoms))
    return shapely.get_coordinates(pts)


@dataclass
class _Metric:
    """A local metric frame (the graph's, or one centred on the data)."""

    transformer: pyproj.Transformer

    @classmethod
    def around(cls, graph: RoadGraph | None, lonlat: np.ndarray) -> _Metric:
        if graph is not None:
            crs = pyproj.CRS.from_proj4(graph.crs)
        else:
            lon0, lat0 = (lonlat.min(axis=0) + lonlat.max(axis=0)) / 2
            crs = local_metric_crs(float(lon0), float(lat0))
        return cls(pyproj.Transformer.from_crs(4326, crs, always_xy=True))

    def xy(self, lonlat: np.ndarray) -> np.ndarray:
        lonlat = np.asarray(lonlat, dtype=float).reshape(-1, 2)
        x, y = self.transformer.transform(lonlat[:, 0], lonlat[:, 1])
        return np.column_stack([x, y])


# -------------------------------------------------------------------- nearest


def nearest_straight(
    query_xy_m: np.ndarray, station_xy_m: np.ndarray, k: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and metres of the k nearest stations of each query point, shapes (n, k).

    k = 1 is `STRtree.query_nearest` itself (ties: the lowest station index); k > 1 uses a
    k-d tree, which answers k neighbours exactly in one call. Both work in a metric CRS.
    """
    query_xy_m = np.asarray(query_xy_m, dtype=float).reshape(-1, 2)
    station_xy_m = np.asarray(station_xy_m, dtype=float).reshape(-1, 2)
    if not np.isfinite(query_xy_m).all() or not np.isfinite(station_xy_m).all():
        raise InvalidInput("coordinates must be finite numbers")
    n = len(query_xy_m)
    k = min(int(k), len(station_xy_m))
    if k <= 0 or n == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0))
    if k == 1:
        tree = shapely.STRtree(shapely.points(station_xy_m))
        pairs, dist = tree.query_nearest(
            shapely.points(query_xy_m), all_matches=False, return_distance=True
        )
        idx = np.empty(n, dtype=np.int64)
        out = np.empty(n)
        idx[pairs[0]] = pairs[1]
        out[pairs[0]] = dist
        return idx[:, None], out[:, None]
    dist, idx = cKDTree(station_xy_m).query(query_xy_m, k=k)
    return idx.astype(np.int64), dist


def nearest_straight_gdf(
    points_gdf: gpd.GeoDataFrame, stations_gdf: gpd.GeoDataFrame, k: int = 1
) -> pd.DataFrame:
    """For each point, its k nearest stations by straight line: rank, station code, metres."""
    _check_frames(points_gdf, stations_gdf)
    q, s = _points_of(points_gdf), _points_of(stations_gdf)
    metric = _Metric.around(None, np.vstack([q, s]) if len(s) else q)
    idx, dist = nearest_straight(metric.xy(q), metric.xy(s), k)
    kk = idx.shape[1]
    return pd.DataFrame(
        {
            "point": np.repeat(points_gdf.index.to_numpy(), kk),
            "rank": np.tile(np.arange(1, kk + 1), len(q)),
            "station_code": stations_gdf["code"].to_numpy()[idx.reshape(-1)],
            "straight_m": dist.reshape(-1),
        }
    )


@lru_cache(maxsize=4096)
def _hours(text: str) -> OpeningHours:
    return parse_opening_hours(text)


def open_at(opening_hours: Sequence[str | None], at: datetime) -> list[bool | None]:
    """Whether each station is open at `at`; None when its hours are missing or unreadable."""
    out: list[bool | None] = []
    for text in opening_hours:
        if not isinstance(text, str) or not text.strip():
            out.append(None)
            continue
        try:
            out.append(_hours(text).is_open(at))
        except InvalidInput:
            out.append(None)
    return out


def walk_minutes(walk_m: np.ndarray | float, speed_m_per_min: float = WALK_SPEED_M_PER_MIN):
    return np.asarray(walk_m, dtype=float) / speed_m_per_min


_GEOD = pyproj.Geod(ellps="WGS84")


def geodesic_m(lon: float, lat: float, lonlat: np.ndarray) -> np.ndarray:
    """Metres on the WGS84 ellipsoid from one point to many (n, 2) lon/lat points."""
    lonlat = np.asarray(lonlat, dtype=float).reshape(-1, 2)
    if len(lonlat) == 0:
        return np.zeros(0)
    n = len(lonlat)
    _, _, d = _GEOD.inv(np.full(n, lon), np.full(n, lat), lonlat[:, 0], lonlat[:, 1])
    return np.asarray(d, dtype=float)


class WalkFrom:
    """Walks from one point: on the street network with one bounded Dijkstra (reused for
    every station asked about), or, without a network, the straight line times the
    detour factor. `network` and `method` say which, for the response."""

    def __init__(
        self,
        graph: RoadGraph | None,
        point_lonlat: tuple[float, float],
        *,
        limit_m: float,
        detour_factor: float = DETOUR_FACTOR,
    ) -> None:
        from gis.network import search_from_point

        self.graph = graph
        self.lon, self.lat = (float(v) for v in point_lonlat)
        self.detour_factor = detour_factor
        self.network = graph is not None
        if graph is None:
            self.method = (
                f"straight line x {detour_factor:g} detour factor (no street network stored)"
            )
            self._search = None
        else:
            self.method = "street network (shortest path)"
            origin = snap_points(graph, graph.to_metric(np.array([[self.lon, self.lat]])))
            self._search = search_from_point(graph, origin, limit_m)

    def distances_m(self, lonlat: np.ndarray) -> np.ndarray:
        """Walking metres to each (n, 2) lon/lat point; inf beyond the search bound."""
        lonlat = np.asarray(lonlat, dtype=float).reshape(-1, 2)
        if self._search is None:
            return geodesic_m(self.lon, self.lat, lonlat) * self.detour_factor
        if len(lonlat) == 0:
            return np.zeros(0)
        return self._search.distances_to(snap_points(self.graph, self.graph.to_metric(lonlat)))

    def path_lonlat(self, lon: float, lat: float) -> np.ndarray:
        """The walk to one point as lon/lat vertices (a straight pair without a network)."""
        if self._search is None:
            return np.array([[self.lon, self.lat], [lon, lat]])
        target = snap_points(self.graph, self.graph.to_metric(np.array([[lon, lat]])))
        return self.graph.to_lonlat(self._search.path_to(target, 0))


# ------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    """Per building: walk to the nearest station; per grid and community: household shares
    within each life circle; the buildings no circle reaches."""

    buildings: gpd.GeoDataFrame  # code, households, grid/community, walk_m, walk_min, station
    by_grid: pd.DataFrame
    by_community: pd.DataFrame
    minutes: tuple[int, ...]
    network: bool
    method: str
    totals: dict = field(default_factory=dict)

    @property
    def uncovered(self) -> gpd.GeoDataFrame:
        limit = max(self.minutes)
        return self.buildings[~(self.buildings["walk_min"] <= limit)]


def nearest_walk_distances(
    graph: RoadGraph | None,
    target_lonlat: np.ndarray,
    station_lonlat: np.ndarray,
    *,
    limit_m: float = np.inf,
    detour_factor: float = DETOUR_FACTOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Walking metres from each target to its nearest station, and that station's index.

    Network: one multi-source Dijkstra from all stations. No network: nearest straight
    line times the detour factor.
    """
    target_lonlat = np.asarray(target_lonlat, dtype=float).reshape(-1, 2)
    station_lonlat = np.asarray(station_lonlat, dtype=float).reshape(-1, 2)
    n = len(target_lonlat)
    if len(station_lonlat) == 0 or n == 0:
        return np.full(n, np.inf), np.full(n, -1)
    if graph is None:
        metric = _Metric.around(None, np.vstack([target_lonlat, station_lonlat]))
        idx, dist = nearest_straight(metric.xy(target_lonlat), metric.xy(station_lonlat), 1)
        d = dist[:, 0] * detour_factor
        src = np.where(d <= limit_m, idx[:, 0], -1)
        return np.where(src >= 0, d, np.inf), src
    sources = snap_points(graph, graph.to_metric(station_lonlat))
    targets = snap_points(graph, graph.to_metric(target_lonlat))
    return nearest_source_distances(graph, sources, targets, limit_m)


def _shares(frame: pd.DataFrame, key: str, minutes: tuple[int, ...]) -> pd.DataFrame:
    hh = frame["households"].astype(float)
    cols = {"households": hh}
    for m in minutes:
        cols[f"households_{m}min"] = hh.where(frame["walk_min"] <= m, 0.0)
    grouped = pd.DataFrame(cols).groupby(frame[key].fillna("(none)")).sum()
    for m in minutes:
        total = grouped["households"].replace(0, np.nan)
        grouped[f"share_{m}min"] = grouped[f"households_{m}min"] / total
    grouped["buildings"] = frame.groupby(frame[key].fillna("(none)")).size()
    return grouped.reset_index(names=key)


def compute_coverage(
    graph: RoadGraph | None,
    buildings_gdf: gpd.GeoDataFrame,
    stations_gdf: gpd.GeoDataFrame,
    *,
    minutes: Sequence[int] = LIFE_CIRCLE_MIN,
    speed_m_per_min: float = WALK_SPEED_M_PER_MIN,
    detour_factor: float = DETOUR_FACTOR,
) -> Coverage:
    """Walking coverage of every building by the given stations (one search per call)."""
    _check_frames(buildings_gdf, stations_gdf)
    minutes = tuple(sorted({int(m) for m in minutes}))
    if not minutes or minutes[0] <= 0:
        raise InvalidInput("minutes must be positive whole numbers", field="minutes")
    b_ll, s_ll = _points_of(buildings_gdf), _points_of(stations_gdf)
    d, src = nearest_walk_distances(graph, b_ll, s_ll, detour_factor=detour_factor)
    out = gpd.GeoDataFrame(
        {
            "code": buildings_gdf["code"].to_numpy(),
            "households": buildings_gdf["households"].fillna(0).astype(int).to_numpy(),
            "grid_code": buildings_gdf.get(
                "grid_code", pd.Series(None, index=buildings_gdf.index)
            ).to_numpy(),
            "community_code": buildings_gdf.get(
                "community_code", pd.Series(None, index=buildings_gdf.index)
            ).to_numpy(),
            "walk_m": d,
            "walk_min": d / speed_m_per_min,
            "station_code": np.where(
                src >= 0, stations_gdf["code"].to_numpy(dtype=object)[np.maximum(src, 0)], None
            )
            if len(s_ll)
            else None,
        },
        geometry=buildings_gdf.geometry.values,
        crs=4326,
    )
    method = (
        "street network (multi-source shortest path)"
        if graph is not None
        else f"straight line x {detour_factor:g} detour factor (no street network stored)"
    )
    hh_total = float(out["households"].sum())
    totals = {
        "buildings": len(out),
        "households": int(hh_total),
        **{
            f"share_{m}min": (float(out.loc[out["walk_min"] <= m, "households"].sum()) / hh_total)
            if hh_total
            else None
            for m in minutes
        },
    }
    return Coverage(
        out,
        _shares(out, "grid_code", minutes),
        _shares(out, "community_code", minutes),
        minutes,
        graph is not None,
        method,
        totals,
    )


def station_isochrones(
    graph: RoadGraph,
    stations_gdf: gpd.GeoDataFrame,
    *,
    minutes: Sequence[int] = LIFE_CIRCLE_MIN,
    speed_m_per_min: float = WALK_SPEED_M_PER_MIN,
    buffer_m: float = 40.0,
) -> gpd.GeoDataFrame:
    """Walking isochrone polygons per station and life circle (see `isochrone_polygon`)."""
    _check_frames(stations_gdf)
    s_ll = _points_of(stations_gdf)
    snaps = snap_points(graph, graph.to_metric(s_ll)) if len(s_ll) else None
    rows = []
    for i, code in enumerate(stations_gdf["code"]):
        for m in sorted({int(m) for m in minutes}):
            poly = isochrone_polygon(graph, snaps.take([i]), m * speed_m_per_min, buffer_m)
            ring = shapely.transform(poly, lambda xy: graph.to_lonlat(xy))
            rows.append({"station_code": code, "minutes": m, "geometry": ring})
    return (
        gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
        if rows
        else gpd.GeoDataFrame({"station_code": [], "minutes": []}, geometry=[], crs=4326)
    )


# --------------------------------------------------------------------- siting


@dataclass
class SitingResult:
    """Chosen candidate indices, before/after figures and each site's new households."""

    chosen: list[int]
    objective: str
    before: dict
    after: dict
    sites: pd.DataFrame  # candidate, households_newly_covered, buildings_newly_covered
    solver: str
    status: str


def _solver() -> tuple[pulp.LpSolver, str]:
    available = pulp.listSolvers(onlyAvailable=True)
    if "HiGHS" in available:
        return pulp.HiGHS(msg=False), "HiGHS"
    return pulp.PULP_CBC_CMD(msg=False), "CBC"


def solve_max_covering(
    cover: sp.csr_matrix, weights: np.ndarray, p: int
) -> tuple[list[int], str, str]:
    """Choose at most p of the candidate rows of `cover` (candidates x demand, True where a
    candidate covers a demand point) to cover the most demand weight. Returns the rows."""
    cover = sp.csr_matrix(cover, dtype=bool)
    n_c, n_d = cover.shape
    useful_d = np.flatnonzero(np.asarray(cover.sum(axis=0)).ravel() > 0)
    useful_d = useful_d[np.asarray(weights)[useful_d] > 0]
    if p <= 0 or n_c == 0 or len(useful_d) == 0:
        return [], "no demand a candidate can reach", "none"
    prob = pulp.LpProblem("max_covering", pulp.LpMaximize)
    y = [prob.add_variable(f"y{j}", cat="Binary") for j in range(n_c)]
    z = {i: prob.add_variable(f"z{i}", 0, 1) for i in useful_d}
    prob += pulp.lpSum(float(weights[i]) * z[i] for i in useful_d)
    by_demand = cover.tocsc()
    for i in useful_d:
        js = by_demand.indices[by_demand.indptr[i] : by_demand.indptr[i + 1]]
        prob += z[i] <= pulp.lpSum(y[j] for j in js)
    prob += pulp.lpSum(y) <= p
    solver, name = _solver()
    prob.solve(solver)
    chosen = [j for j in range(n_c) if (y[j].value() or 0) > 0.5]
    return chosen, pulp.LpStatus[prob.status], name


def solve_p_median(
    dist: sp.csr_matrix, base_m: np.ndarray, weights: np.ndarray, p: int
) -> tuple[list[int], str, str]:
    """Choose at most p candidates minimising the weighted walk of every demand point to its
    nearest station, existing ones included: demand i walks `base_m[i]` unless a chosen
    candidate j is closer (`dist[j, i]`, stored pairs only)."""
    dist = sp.coo_matrix(dist)
    j_arr, i_arr, d = dist.row, dist.col, dist.data
    gain = (base_m[i_arr] - d) * np.asarray(weights, dtype=float)[i_arr]
    keep = gain > 0
    j_arr, i_arr, gain = j_arr[keep], i_arr[keep], gain[keep]
    n_c = dist.shape[0]
    if p <= 0 or len(gain) == 0:
        return [], "no candidate shortens any walk", "none"
    prob = pulp.LpProblem("p_median", pulp.LpMaximize)
    y = [prob.add_variable(f"y{j}", cat="Binary") for j in range(n_c)]
    x = [prob.add_variable(f"x{k}", 0, 1) for k in range(len(gain))]
    # Maximising the saving against the existing walk is the p-median objective up to a
    # constant, and only pairs that save anything need a variable.
    prob += pulp.lpSum(float(g) * xk for g, xk in zip(gain, x, strict=True))
    frame = pd.DataFrame({"i": i_arr, "j": j_arr, "k": np.arange(len(gain))})
    for _i, grp in frame.groupby("i"):
        prob += pulp.lpSum(x[k] for k in grp["k"]) <= 1
    for k, j in enumerate(j_arr):
        prob += x[k] <= y[int(j)]
    prob += pulp.lpSum(y) <= p
    solver, name = _solver()
    prob.solve(solver)
    chosen = [j for j in range(n_c) if (y[j].value() or 0) > 0.5]
    return chosen, pulp.LpStatus[prob.status], name


def _summary(walk_m: np.ndarray, hh: np.ndarray, radius_m: float) -> dict:
    total = float(hh.sum())
    covered = float(hh[walk_m <= radius_m].sum())
    finite = np.isfinite(walk_m) & (hh > 0)
    mean = float((walk_m[finite] * hh[finite]).sum() / hh[finite].sum()) if finite.any() else None
    return {
        "households": int(total),
        "households_covered": int(covered),
        "share_covered": covered / total if total else None,
        "mean_walk_m": mean,
        "households_unreached": int(hh[~np.isfinite(walk_m)].sum()),
    }


def site_stations(
    graph: RoadGraph | None,
    buildings_gdf: gpd.GeoDataFrame,
    existing_gdf: gpd.GeoDataFrame,
    candidates_gdf: gpd.GeoDataFrame,
    *,
    radius_m: float,
    p: int,
    objective: str = "coverage",
    detour_factor: float = DETOUR_FACTOR,
    reach_m: float | None = None,
) -> SitingResult:
    """Choose up to p new sites among candidates, existing stations kept fixed.

    objective "coverage": maximal covering of households not yet within `radius_m`.
    objective "median": p-median, the least household-weighted mean walk; a candidate
    serves households within `reach_m` (default 2 x radius) and walks beyond every station
    count as `reach_m`, which keeps the model sparse on a city.
    """
    if objective not in ("coverage", "median"):
        raise InvalidInput("objective must be coverage or median", field="objective")
    _check_frames(buildings_gdf, existing_gdf, candidates_gdf)
    hh = buildings_gdf["households"].fillna(0).astype(float).to_numpy()
    b_ll = _points_of(buildings_gdf)
    e_ll = _points_of(existing_gdf)
    c_ll = _points_of(candidates_gdf)
    reach = float(reach_m or 2 * radius_m)
    limit = max(reach, radius_m)
    base_m, _ = nearest_walk_distances(graph, b_ll, e_ll, detour_factor=detour_factor)
    dist = _candidate_distances(graph, c_ll, b_ll, limit, detour_factor)
    if objective == "coverage":
        uncovered = ~(base_m <= radius_m)
        cover = dist.tocsr(copy=True)
        cover.data = ((cover.data <= radius_m + 1e-9) & uncovered[cover.indices]).astype(float)
        cover.eliminate_zeros()
        chosen, status, solver = solve_max_covering(cover, hh * uncovered, p)
    else:
        capped = np.minimum(base_m, reach)
        chosen, status, solver = solve_p_median(dist, capped, hh, p)
    after_m = base_m.copy()
    site_of = np.full(len(hh), -1)
    if chosen:
        sub = dist[chosen].toarray()
        sub[sub == 0] = np.inf  # absent pairs
        best = sub.min(axis=0)
        closer = best < after_m
        after_m[closer] = best[closer]
        site_of[closer] = np.asarray(chosen)[np.argmin(sub, axis=0)[closer]]
    newly = ~(base_m <= radius_m) & (after_m <= radius_m)
    sites = pd.DataFrame(
        {
            "candidate": chosen,
            "households_newly_covered": [int(hh[newly & (site_of == j)].sum()) for j in chosen],
            "buildings_newly_covered": [int((newly & (site_of == j)).sum()) for j in chosen],
        }
    )
    return SitingResult(
        chosen,
        objective,
        _summary(base_m, hh, radius_m),
        _summary(after_m, hh, radius_m),
        sites,
        solver,
        status,
    )


def _candidate_distances(
    graph: RoadGraph | None,
    cand_lonlat: np.ndarray,
    target_lonlat: np.ndarray,
    limit_m: float,
    detour_factor: float,
) -> sp.csr_matrix:
    """Sparse candidates x targets walking metres within `limit_m` (values + 1e-9)."""
    if len(cand_lonlat) == 0 or len(target_lonlat) == 0:
        return sp.csr_matrix((len(cand_lonlat), len(target_lonlat)))
    if graph is not None:
        c = snap_points(graph, graph.to_metric(cand_lonlat))
        t = snap_points(graph, graph.to_metric(target_lonlat))
        return pair_distances_within(graph, c, t, limit_m)
    metric = _Metric.around(None, np.vstack([cand_lonlat, target_lonlat]))
    cxy, txy = metric.xy(cand_lonlat), metric.xy(target_lonlat)
    pairs = cKDTree(cxy).query_ball_point(txy, r=limit_m / detour_factor)
    rows, cols = [], []
    for j, found in enumerate(pairs):
        rows += found
        cols += [j] * len(found)
    rows_a, cols_a = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    d = np.hypot(*(cxy[rows_a] - txy[cols_a]).T) * detour_factor + 1e-9
    return sp.csr_matrix((d, (rows_a, cols_a)), shape=(len(cxy), len(txy)))


def brute_force_covering(cover: np.ndarray, weights: np.ndarray, p: int) -> float:
    """The best covered weight over every set of at most p candidates (tests, tiny cases)."""
    cover = np.asarray(cover, dtype=bool)
    best = 0.0
    for r in range(0, min(p, cover.shape[0]) + 1):
        for combo in itertools.combinations(range(cover.shape[0]), r):
            got = cover[list(combo)].any(axis=0) if combo else np.zeros(cover.shape[1], bool)
            best = max(best, float(np.asarray(weights)[got].sum()))
    return best
