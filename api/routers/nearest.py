"""The nearest stations to a resident: straight line or on foot, and open now or not.

Registered before the stations router so `/stations/nearest` is never read as a
station code by a `/stations/{code}` route.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.deps import SessionDep, SettingsDep
from api.errors import invalid_parameter
from api.routers.stations import _KIND_LIST, resolve_station_kind
from api.settings import Settings
from gis.crs import parse_crs, point_to_storage
from gis.db import network_repo
from gis.domain import STATION_KINDS
from gis.errors import NotFound
from gis.hours import LOCAL_TZ
from gis.stations import WalkFrom, open_at

router = APIRouter(prefix="/stations", tags=["stations"])

# How stale the per-process view of the network version and the active generation may
# be (seconds): one less store round trip per request; a new import shows up this late.
CACHE_CHECK_S = 2.0


def _check_limits(settings, k: int, radius_m: float | None) -> float:
    """k and radius against the server's limits (400 naming the parameter)."""
    if k > settings.nearest_k_max:
        raise invalid_parameter("k", f"must be ≤ {settings.nearest_k_max}", value=k)
    if radius_m is None:
        return settings.max_radius_m
    if radius_m > settings.max_radius_m:
        raise invalid_parameter(
            "radius_m", f"must be ≤ {settings.max_radius_m:g} (metres)", value=radius_m
        )
    return radius_m


def check_inside_district(session, lon: float, lat: float, max_m: float) -> float | None:
    """404 with the distance when a point lies farther than `max_m` outside the district."""
    away_m = network_repo.distance_to_district_m(session, lon, lat, max_age_s=CACHE_CHECK_S)
    if away_m is not None and away_m > max_m:
        raise NotFound(
            f"the point ({lon:.6f}, {lat:.6f}) is {away_m:,.0f} m outside the district; "
            f"stations are searched within {max_m:,.0f} m of it",
            distance_to_district_m=round(away_m, 1),
        )
    return away_m


@router.get("/nearest", summary="Nearest stations to a point, on foot or straight")
def nearest_stations(
    session: SessionDep,
    settings: SettingsDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude of the resident")],
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude of the resident")],
    kind: Annotated[
        str | None, Query(description=f"station kind, by key or Chinese name: {_KIND_LIST}")
    ] = None,
    k: Annotated[
        int, Query(ge=1, description="how many stations (at most the server's k max)")
    ] = 3,
    mode: Annotated[
        Literal["walk", "straight"],
        Query(description="rank by walking distance on the street network, or straight line"),
    ] = "walk",
    open_now: Annotated[
        bool, Query(description="keep only stations open at `at` (stations without hours drop)")
    ] = False,
    at: Annotated[
        datetime | None,
        Query(description="when 'open' is judged (ISO 8601; no zone = Asia/Shanghai); default now"),
    ] = None,
    radius_m: Annotated[
        float | None,
        Query(gt=0, description="search radius in metres (walking in walk mode); default max"),
    ] = None,
    crs: Annotated[
        str, Query(description="coordinates of lon/lat: wgs84, cgcs2000, gcj02, bd09, EPSG:nnnn")
    ] = "wgs84",
) -> JSONResponse:
    """The k nearest stations (of a kind) with straight-line and walking metres, walking
    minutes, the walk as a GeoJSON LineString, and whether each is open at `at`.

    Opening hours use the OSM subset documented in `gis.hours` (e.g. `Mo-Fr 08:30-17:30;
    Sa 09:00-12:00`, `Th-Sa 18:00-02:00` runs past midnight). Without a stored street
    network, walking metres are the straight line times the detour factor and `walk.network`
    is false."""
    body = find_nearest(
        session, settings, lon=lon, lat=lat, kind=kind, k=k, mode=mode,
        open_now=open_now, at=at, radius_m=radius_m, crs=crs,
    )  # fmt: skip
    # Already plain JSON types: answer directly rather than through jsonable_encoder.
    return JSONResponse(body)


def find_nearest(
    session,
    settings: Settings,
    *,
    lon: float,
    lat: float,
    kind: str | None,
    k: int,
    mode: str,
    open_now: bool,
    at: datetime | None,
    radius_m: float | None,
    crs: str,
) -> dict:
    """The body of GET /stations/nearest (see the route's description)."""
    radius = _check_limits(settings, k, radius_m)
    kind_key = resolve_station_kind(kind)
    x, y = point_to_storage(lon, lat, parse_crs(crs))
    away_m = check_inside_district(session, x, y, settings.max_radius_m)
    when = at or datetime.now(LOCAL_TZ)
    # Walking metres are reported in both modes; `mode` only decides the ranking.
    graph = network_repo.cached_road_graph(session, max_age_s=CACHE_CHECK_S)

    def walk_from(limit_m: float) -> WalkFrom:
        return WalkFrom(graph, (x, y), limit_m=limit_m, detour_factor=settings.detour_factor)

    # Fetch straight-line candidates from the spatial index and widen until the k best
    # are certain: a station not fetched is at least `bound_m` away in a straight line,
    # and walking is never shorter than the straight line. Plain arrays, no pandas:
    # this is the online path.
    n = max(4 * k, 16)
    walk: WalkFrom | None = None
    reach_m = radius
    cand = network_repo.nearest_station_candidates(
        session, x, y, kind=kind_key, n=n, radius_m=radius
    )
    while True:
        if walk is None:
            if mode == "walk" and graph is not None and len(cand.straight_m):
                # Search on foot only as far as the k-th candidate's straight line times
                # two first; stations beyond the reach come back unreached, and the reach
                # doubles when fewer than k are reached.
                kth_m = float(cand.straight_m[min(k, len(cand.straight_m)) - 1])
                reach_m = min(radius, max(2.0 * kth_m, 600.0))
            walk = walk_from(reach_m)
        is_open = open_at([r["opening_hours"] for r in cand.rows], when)
        walk_m = walk.distances_m(cand.lonlat)
        rank_m = walk_m if mode == "walk" else cand.straight_m
        keep = rank_m <= radius
        if open_now:
            keep &= np.array([v is True for v in is_open], dtype=bool)
        idx = np.flatnonzero(keep)
        # Candidates come sorted by (straight_m, code), so a stable sort breaks ties so.
        idx = idx[np.argsort(rank_m[idx], kind="stable")][:k]
        if len(idx) < k and reach_m < radius:
            reach_m = min(radius, 2 * reach_m)
            walk = walk_from(reach_m)
            continue
        certain = len(idx) == k and float(rank_m[idx[-1]]) <= cand.bound_m
        if not np.isfinite(cand.bound_m) or certain:
            break
        n *= 4
        cand = network_repo.nearest_station_candidates(
            session, x, y, kind=kind_key, n=n, radius_m=radius
        )

    speed = settings.walk_speed_m_per_min
    features = []
    for rank, i in enumerate(idx, start=1):
        row = cand.rows[i]
        lon_i, lat_i = (float(v) for v in cand.lonlat[i])
        path = walk.path_lonlat(lon_i, lat_i) if mode == "walk" else None
        reached = bool(np.isfinite(walk_m[i]))  # False: beyond the radius on foot
        features.append(
            {
                "type": "Feature",
                "id": row["code"],
                "geometry": {"type": "Point", "coordinates": [lon_i, lat_i]},
                "properties": {
                    "rank": rank,
                    "code": row["code"],
                    "name": row["name"],
                    "kind": row["kind"],
                    "kind_name": STATION_KINDS.get(row["kind"]),
                    "address": row["address"],
                    "phone": row["phone"],
                    "opening_hours": row["opening_hours"],
                    "open": is_open[i],
                    "straight_m": round(float(cand.straight_m[i]), 1),
                    "walk_m": round(float(walk_m[i]), 1) if reached else None,
                    "walk_min": round(float(walk_m[i]) / speed, 1) if reached else None,
                    "path": {"type": "LineString", "coordinates": np.round(path, 7).tolist()}
                    if path is not None
                    else None,
                },
            }
        )
    body = {
        "type": "FeatureCollection",
        "features": features,
        "numberReturned": len(features),
        "query": {
            "lon": x,
            "lat": y,
            "crs": crs,
            "kind": kind_key,
            "k": k,
            "mode": mode,
            "radius_m": radius,
            "open_now": open_now,
            "at": when.isoformat(),
            "distance_to_district_m": None if away_m is None else round(away_m, 1),
        },
        "walk": {
            "network": walk.network,
            "method": walk.method,
            "speed_m_per_min": settings.walk_speed_m_per_min,
            "detour_factor": None if walk.network else settings.detour_factor,
        },
    }
    return body
