"""HTML maps under /maps, and the Leaflet files they load under /maps/static.

Each handler fetches frames from the repositories and hands them to a pure renderer in
`maps.render`; the page loads its JavaScript and CSS from this service only. These maps
are public: no cared-for residents are ever drawn here (role "resident").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import geopandas as gpd
import numpy as np
import pyproj
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.errors import invalid_parameter
from gis.crs import local_metric_crs, parse_crs, point_to_storage
from gis.db import maps_repo, repo
from gis.errors import NotFound, WanggeError
from gis.hours import parse_opening_hours
from maps import render
from maps.assets import STATIC_DIR, render_html
from maps.basemap import parse_basemap

router = APIRouter(prefix="/maps", tags=["maps"])

Lang = Annotated[Literal["zh", "en"], Query(description="labels: zh (default) or en")]
CASES_SHOWN_MAX = 10_000  # newest first; more markers make the page heavy (>5 MB)


def _html(fmap) -> HTMLResponse:
    return HTMLResponse(render_html(fmap))


def _basemap(settings):
    return parse_basemap(settings.tiles)


def coverage_frames(session: Session) -> dict[str, gpd.GeoDataFrame]:
    """The frames the coverage map draws, from the active generation."""
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    stats = maps_repo.grid_stats(session, list(grids["code"]))
    grids = grids.merge(stats, on="code", how="left")
    if not (grids["open_cases"] > 0).any():
        grids = grids.drop(columns="open_cases")  # no cases yet: keep the tooltip short
    communities, _ = repo.areas_gdf(session, gen.id, level="community")
    streets, _ = repo.areas_gdf(session, gen.id, level="street")
    stations, _ = repo.stations_gdf(session)
    return {
        "grids_gdf": grids,
        "communities_gdf": communities,
        "streets_gdf": streets,
        "stations_gdf": stations,
    }


@router.get("/coverage", response_class=HTMLResponse, summary="Coverage map of the district")
def coverage_map(session: SessionDep, settings: SettingsDep, lang: Lang = "zh") -> HTMLResponse:
    """Grids coloured by households as a share of their community mean (the stand-in for
    workload), community and street outlines, stations with their 10-minute radius."""
    frames = coverage_frames(session)
    return _html(render.render_coverage(**frames, lang=lang, basemap=_basemap(settings)))


def worker_area_frames(session: Session, code: str) -> dict:
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid", codes=[code])
    if grids.empty:
        raise NotFound(f"no grid {code!r} in the active generation", code=code)
    grids = grids.merge(maps_repo.grid_stats(session, [code]), on="code", how="left")
    box = tuple(grids.total_bounds)
    neighbours, _ = repo.areas_gdf(session, gen.id, level="grid", bbox=box)
    neighbours = neighbours[neighbours["code"] != code]
    buildings, _ = repo.buildings_gdf(session, grid_code=code)
    pad = 0.005  # ~500 m: stations just outside the grid still serve it
    minx, miny, maxx, maxy = box
    stations, _ = repo.stations_gdf(session, bbox=(minx - pad, miny - pad, maxx + pad, maxy + pad))
    cases = maps_repo.cases_gdf(session, grid_codes=[code], open_only=True, limit=2000)
    return {
        "grids_gdf": grids,
        "buildings_gdf": buildings,
        "neighbours_gdf": neighbours,
        "stations_gdf": stations,
        "cases_gdf": cases,
    }


@router.get("/grids/{code}", response_class=HTMLResponse, summary="Map of one grid")
def grid_map(
    code: str, session: SessionDep, settings: SettingsDep, lang: Lang = "zh"
) -> HTMLResponse:
    """One grid with its buildings, open cases (red: overdue), neighbours and nearby stations."""
    frames = worker_area_frames(session, code)
    fmap = render.render_worker_area(
        **frames,
        role="resident",
        category_names=maps_repo.category_names(session, lang),
        lang=lang,
        basemap=_basemap(settings),
    )
    return _html(fmap)


# Walking estimate without a street network: straight line x detour, 80 m a minute
# (the values gis.stations uses, so both answers agree).
DETOUR_FACTOR = 1.3
WALK_M_PER_MIN = 80.0


def _open_now(text, at: datetime) -> bool | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse_opening_hours(text).is_open(at)
    except WanggeError:
        return None


def nearest_frame(session: Session, lon: float, lat: float, k: int) -> gpd.GeoDataFrame:
    """The k nearest stations with walking minutes (straight-line estimate) and open-now.

    Seam: when the street network and `gis.stations` walking routes are stable, replace
    the estimate with their minutes and add a `route` LineString column; the renderer
    draws routes when that column is present.
    """
    stations, _ = repo.stations_gdf(session)
    if stations.empty:
        raise NotFound("no stations stored")
    to_local = pyproj.Transformer.from_crs(4326, local_metric_crs(lon, lat), always_xy=True)
    x, y = to_local.transform(stations.geometry.x.to_numpy(), stations.geometry.y.to_numpy())
    straight_m = np.hypot(x, y)
    order = np.lexsort((stations["code"].to_numpy(dtype=str), straight_m))[:k]
    chosen = stations.iloc[order].reset_index(drop=True)
    walk_m = straight_m[order] * DETOUR_FACTOR
    chosen["distance_m"] = np.round(walk_m)
    chosen["minutes"] = np.round(walk_m / WALK_M_PER_MIN, 1)
    now = datetime.now(UTC)
    chosen["open_now"] = [_open_now(t, now) for t in chosen["opening_hours"]]
    return chosen


@router.get("/nearest", response_class=HTMLResponse, summary="Nearest stations to a point")
def nearest_map(
    session: SessionDep,
    settings: SettingsDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude")],
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude")],
    crs: Annotated[str, Query(description="wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>")] = (
        "wgs84"
    ),
    k: Annotated[int, Query(ge=1, le=20, description="how many stations")] = 5,
    lang: Lang = "zh",
) -> HTMLResponse:
    """The point, the k nearest stations, walking minutes, and which are open now."""
    x, y = point_to_storage(lon, lat, parse_crs(crs))
    stations = nearest_frame(session, x, y, k)
    return _html(render.render_nearest((x, y), stations, lang=lang, basemap=_basemap(settings)))


def _parse_time(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid_parameter(name, "must be an ISO 8601 date or time", value=text) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/cases", response_class=HTMLResponse, summary="Heat map and clusters of cases")
def cases_map(
    session: SessionDep,
    settings: SettingsDep,
    since: Annotated[
        str | None, Query(description="ISO date/time; default: 30 days before the newest case")
    ] = None,
    until: Annotated[str | None, Query(description="ISO date/time (exclusive)")] = None,
    category: Annotated[
        str | None, Query(description="a class (2 digits) or subclass (4 digits) code")
    ] = None,
    lang: Lang = "zh",
) -> HTMLResponse:
    """Cases reported in a time range as a heat map and clusters, one layer per class."""
    if category is not None and not (category.isdigit() and len(category) in (2, 4)):
        raise invalid_parameter("category", "must be a 2- or 4-digit category code", value=category)
    start, end = _parse_time("since", since), _parse_time("until", until)
    fmap = build_cases_map(session, start, end, category, lang, _basemap(settings))
    return _html(fmap)


def build_cases_map(session: Session, start, end, category, lang, basemap):
    """The cases map for a time range (default: the 30 days up to the newest case)."""
    if start is None:
        newest = maps_repo.latest_case_time(session)
        if newest is not None:
            newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
            start = (end or newest + timedelta(seconds=1)) - timedelta(days=30)
    cases = maps_repo.cases_gdf(
        session, since=start, until=end, category_prefix=category, limit=CASES_SHOWN_MAX
    )
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    names = maps_repo.category_names(session, lang)
    period = (f"{start:%Y-%m-%d}" if start else "…", f"{end:%Y-%m-%d}" if end else "…")
    return render.render_cases(
        cases,
        grids_gdf=grids,
        category_names=names,
        class_names=names,
        period=period,
        lang=lang,
        basemap=basemap,
    )


@router.get("/static/{path:path}", include_in_schema=False)
def static_file(path: str) -> FileResponse:
    """Leaflet and its plugins, vendored in maps/static (see maps/vendor.sh)."""
    target = (STATIC_DIR / path).resolve()
    if STATIC_DIR not in target.parents or not target.is_file():
        raise NotFound(f"no map asset {path!r}")
    return FileResponse(target, headers={"Cache-Control": "public, max-age=86400"})
