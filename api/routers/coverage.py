"""Walking coverage of buildings by stations, and siting of new stations.

`run_coverage` and `run_siting` gather the layers from the store and call the pure core
(`gis.stations`); the routes and the `wangge coverage` / `wangge site` commands share them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.deps import PageDep, SessionDep, SettingsDep
from api.errors import invalid_parameter
from api.geojson import feature_collection, features
from api.routers.stations import _KIND_LIST, resolve_station_kind
from api.settings import Settings
from gis.db import network_repo, repo
from gis.domain import STATION_KINDS
from gis.stations import Coverage, SitingResult, compute_coverage, site_stations, station_isochrones

router = APIRouter(tags=["stations"])


def parse_minutes(text: str) -> tuple[int, ...]:
    """'5,10,15' as (5, 10, 15); 400 naming `minutes` otherwise."""
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise invalid_parameter(
            "minutes", "must be whole minutes separated by commas, e.g. 5,10,15", value=text
        ) from None
    if not values or values[0] <= 0 or values[-1] > 120:
        raise invalid_parameter("minutes", "must be between 1 and 120", value=text)
    return values


def require_kind(kind: str | None) -> str:
    key = resolve_station_kind(kind)
    if key is None:
        raise invalid_parameter("kind", f"is required: one of {_KIND_LIST}")
    return key


def run_coverage(
    session: Session, settings: Settings, kind: str, minutes: tuple[int, ...]
) -> Coverage:
    """Coverage of every stored building by the stations of one kind."""
    buildings, _ = repo.buildings_gdf(session)
    stations, _ = repo.stations_gdf(session, kind=kind)
    graph = network_repo.cached_road_graph(session)
    return compute_coverage(
        graph,
        buildings,
        stations,
        minutes=minutes,
        speed_m_per_min=settings.walk_speed_m_per_min,
        detour_factor=settings.detour_factor,
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    out = frame.replace({np.nan: None}).to_dict("records")
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in out
    ]


@router.get("/coverage", summary="Walking coverage of buildings by a station kind")
def coverage(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    page: PageDep,
    kind: Annotated[str, Query(description=f"station kind: {_KIND_LIST}")],
    minutes: Annotated[
        str, Query(description="life circles in walking minutes, comma-separated")
    ] = "5,10,15",
    isochrones: Annotated[
        bool, Query(description="add walking isochrone polygons per station (for maps)")
    ] = False,
    buildings: Annotated[
        bool, Query(description="add every building's walk to its nearest station")
    ] = False,
) -> dict:
    """Per grid and community, the share of households within each life circle of a
    station of `kind`; the uncovered buildings (beyond the largest circle) as a paged
    GeoJSON FeatureCollection; optionally isochrones and per-building walks."""
    kind_key = require_kind(kind)
    circles = parse_minutes(minutes)
    result = run_coverage(session, settings, kind_key, circles)
    uncovered = result.uncovered.sort_values("code")
    shown = uncovered.iloc[page.offset : page.offset + page.limit]
    body = {
        "kind": kind_key,
        "kind_name": STATION_KINDS[kind_key],
        "minutes": list(circles),
        "walk": {
            "network": result.network,
            "method": result.method,
            "speed_m_per_min": settings.walk_speed_m_per_min,
            "detour_factor": None if result.network else settings.detour_factor,
        },
        "totals": result.totals,
        "communities": _records(result.by_community),
        "grids": _records(result.by_grid),
        "uncovered": feature_collection(
            shown.replace([np.inf], np.nan),
            url=request.url,
            number_matched=len(uncovered),
            limit=page.limit,
            offset=page.offset,
        ),
    }
    if buildings:
        body["buildings"] = _records(
            result.buildings[["code", "walk_m", "walk_min", "station_code"]].replace(
                [np.inf], np.nan
            )
        )
    if isochrones:
        graph = network_repo.cached_road_graph(session)
        if graph is None:
            body["isochrones"] = None
            body["isochrones_note"] = "no street network stored: import one (wangge import roads)"
        else:
            stations, _ = repo.stations_gdf(session, kind=kind_key)
            iso = station_isochrones(
                graph, stations, minutes=circles, speed_m_per_min=settings.walk_speed_m_per_min
            )
            body["isochrones"] = {
                "type": "FeatureCollection",
                "features": features(iso, id_column="station_code"),
            }
    return body


# --------------------------------------------------------------------- siting


class SitingIn(BaseModel):
    kind: str = Field(description=f"station kind: {_KIND_LIST}")
    p: int = Field(ge=1, le=50, description="how many new sites to choose")
    radius_m: float = Field(
        default=800.0, gt=0, description="walking radius a station serves (10 min at 80 m/min)"
    )
    objective: Literal["coverage", "median"] = Field(
        default="coverage",
        description="coverage: most newly covered households (maximal covering); "
        "median: least mean walk (p-median)",
    )
    candidates: Literal["grids", "buildings"] = Field(
        default="grids", description="candidate sites: a point inside each grid, or each building"
    )
    candidate_points: list[tuple[float, float]] | None = Field(
        default=None, description="explicit candidate sites as [lon, lat] pairs (EPSG:4326)"
    )
    community_codes: list[str] | None = Field(
        default=None, description="only these communities' households and candidates"
    )


def _candidates(session: Session, body: SitingIn, buildings: gpd.GeoDataFrame):
    if body.candidate_points:
        pts = shapely.points(np.asarray(body.candidate_points, dtype=float))
        return gpd.GeoDataFrame(
            {"code": [f"site-{i + 1}" for i in range(len(pts))]}, geometry=pts, crs=4326
        )
    if body.candidates == "buildings":
        return gpd.GeoDataFrame(
            {"code": buildings["code"].to_numpy()},
            geometry=shapely.point_on_surface(buildings.geometry.values),
            crs=4326,
        )
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    if body.community_codes:
        grids = grids[grids["parent_code"].isin(body.community_codes)]
    return gpd.GeoDataFrame(
        {"code": grids["code"].to_numpy()},
        geometry=shapely.point_on_surface(grids.geometry.values),
        crs=4326,
    )


def run_siting(
    session: Session, settings: Settings, body: SitingIn
) -> tuple[SitingResult, gpd.GeoDataFrame, bool]:
    """Choose new sites for a kind; returns the result, the candidates and whether a
    street network was used."""
    kind_key = require_kind(body.kind)
    if body.radius_m > settings.max_radius_m:
        raise invalid_parameter(
            "radius_m",
            f"must be ≤ {settings.max_radius_m:g} (metres)",
            location="body",
            value=body.radius_m,
        )
    buildings, _ = repo.buildings_gdf(session)
    if body.community_codes:
        buildings = buildings[buildings["community_code"].isin(body.community_codes)]
    candidates = _candidates(session, body, buildings)
    if len(candidates) > settings.siting_candidates_max:
        raise invalid_parameter(
            "candidates",
            f"{len(candidates)} candidate sites is more than {settings.siting_candidates_max}; "
            "narrow them with community_codes or use grids",
            location="body",
        )
    existing, _ = repo.stations_gdf(session, kind=kind_key)
    graph = network_repo.cached_road_graph(session)
    result = site_stations(
        graph,
        buildings,
        existing,
        candidates,
        radius_m=body.radius_m,
        p=body.p,
        objective=body.objective,
        detour_factor=settings.detour_factor,
    )
    return result, candidates, graph is not None


@router.post("/stations/siting", summary="Choose sites for new stations")
def siting(session: SessionDep, settings: SettingsDep, body: SitingIn) -> dict:
    """Choose up to p new sites for a station kind, existing stations kept fixed: maximal
    covering of households beyond `radius_m`, or p-median of walking distance. Solved
    exactly with PuLP and HiGHS; answers before/after coverage and each site's newly
    covered households."""
    result, candidates, network = run_siting(session, settings, body)
    return siting_body(result, candidates, network, body, settings)


def siting_body(result, candidates, network: bool, body: SitingIn, settings: Settings) -> dict:
    xy = shapely.get_coordinates(candidates.geometry.values)
    sites = []
    for rank, row in enumerate(result.sites.itertuples(index=False), start=1):
        j = int(row.candidate)
        sites.append(
            {
                "rank": rank,
                "candidate": str(candidates["code"].iat[j]),
                "lon": float(xy[j, 0]),
                "lat": float(xy[j, 1]),
                "households_newly_covered": int(row.households_newly_covered),
                "buildings_newly_covered": int(row.buildings_newly_covered),
            }
        )
    return {
        "kind": resolve_station_kind(body.kind),
        "objective": result.objective,
        "p": body.p,
        "radius_m": body.radius_m,
        "candidates": len(candidates),
        "walk": {
            "network": network,
            "method": "street network (shortest path)"
            if network
            else f"straight line x {settings.detour_factor:g} detour factor "
            "(no street network stored)",
        },
        "solver": result.solver,
        "status": result.status,
        "before": result.before,
        "after": result.after,
        "sites": sites,
    }
