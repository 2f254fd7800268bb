"""HTML maps under /maps, the layers they fetch, and the Leaflet files they load under
/maps/static.

Each handler fetches frames from the repositories and hands them to a pure renderer in
`maps.render`; the page loads its JavaScript, CSS and any large layer from this service
only. Layers too large to inline (a city's isochrones, uncovered buildings, a month of
cases) are GeoJSON the page fetches from its own route with `?layer=...` (a relative
URL): a map's data is then guarded by exactly the access rule of the map. Cared-for
residents appear only on a grid map opened by someone `maps.render.may_see_cared_for`
allows (a worker of that grid, a dispatcher, an admin).
"""

from __future__ import annotations

import gzip
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import urlencode

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from sqlalchemy.orm import Session

from api.deps import ActorDep, SessionDep, SettingsDep
from api.errors import invalid_parameter
from api.routers.nearest import find_nearest
from api.routers.stations import _KIND_LIST, resolve_station_kind
from api.settings import Settings
from gis.cases import Actor
from gis.db import maps_repo, network_repo, repo
from gis.db.models import Building, CaredResident
from gis.errors import NotFound
from gis.stations import compute_coverage, station_isochrones
from maps import render
from maps.assets import STATIC_DIR, render_html
from maps.basemap import parse_basemap

router = APIRouter(prefix="/maps", tags=["maps"])

Lang = Annotated[Literal["zh", "en"], Query(description="labels: zh (default) or en")]
Minutes = Annotated[
    int, Query(ge=1, le=60, description="walking minutes a station should be within")
]
Kind = Annotated[
    str | None, Query(description=f"only stations of this kind (default all): {_KIND_LIST}")
]
CASES_INLINE_MAX = 2_000  # more cases than this are fetched by the page, not inlined
CASES_SHOWN_MAX = 50_000  # newest first; the most a case map draws at all
COVERAGE_MINUTES = 10


def _html(fmap) -> HTMLResponse:
    return HTMLResponse(render_html(fmap))


def _basemap(settings):
    return parse_basemap(settings.tiles)


def _geojson(request: Request, body: dict) -> Response:
    """GeoJSON for a map page, gzipped when the browser accepts it (a city's layers are
    megabytes of repetitive digits that compress about fivefold)."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "") and len(data) > 1024:
        data = gzip.compress(data, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type="application/geo+json", headers=headers)


def _layer_url(page: str, layer: str, **params) -> str:
    """The URL a page at /maps/<page> fetches one of its layers from: relative, so it
    works under any mount prefix, and the page's own route, so the same access rule."""
    query = urlencode({"layer": layer, **{k: v for k, v in params.items() if v is not None}})
    return f"{page}?{query}"


# ------------------------------------------------------------------ coverage


def coverage_frames(session: Session, kind: str | None = None) -> dict[str, gpd.GeoDataFrame]:
    """The frames the coverage map draws, from the active generation."""
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    stats = maps_repo.grid_stats(session, list(grids["code"]))
    grids = grids.merge(stats, on="code", how="left")
    if not (grids["open_cases"] > 0).any():
        grids = grids.drop(columns="open_cases")  # no cases yet: keep the tooltip short
    communities, _ = repo.areas_gdf(session, gen.id, level="community")
    streets, _ = repo.areas_gdf(session, gen.id, level="street")
    stations, _ = repo.stations_gdf(session, kind=kind)
    return {
        "grids_gdf": grids,
        "communities_gdf": communities,
        "streets_gdf": streets,
        "stations_gdf": stations,
    }


def straight_radius_m(settings: Settings, minutes: int) -> float:
    """Without a street network a walk is the straight line x the detour factor, so the
    circle that matches `minutes` on foot has this radius (the rule coverage uses)."""
    return minutes * settings.walk_speed_m_per_min / settings.detour_factor


def uncovered_buildings(
    session: Session, settings: Settings, kind: str | None, minutes: int
) -> gpd.GeoDataFrame:
    """Buildings no station (of `kind`) reaches within `minutes` on foot."""
    buildings, _ = repo.buildings_gdf(session)
    stations, _ = repo.stations_gdf(session, kind=kind)
    result = compute_coverage(
        network_repo.cached_road_graph(session),
        buildings,
        stations,
        minutes=(minutes,),
        speed_m_per_min=settings.walk_speed_m_per_min,
        detour_factor=settings.detour_factor,
    )
    out = result.uncovered.merge(buildings[["code", "name"]], on="code", how="left")
    out["walk_min"] = out["walk_min"].replace([np.inf], np.nan).round(1)
    return out.sort_values("code").reset_index(drop=True)


# Isochrones of a city's stations take seconds to compute (one search and a union of
# buffers per station), so each process keeps the latest few, keyed by the graph object
# (a new network import loads a new one), the stations' codes and places, and minutes.
_ISOCHRONE_CACHE: dict[tuple, gpd.GeoDataFrame] = {}
_ISOCHRONE_CACHE_MAX = 16
_isochrone_lock = threading.Lock()


def kind_isochrones(
    session: Session, settings: Settings, kind: str | None, minutes: int
) -> gpd.GeoDataFrame | None:
    """Walking isochrones of the stations (of `kind`) with their kind; None without a
    stored street network."""
    graph = network_repo.cached_road_graph(session)
    if graph is None:
        return None
    stations, _ = repo.stations_gdf(session, kind=kind)
    xy = shapely.get_coordinates(stations.geometry.values).round(7)
    key = (
        id(graph),
        kind,
        minutes,
        settings.walk_speed_m_per_min,
        tuple(stations["code"]),
        xy.tobytes(),
    )
    with _isochrone_lock:
        cached = _ISOCHRONE_CACHE.get(key)
        if cached is not None:
            return cached
        iso = station_isochrones(
            graph, stations, minutes=(minutes,), speed_m_per_min=settings.walk_speed_m_per_min
        )
        iso["kind"] = stations.set_index("code").loc[iso["station_code"], "kind"].to_numpy()
        if len(_ISOCHRONE_CACHE) >= _ISOCHRONE_CACHE_MAX:
            _ISOCHRONE_CACHE.pop(next(iter(_ISOCHRONE_CACHE)))
        _ISOCHRONE_CACHE[key] = iso
        return iso


def coverage_extras(
    session: Session,
    settings: Settings,
    kind: str | None = None,
    minutes: int = COVERAGE_MINUTES,
    *,
    inline: bool = True,
    lang: str = "zh",
) -> dict:
    """The coverage layers for `render_coverage`: isochrones (or a radius without a
    network) and uncovered buildings, inline (a file written by `wangge map`) or as
    URLs under /maps/data the page fetches (a served map)."""
    out: dict = {"minutes": minutes}
    has_network = network_repo.cached_road_graph(session) is not None
    if not has_network:
        out["radius_m"] = straight_radius_m(settings, minutes)
    if inline:
        out["isochrones_gdf"] = kind_isochrones(session, settings, kind, minutes)
        out["uncovered_gdf"] = uncovered_buildings(session, settings, kind, minutes)
        return out
    if has_network:
        stations, _ = repo.stations_gdf(session, kind=kind)
        out["isochrone_urls"] = {
            k: _layer_url("coverage", "isochrones", kind=k, minutes=minutes)
            for k in sorted(set(stations["kind"]))
        }
    out["uncovered_url"] = _layer_url(
        "coverage", "uncovered", kind=kind, minutes=minutes, lang=lang
    )
    return out


CoverageLayer = Annotated[
    Literal["uncovered", "isochrones"] | None,
    Query(description="one layer of the map as GeoJSON (what the page fetches) instead of HTML"),
]


@router.get(
    "/coverage",
    response_class=HTMLResponse,
    summary="Coverage map of the district",
    responses={200: {"content": {"application/geo+json": {}}}},
)
def coverage_map(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    lang: Lang = "zh",
    kind: Kind = None,
    minutes: Minutes = COVERAGE_MINUTES,
    layer: CoverageLayer = None,
) -> Response:
    """Grids coloured by households as a share of their community mean (the stand-in for
    workload), community and street outlines, stations by kind with their walking
    isochrones (a straight-line radius when no street network is stored), and the
    buildings no station reaches within `minutes` highlighted.

    The page fetches the large layers from this route: `layer=uncovered` (the buildings,
    with walking minutes to the nearest station, null when none is reachable) and
    `layer=isochrones` (one feature per station kind; 404 without a street network)."""
    kind_key = resolve_station_kind(kind)
    basemap = _basemap(settings)
    if layer == "uncovered":
        uncovered = uncovered_buildings(session, settings, kind_key, minutes)
        return _geojson(request, render.buildings_feature_collection(uncovered, basemap=basemap))
    if layer == "isochrones":
        iso = kind_isochrones(session, settings, kind_key, minutes)
        if iso is None:
            raise NotFound("no street network stored: import one (wangge import roads)")
        return _geojson(request, render.isochrones_feature_collection(iso, basemap=basemap))
    frames = coverage_frames(session, kind_key)
    extras = coverage_extras(session, settings, kind_key, minutes, inline=False, lang=lang)
    return _html(render.render_coverage(**frames, **extras, lang=lang, basemap=basemap))


# --------------------------------------------------------------- worker area


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


def area_chain(session: Session, code: str) -> list[str]:
    """The codes above a grid in the active generation: community, street, district."""
    gen = repo.require_active_generation(session)
    chain: list[str] = []
    current = code
    for _ in range(6):  # district -> street -> community -> grid, with room to spare
        rows, _ = repo.areas_gdf(session, gen.id, codes=[current])
        parent = rows["parent_code"].iat[0] if len(rows) else None
        if not parent or pd.isna(parent) or parent in chain:
            break
        chain.append(str(parent))
        current = str(parent)
    return chain


def cared_residents_gdf(session: Session, grid_code: str) -> gpd.GeoDataFrame:
    """Cared-for residents of one grid at their building's point: care group only.

    (A query of its own, not in gis.db.maps_repo, which another engineer owns; only the
    care group and the place leave the store, never names, phones or notes.)
    """
    stmt = (
        sa.select(CaredResident.care_group, sa.func.ST_AsBinary(Building.point))
        .join(Building, Building.id == CaredResident.building_id)
        .where(Building.grid_code == grid_code)
        .order_by(CaredResident.id)
    )
    rows = session.execute(stmt).all()
    geoms = shapely.from_wkb([bytes(r[1]) for r in rows]) if rows else []
    return gpd.GeoDataFrame({"care_group": [r[0] for r in rows]}, geometry=list(geoms), crs=4326)


def build_grid_map(
    session: Session, code: str, viewer: Actor | None, lang: str, basemap, category_names=None
):
    """The grid map as `viewer` may see it (None: anonymous, never cared-for residents)."""
    frames = worker_area_frames(session, code)
    chain = area_chain(session, code)
    # Asked of the store only when the viewer may see them: nothing to leak otherwise.
    residents = (
        cared_residents_gdf(session, code)
        if render.may_see_cared_for(viewer, [code], chain)
        else None
    )
    return render.render_worker_area(
        **frames,
        residents_gdf=residents,
        viewer=viewer,
        area_codes=chain,
        category_names=category_names or maps_repo.category_names(session, lang),
        lang=lang,
        basemap=basemap,
    )


@router.get("/grids/{code}", response_class=HTMLResponse, summary="Map of one grid")
def grid_map(
    code: str, session: SessionDep, settings: SettingsDep, actor: ActorDep, lang: Lang = "zh"
) -> HTMLResponse:
    """One grid with its buildings, open cases (red: overdue), neighbours and nearby
    stations; its cared-for residents (care group only) for a worker of the grid, a
    dispatcher or an admin."""
    return _html(build_grid_map(session, code, actor, lang, _basemap(settings)))


# ------------------------------------------------------------------- nearest


def nearest_frame(
    session: Session, settings: Settings, lon: float, lat: float, k: int, crs: str = "wgs84"
) -> tuple[gpd.GeoDataFrame, tuple[float, float]]:
    """The k nearest stations on foot, as `GET /api/v1/stations/nearest?mode=walk` finds
    them, as a frame for `render_nearest`, and the point in EPSG:4326.

    With a street network each station carries its walking route; without one the
    minutes are the straight line x detour factor and there is no route (the map then
    draws a dashed straight line and says so).
    """
    body = find_nearest(
        session, settings, lon=lon, lat=lat, kind=None, k=k, mode="walk",
        open_now=False, at=None, radius_m=None, crs=crs,
    )  # fmt: skip
    if not body["features"]:
        raise NotFound("no station within reach of this point")
    network = body["walk"]["network"]
    rows = []
    for f in body["features"]:
        p = f["properties"]
        path = (p.get("path") or {}).get("coordinates") if network else None
        rows.append(
            {
                "code": p["code"],
                "name": p["name"],
                "kind": p["kind"],
                "opening_hours": p["opening_hours"],
                "address": p["address"],
                "open_now": p["open"],
                "minutes": p["walk_min"],
                "distance_m": p["walk_m"],
                "route": shapely.LineString(path) if path and len(path) >= 2 else None,
                "geometry": shapely.Point(f["geometry"]["coordinates"]),
            }
        )
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
    frame["route"] = gpd.GeoSeries(frame["route"], crs=4326)
    return frame, (body["query"]["lon"], body["query"]["lat"])


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
    """The point, the k nearest stations with the walking route along the streets and
    minutes, and which are open now."""
    stations, point = nearest_frame(session, settings, lon, lat, k, crs)
    return _html(render.render_nearest(point, stations, lang=lang, basemap=_basemap(settings)))


# --------------------------------------------------------------------- cases


def _parse_time(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid_parameter(name, "must be an ISO 8601 date or time", value=text) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_category(category: str | None) -> None:
    if category is not None and not (category.isdigit() and len(category) in (2, 4)):
        raise invalid_parameter("category", "must be a 2- or 4-digit category code", value=category)


def case_range(session: Session, start, end):
    """The time range a case map shows (default: the 30 days up to the newest case)."""
    if start is None:
        newest = maps_repo.latest_case_time(session)
        if newest is not None:
            newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
            start = (end or newest + timedelta(seconds=1)) - timedelta(days=30)
    return start, end


Since = Annotated[
    str | None, Query(description="ISO date/time; default: 30 days before the newest case")
]
Until = Annotated[str | None, Query(description="ISO date/time (exclusive)")]
CategoryQ = Annotated[
    str | None, Query(description="a class (2 digits) or subclass (4 digits) code")
]


@router.get(
    "/cases",
    response_class=HTMLResponse,
    summary="Heat map and clusters of cases",
    responses={200: {"content": {"application/geo+json": {}}}},
)
def cases_map(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    since: Since = None,
    until: Until = None,
    category: CategoryQ = None,
    lang: Lang = "zh",
    layer: Annotated[
        Literal["cases"] | None,
        Query(description="the case points as GeoJSON (what the page fetches) instead of HTML"),
    ] = None,
) -> Response:
    """Cases reported in a time range as a heat map and clusters, one layer per class.
    Above a few thousand cases the page fetches the points from this route with
    `layer=cases` (newest first, at most 50,000: per case its class, colour, tooltip)."""
    _check_category(category)
    start, end = _parse_time("since", since), _parse_time("until", until)
    basemap = _basemap(settings)
    if layer == "cases":
        start, end = case_range(session, start, end)
        cases = maps_repo.cases_gdf(
            session, since=start, until=end, category_prefix=category, limit=CASES_SHOWN_MAX
        )
        body = render.cases_feature_collection(
            cases,
            category_names=maps_repo.category_names(session, lang),
            lang=lang,
            basemap=basemap,
        )
        return _geojson(request, body)
    url = _layer_url("cases", "cases", since=since, until=until, category=category, lang=lang)
    return _html(build_cases_map(session, start, end, category, lang, basemap, data_url=url))


def build_cases_map(session: Session, start, end, category, lang, basemap, *, data_url=None):
    """The cases map for a time range (default: the 30 days up to the newest case).

    With `data_url` and more than CASES_INLINE_MAX cases, the page fetches the points
    from it; otherwise (and always for a file) they are inlined.
    """
    start, end = case_range(session, start, end)
    cases = maps_repo.cases_gdf(
        session, since=start, until=end, category_prefix=category, limit=CASES_SHOWN_MAX
    )
    gen = repo.require_active_generation(session)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    names = maps_repo.category_names(session, lang)
    period = (f"{start:%Y-%m-%d}" if start else "…", f"{end:%Y-%m-%d}" if end else "…")
    remote = data_url is not None and len(cases) > CASES_INLINE_MAX
    counts = cases["category_code"].astype(str).str[:2].value_counts().to_dict()
    return render.render_cases(
        None if remote else cases,
        data_url=data_url if remote else None,
        class_counts={str(k): int(v) for k, v in counts.items()},
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
