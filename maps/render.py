"""The four maps: pure functions from GeoDataFrames (EPSG:4326) to a `folium.Map`.

No I/O, no database: callers (the `/maps` router, `wangge map`) fetch the frames and
turn the map into HTML with `maps.assets.render_html` or `write_map_file`. Optional
inputs (isochrones, uncovered buildings, cases, workload) are drawn when given, so each
map grows as the data behind it lands.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
from folium.plugins import FastMarkerCluster, HeatMap

from gis.cases import Actor
from maps.basemap import NO_BASEMAP, Basemap, shift_point
from maps.i18n import (
    care_group_label,
    check_lang,
    label,
    station_kind_label,
    status_label,
)
from maps.layers import (
    LIFE_CIRCLE_RADIUS_M,
    OTHER_STATION_COLOUR,
    STATION_COLOURS,
    EmptyCluster,
    EmptyHeat,
    Legend,
    PlainPopup,
    RemoteCases,
    RemoteGeoJson,
    add_chrome,
    display_gdf,
    new_map,
    share_colour,
    share_legend_entries,
    to_feature_collection,
    total_bounds,
)

#: Roles that may see cared-for residents on a map: a worker of the grid (checked
#: against the worker's own grids), dispatchers (within their scope) and admins.
CARE_VIEWER_ROLES = ("worker", "dispatcher", "admin")
# Case states (gis.cases vocabulary) grouped into the colours a case map shows.
OPEN_STATUSES = ("reported", "dispatched", "accepted", "in_progress", "returned", "escalated")
STATUS_GROUPS: dict[str, tuple[tuple[str, ...], str]] = {
    "new": (("reported", "returned"), "#ff7f00"),
    "in_hand": (("dispatched", "accepted", "in_progress"), "#1f78b4"),
    "escalated": (("escalated",), "#6a3d9a"),
    "done": (("resolved", "evaluated", "closed", "duplicate", "rejected"), "#33a02c"),
}
OVERDUE_COLOUR = "#e31a1c"
_STATUS_GROUP_LABELS = {
    "new": ("待处理", "new"),
    "in_hand": ("处置中", "in hand"),
    "escalated": ("已上报上级", "escalated"),
    "done": ("已办结", "done"),
}
STATION_RADIUS_MINUTES = 10
_GRID_FIELD_LABELS = {
    "code": "grid_code",
    "name": "grid_name",
    "worker": "worker",
    "households": "households",
}
_BUILDING_FIELD_LABELS = {
    "name": "name",
    "address": "address",
    "households": "households",
    "floors": "floors",
}


# ------------------------------------------------------------------ coverage


def grid_share_pct(grids_gdf: gpd.GeoDataFrame) -> tuple[pd.Series, str]:
    """Each grid's load as % of its community's mean, and which measure was used.

    Uses `workload_share` (1.0 = the community mean) when the workload issue provides
    it; until then households stand in for workload.
    """
    if "workload_share" in grids_gdf.columns:
        return grids_gdf["workload_share"].astype(float) * 100, "workload"
    if "households" not in grids_gdf.columns:
        return pd.Series(np.nan, index=grids_gdf.index), "households"
    households = grids_gdf["households"].astype(float)
    community = grids_gdf.get("parent_code", pd.Series("", index=grids_gdf.index)).fillna("")
    mean = households.groupby(community).transform("mean")
    return (households / mean.where(mean > 0) * 100).round(1), "households"


def _grid_tooltip_fields(gdf: gpd.GeoDataFrame, lang: str) -> tuple[list[str], list[str]]:
    fields = [("code", "grid_code"), ("worker", "worker"), ("households", "households")]
    fields.append(("share_pct", "share"))
    if "open_cases" in gdf.columns:
        fields.append(("open_cases", "open_cases"))
    present = [(f, key) for f, key in fields if f in gdf.columns]
    return [f for f, _ in present], [label(key, lang) for _, key in present]


def _outline_layer(gdf, name: str, colour: str, weight: float, *, show: bool = True):
    layer = folium.GeoJson(
        to_feature_collection(gdf, ["code", "name"]),
        name=name,
        show=show,
        style_function=lambda _f: {
            "color": colour,
            "weight": weight,
            "fill": False,
            "interactive": False,
        },
    )
    return layer


def add_stations(
    fmap: folium.Map, stations: gpd.GeoDataFrame | None, lang: str, *, radius_px: float = 6
) -> list[str]:
    """One layer per station kind (toggled in the layer control); returns the kinds drawn."""
    if stations is None or len(stations) == 0:
        return []
    kinds = [k for k in STATION_COLOURS if k in set(stations["kind"])]
    kinds += sorted(set(stations["kind"]) - set(kinds))
    cols = ["code", "name", "kind_label", "opening_hours", "address"]
    names = dict(zip(cols, ("code", "name", "kind", "hours", "address"), strict=True))
    stations = stations.assign(kind_label=[station_kind_label(k, lang) for k in stations["kind"]])
    present = [c for c in cols if c in stations.columns]
    for kind in kinds:
        subset = stations[stations["kind"] == kind]
        colour = STATION_COLOURS.get(kind, OTHER_STATION_COLOUR)
        folium.GeoJson(
            to_feature_collection(subset, present),
            name=f"{label('stations', lang)} · {station_kind_label(kind, lang)} ({len(subset)})",
            marker=folium.CircleMarker(
                radius=radius_px, color="#ffffff", weight=1.5, fill_color=colour, fill_opacity=1
            ),
            tooltip=folium.GeoJsonTooltip(
                fields=present, aliases=[label(names[c], lang) for c in present]
            ),
        ).add_to(fmap)
    return kinds


def _station_legend(kinds: Sequence[str], lang: str) -> Legend:
    return Legend(
        "station_kind",
        label("legend_station_kind", lang),
        [
            (station_kind_label(k, lang), STATION_COLOURS.get(k, OTHER_STATION_COLOUR))
            for k in kinds
        ],
        shape="dot",
    )


def render_coverage(
    grids_gdf: gpd.GeoDataFrame,
    communities_gdf: gpd.GeoDataFrame | None,
    streets_gdf: gpd.GeoDataFrame | None,
    stations_gdf: gpd.GeoDataFrame | None,
    *,
    isochrones_gdf: gpd.GeoDataFrame | None = None,
    isochrone_urls: dict[str, str] | None = None,
    uncovered_gdf: gpd.GeoDataFrame | None = None,
    uncovered_url: str | None = None,
    minutes: int = STATION_RADIUS_MINUTES,
    radius_m: float | None = None,
    lang: str = "zh",
    basemap: Basemap = NO_BASEMAP,
) -> folium.Map:
    """Grids coloured by load share of their community, outlines, stations and coverage.

    `grids_gdf`: code, parent_code (community), geometry; optional name, worker,
    households, open_cases, workload_share. Station coverage is drawn from the first of:
    `isochrones_gdf` (station_code, minutes, optional kind, geometry: walking isochrones,
    dissolved per kind), `isochrone_urls` (kind -> URL of the same as GeoJSON, fetched by
    the page; the first kind is shown, the others load when switched on), or a circle of
    `radius_m` (default: the life-circle radius of `minutes`) round each station.
    Buildings no station reaches within `minutes` are highlighted, inline from
    `uncovered_gdf` or fetched from `uncovered_url` (for a city, thousands of them).
    """
    check_lang(lang)
    grids = grids_gdf.copy()
    grids["share_pct"], measure = grid_share_pct(grids)
    grids = display_gdf(grids, basemap, coverage=True)
    fmap = new_map(total_bounds(grids), basemap)

    fields, aliases = _grid_tooltip_fields(grids, lang)
    colours = {c: share_colour(s) for c, s in zip(grids["code"], grids["share_pct"], strict=True)}
    folium.GeoJson(
        to_feature_collection(grids, fields),
        name=f"{label('grids', lang)} ({len(grids)})",
        style_function=lambda f: {
            "fillColor": colours.get(f["id"], "#bdbdbd"),
            "fillOpacity": 0.7,
            "color": "#555555",
            "weight": 0.6,
        },
        highlight_function=lambda _f: {"weight": 2.5, "color": "#000000"},
        tooltip=folium.GeoJsonTooltip(fields=fields, aliases=aliases),
    ).add_to(fmap)

    if communities_gdf is not None and len(communities_gdf):
        _outline_layer(
            display_gdf(communities_gdf, basemap, coverage=True),
            label("communities", lang),
            "#333333",
            1.5,
        ).add_to(fmap)
    if streets_gdf is not None and len(streets_gdf):
        _outline_layer(
            display_gdf(streets_gdf, basemap, coverage=True), label("streets", lang), "#000000", 3
        ).add_to(fmap)

    stations = display_gdf(stations_gdf, basemap)
    method = _add_station_coverage(
        fmap,
        stations,
        isochrones_gdf=isochrones_gdf,
        isochrone_urls=isochrone_urls,
        minutes=minutes,
        radius_m=radius_m,
        basemap=basemap,
        lang=lang,
    )
    uncovered_name = label("uncovered", lang)
    if uncovered_gdf is not None and len(uncovered_gdf):
        shown = display_gdf(uncovered_gdf, basemap)
        ufields = [c for c in UNCOVERED_FIELDS if c in shown.columns]
        folium.GeoJson(
            to_feature_collection(shown, ufields),
            name=f"{uncovered_name} ({len(shown)})",
            marker=folium.CircleMarker(radius=3, color=UNCOVERED_COLOUR, fill_opacity=1),
            style_function=lambda _f: UNCOVERED_STYLE,
            tooltip=folium.GeoJsonTooltip(
                fields=ufields, aliases=[label(UNCOVERED_FIELDS[c], lang) for c in ufields]
            ),
        ).add_to(fmap)
    elif uncovered_url:
        RemoteGeoJson(
            uncovered_url,
            uncovered_name,
            style=UNCOVERED_STYLE,
            marker={"radius": 3, "color": UNCOVERED_COLOUR, "fillOpacity": 1},
            fields=list(UNCOVERED_FIELDS),
            aliases=[label(v, lang) for v in UNCOVERED_FIELDS.values()],
            count_key="uncovered",
        ).add_to(fmap)
    kinds = add_stations(fmap, stations, lang)

    share_title = label(
        "legend_share_workload" if measure == "workload" else "legend_share_households", lang
    )
    legends = [Legend("share", share_title, share_legend_entries(lang))]
    if kinds:
        legends.append(_station_legend(kinds, lang))
    if method is not None:
        legends.append(_coverage_legend(method, minutes, uncovered_gdf, uncovered_url, lang))
    add_chrome(fmap, label("title_coverage", lang), legends)
    return fmap


UNCOVERED_COLOUR = "#e31a1c"
UNCOVERED_STYLE = {
    "color": UNCOVERED_COLOUR,
    "fillColor": UNCOVERED_COLOUR,
    "weight": 1.5,
    "fillOpacity": 0.8,
}
#: Properties of an uncovered building on the map -> their label keys.
UNCOVERED_FIELDS = {
    "code": "code",
    "name": "name",
    "households": "households",
    "walk_min": "minutes",
}
ISOCHRONE_COLOUR = "#41ab5d"


def _coverage_legend(method, minutes, uncovered_gdf, uncovered_url, lang) -> Legend:
    area_key = "legend_isochrone" if method == "network" else "legend_radius"
    entries = [(label(area_key, lang, minutes=minutes), ISOCHRONE_COLOUR)]
    text = label("legend_uncovered", lang, minutes=minutes)
    if uncovered_gdf is not None:
        entries.append((f"{text}: {len(uncovered_gdf)}", UNCOVERED_COLOUR))
    elif uncovered_url:
        entries.append((text, UNCOVERED_COLOUR, "uncovered"))
    notes = [label("walk_network" if method == "network" else "walk_straight", lang)]
    return Legend("coverage", label("legend_coverage", lang), entries, notes=notes)


def _isochrone_style(kind: str | None) -> dict:
    colour = STATION_COLOURS.get(kind, ISOCHRONE_COLOUR) if kind else ISOCHRONE_COLOUR
    return {"color": colour, "weight": 1, "fillColor": colour, "fillOpacity": 0.15}


def dissolve_isochrones(isochrones_gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One (multi)polygon per station kind and minutes: overlapping circles of stations of
    one kind would otherwise stack into dark patches, and a city's thousand stations'
    polygons repeat the same streets many times over."""
    iso = isochrones_gdf
    if "kind" not in iso.columns:
        iso = iso.assign(kind="")
    minutes = iso["minutes"] if "minutes" in iso.columns else pd.Series(0, index=iso.index)
    iso = iso.assign(minutes=minutes.astype(int))
    out = iso[["kind", "minutes", iso.geometry.name]].dissolve(["kind", "minutes"]).reset_index()
    out["code"] = [f"isochrone:{k}:{m}" for k, m in zip(out["kind"], out["minutes"], strict=True)]
    return out


def isochrones_feature_collection(
    isochrones_gdf: gpd.GeoDataFrame, *, basemap: Basemap = NO_BASEMAP
) -> dict:
    """Isochrones ready for a map: dissolved per kind, simplified, shifted and rounded."""
    if isochrones_gdf is None or len(isochrones_gdf) == 0:
        return {"type": "FeatureCollection", "features": []}
    shown = display_gdf(dissolve_isochrones(isochrones_gdf), basemap)
    return to_feature_collection(shown, ["kind", "minutes"])


def buildings_feature_collection(
    buildings_gdf: gpd.GeoDataFrame, *, basemap: Basemap = NO_BASEMAP
) -> dict:
    """Uncovered buildings ready for a map (code, name, households, walking minutes)."""
    shown = display_gdf(buildings_gdf, basemap)
    if shown is None or len(shown) == 0:
        return {"type": "FeatureCollection", "features": []}
    return to_feature_collection(shown, list(UNCOVERED_FIELDS))


def _add_station_coverage(
    fmap, stations, *, isochrones_gdf, isochrone_urls, minutes, radius_m, basemap, lang
) -> str | None:
    """Walking isochrones when the network gives them, else a circle round each station.

    Returns "network" or "radius" (what was drawn), None when there is nothing to draw.
    """
    if isochrones_gdf is not None and len(isochrones_gdf):
        iso = display_gdf(dissolve_isochrones(isochrones_gdf), basemap)
        for kind, part in iso.groupby("kind", sort=False):
            folium.GeoJson(
                to_feature_collection(part, ["kind", "minutes"]),
                name=_isochrone_layer_name(kind, minutes, lang),
                style_function=lambda _f, k=kind: _isochrone_style(k),
            ).add_to(fmap)
        return "network"
    if isochrone_urls:
        ordered = [k for k in STATION_COLOURS if k in isochrone_urls]
        ordered += sorted(set(isochrone_urls) - set(ordered))
        for i, kind in enumerate(ordered):
            RemoteGeoJson(
                isochrone_urls[kind],
                _isochrone_layer_name(kind, minutes, lang),
                style=_isochrone_style(kind),
                show=i == 0,
                lazy=i > 0,
            ).add_to(fmap)
        return "network"
    if stations is None or len(stations) == 0:
        return None
    radius_m = radius_m or LIFE_CIRCLE_RADIUS_M.get(minutes, 80.0 * minutes)
    group = folium.FeatureGroup(
        name=label("radius", lang, minutes=minutes, radius_m=f"{radius_m:.0f}"), show=True
    )
    for kind, point in zip(stations["kind"], stations.geometry, strict=True):
        folium.Circle(
            location=(point.y, point.x),
            radius=radius_m,
            color=STATION_COLOURS.get(kind, OTHER_STATION_COLOUR),
            weight=0.8,
            fill=True,
            fill_opacity=0.06,
            interactive=False,
        ).add_to(group)
    group.add_to(fmap)
    return "radius"


def _isochrone_layer_name(kind: str | None, minutes: int, lang: str) -> str:
    base = label("isochrones", lang)
    kind_text = f" · {station_kind_label(kind, lang)}" if kind else ""
    return f"{base}{kind_text} ({label('n_minutes', lang, minutes=minutes)})"


# --------------------------------------------------------------- worker area


def case_colours(cases: pd.DataFrame, now: datetime) -> tuple[list[str], np.ndarray]:
    """Per case: its status group's colour, red when open past its deadline; and overdue."""
    status = cases["status"].astype(str).to_numpy()
    group_colour = {s: colour for states, colour in STATUS_GROUPS.values() for s in states}
    colours = [group_colour.get(s, "#999999") for s in status]
    overdue = np.zeros(len(cases), dtype=bool)
    if "deadline_at" in cases.columns:
        deadline = pd.to_datetime(cases["deadline_at"], utc=True)
        overdue = (
            np.isin(status, OPEN_STATUSES)
            & deadline.notna().to_numpy()
            & (deadline < pd.Timestamp(now)).to_numpy()
        )
    colours = [OVERDUE_COLOUR if o else c for c, o in zip(colours, overdue, strict=True)]
    return colours, overdue


def _case_legend(lang: str) -> Legend:
    i = 0 if lang == "zh" else 1
    entries = [(_STATUS_GROUP_LABELS[g][i], colour) for g, (_s, colour) in STATUS_GROUPS.items()]
    entries.append((label("overdue", lang), OVERDUE_COLOUR))
    return Legend("case_status", label("legend_case_status", lang), entries, shape="dot")


def _case_tooltip(row, lang: str, category_names: dict[str, str]) -> str:
    parts = [
        f"{label('code', lang)}: {row.get('code', '')}",
        f"{label('category', lang)}: "
        f"{category_names.get(row.get('category_code'), row.get('category_code', ''))}",
        f"{label('status', lang)}: {status_label(str(row.get('status')), lang)}",
    ]
    if row.get("deadline_at") is not None and not pd.isna(row.get("deadline_at")):
        parts.append(
            f"{label('deadline_at', lang)}: {pd.Timestamp(row['deadline_at']):%Y-%m-%d %H:%M}"
        )
    return "<br>".join(html.escape(p) for p in parts)


def may_see_cared_for(
    viewer: Actor | None, grid_codes: Sequence[str], area_codes: Sequence[str] = ()
) -> bool:
    """Whether `viewer` may see the cared-for residents of these grids on a map.

    Only a worker who owns every one of the grids, a dispatcher whose scope (an area
    code) is one of `area_codes` (the grids and the areas above them) or who has no
    scope, and an admin. Residents, anonymous callers (None), planners, departments and
    anyone else never do: care data is for the people who visit, not for planning maps.
    """
    if viewer is None or not grid_codes or viewer.role not in CARE_VIEWER_ROLES:
        return False
    if viewer.role == "admin":
        return True
    if viewer.role == "worker":
        return set(grid_codes) <= set(viewer.grid_codes)
    return viewer.scope is None or viewer.scope in set(area_codes) | set(grid_codes)


def render_worker_area(
    grids_gdf: gpd.GeoDataFrame,
    buildings_gdf: gpd.GeoDataFrame | None,
    *,
    neighbours_gdf: gpd.GeoDataFrame | None = None,
    cases_gdf: gpd.GeoDataFrame | None = None,
    stations_gdf: gpd.GeoDataFrame | None = None,
    residents_gdf: gpd.GeoDataFrame | None = None,
    viewer: Actor | None = None,
    area_codes: Sequence[str] = (),
    category_names: dict[str, str] | None = None,
    now: datetime | None = None,
    lang: str = "zh",
    basemap: Basemap = NO_BASEMAP,
) -> folium.Map:
    """One grid (or a worker's grids) with buildings, cases, neighbours and stations.

    Cared-for residents (`residents_gdf`: care_group, geometry) are drawn only when
    `may_see_cared_for(viewer, grid codes, area_codes)` holds (`area_codes`: the areas
    above the grids, for a dispatcher's scope); otherwise they are dropped before
    anything is serialised, so no trace of them reaches the page. Only the care group is
    shown, never a name.
    """
    check_lang(lang)
    now = now or datetime.now(UTC)
    category_names = category_names or {}
    grids = display_gdf(grids_gdf, basemap, coverage=True)
    fmap = new_map(total_bounds(grids), basemap)

    if neighbours_gdf is not None and len(neighbours_gdf):
        _outline_layer(
            display_gdf(neighbours_gdf, basemap, coverage=True),
            label("neighbours", lang),
            "#888888",
            1.2,
        ).add_to(fmap)
    fields = [c for c in ("code", "name", "worker", "households") if c in grids.columns]
    folium.GeoJson(
        to_feature_collection(grids, fields),
        name=label("grids", lang),
        style_function=lambda _f: {
            "color": "#08519c",
            "weight": 3,
            "fillColor": "#6baed6",
            "fillOpacity": 0.08,
        },
        tooltip=folium.GeoJsonTooltip(
            fields=fields, aliases=[label(_GRID_FIELD_LABELS[f], lang) for f in fields]
        ),
    ).add_to(fmap)

    if buildings_gdf is not None and len(buildings_gdf):
        buildings = display_gdf(buildings_gdf, basemap)
        bfields = [c for c in ("name", "address", "households", "floors") if c in buildings]
        folium.GeoJson(
            to_feature_collection(buildings, bfields),
            name=f"{label('buildings', lang)} ({len(buildings)})",
            style_function=lambda _f: {
                "color": "#54278f",
                "weight": 1,
                "fillColor": "#9e9ac8",
                "fillOpacity": 0.6,
            },
            tooltip=folium.GeoJsonTooltip(
                fields=bfields,
                aliases=[label(_BUILDING_FIELD_LABELS[f], lang) for f in bfields],
            ),
        ).add_to(fmap)

    legends = []
    if cases_gdf is not None and len(cases_gdf):
        cases = display_gdf(cases_gdf, basemap)
        colours, overdue = case_colours(cases, now)
        open_mask = np.isin(cases["status"].astype(str), OPEN_STATUSES)
        group = folium.FeatureGroup(name=f"{label('open_cases_layer', lang)} ({open_mask.sum()})")
        for row, point, colour, late, is_open in zip(
            cases.to_dict("records"), cases.geometry, colours, overdue, open_mask, strict=True
        ):
            if not is_open:
                continue
            folium.CircleMarker(
                location=(point.y, point.x),
                radius=7 if late else 5,
                color="#000000" if late else "#ffffff",
                weight=1.5,
                fill_color=colour,
                fill_opacity=0.95,
                tooltip=_case_tooltip(row, lang, category_names),
            ).add_to(group)
        group.add_to(fmap)
        legends.append(_case_legend(lang))

    kinds = add_stations(fmap, display_gdf(stations_gdf, basemap), lang, radius_px=8)
    if kinds:
        legends.append(_station_legend(kinds, lang))

    allowed = may_see_cared_for(viewer, list(grids_gdf["code"].astype(str)), area_codes)
    if allowed and residents_gdf is not None and len(residents_gdf):
        residents = display_gdf(residents_gdf, basemap)
        group = folium.FeatureGroup(name=f"{label('residents', lang)} ({len(residents)})")
        for grp, point in zip(residents["care_group"], residents.geometry, strict=True):
            folium.CircleMarker(
                location=(point.y, point.x),
                radius=4,
                color="#d4a017",
                fill_color="#ffd700",
                fill_opacity=1,
                tooltip=html.escape(care_group_label(str(grp), lang)),
            ).add_to(group)
        group.add_to(fmap)

    codes = ", ".join(grids_gdf["code"].astype(str)[:3])
    add_chrome(fmap, label("title_worker", lang, code=codes), legends)
    return fmap


# ------------------------------------------------------------------- nearest


def render_nearest(
    point: tuple[float, float],
    stations_gdf: gpd.GeoDataFrame,
    *,
    lang: str = "zh",
    basemap: Basemap = NO_BASEMAP,
) -> folium.Map:
    """A resident's point and the nearest stations, with walking route and minutes.

    `stations_gdf`: code, name, kind, minutes, geometry (the station); optional
    distance_m, opening_hours, open_now (True/False/None) and `route` (a LineString
    geometry column: the walk on the street network). A station without a route gets a
    dashed straight line, and the legend says its minutes are the documented fallback,
    straight line × detour factor. Each station carries a permanent label with its
    name, minutes and open/closed; a click shows distance and opening hours.
    """
    check_lang(lang)
    lon, lat = shift_point(point[0], point[1], basemap)
    stations = display_gdf(stations_gdf, basemap)
    has_routes = "route" in stations.columns and stations["route"].notna().any()
    if has_routes:
        routes = gpd.GeoDataFrame(
            {"code": stations["code"]}, geometry=list(stations["route"]), crs=4326
        )
        routes = routes[routes.geometry.notna()]
        routes = display_gdf(routes, NO_BASEMAP)  # already shifted with the stations
    bounds = total_bounds(stations)
    if bounds is None:
        bounds = np.array([lon, lat, lon, lat])
    bounds = np.array(
        [min(bounds[0], lon), min(bounds[1], lat), max(bounds[2], lon), max(bounds[3], lat)]
    )
    fmap = new_map(bounds, basemap)

    route_group = folium.FeatureGroup(name=label("routes", lang))
    station_group = folium.FeatureGroup(name=f"{label('stations', lang)} ({len(stations)})")
    route_of = dict(zip(routes["code"], routes.geometry, strict=True)) if has_routes else {}
    for row, geom in zip(stations.to_dict("records"), stations.geometry, strict=True):
        open_now = row.get("open_now")
        state = (
            "unknown"
            if open_now is None or pd.isna(open_now)
            else ("open" if open_now else "closed")
        )
        colour = {"open": "#1a9641", "closed": "#7f7f7f", "unknown": "#2c7bb6"}[state]
        minutes = row.get("minutes")
        if minutes is not None and pd.isna(minutes):
            minutes = None
        distance = row.get("distance_m")
        text = [
            f"{row.get('name', '')}",
            f"{station_kind_label(str(row.get('kind', '')), lang)}",
            f"{label('minutes', lang)}: {minutes:.0f}" if minutes is not None else "",
            f"{label('distance_m', lang)}: {distance:.0f}"
            if distance is not None and not pd.isna(distance)
            else "",
            f"{label('open_now', lang)}: {label(state, lang)}",
        ]
        if row.get("opening_hours"):
            text.append(f"{label('hours', lang)}: {row['opening_hours']}")
        popup = "<br>".join(html.escape(t) for t in text if t)
        # Always on screen: the name, minutes on foot and whether it is open now.
        short = [str(row.get("name", ""))]
        if minutes is not None:
            short.append(label("minutes_short", lang, minutes=f"{minutes:.0f}"))
        short.append(label(state, lang))
        tooltip = html.escape(" · ".join(short))
        route = route_of.get(row["code"])
        if route is not None:
            coords = [(y, x) for x, y in route.coords]
            dash = None
        else:
            coords = [(lat, lon), (geom.y, geom.x)]
            dash = "6 6"
        folium.PolyLine(coords, color=colour, weight=4, opacity=0.8, dash_array=dash).add_to(
            route_group
        )
        folium.CircleMarker(
            location=(geom.y, geom.x),
            radius=9,
            color="#ffffff",
            weight=2,
            fill_color=colour,
            fill_opacity=1,
            tooltip=folium.Tooltip(tooltip, permanent=True, direction="right"),
        ).add_child(PlainPopup(popup)).add_to(station_group)
    route_group.add_to(fmap)
    station_group.add_to(fmap)
    folium.CircleMarker(
        location=(lat, lon),
        radius=10,
        color="#000000",
        weight=3,
        fill_color="#ffeb3b",
        fill_opacity=1,
        tooltip=html.escape(label("you", lang)),
    ).add_to(fmap)
    notes = [label("walk_route", lang)] if has_routes else []
    if not has_routes or stations["route"].isna().any():
        notes.append(label("straight_line", lang))
    legend = Legend(
        "nearest",
        label("legend_nearest", lang),
        [
            (label("you", lang), "#ffeb3b"),
            (label("open", lang), "#1a9641"),
            (label("closed", lang), "#7f7f7f"),
            (label("unknown", lang), "#2c7bb6"),
        ],
        shape="dot",
        notes=notes,
    )
    add_chrome(fmap, label("title_nearest", lang), [legend])
    return fmap


# --------------------------------------------------------------------- cases

_CASE_CALLBACK = """
function callback(row) {
    var colours = %s;
    var marker = L.circleMarker(new L.LatLng(row[0], row[1]), {
        radius: 6, color: '#ffffff', weight: 1, fillColor: colours[row[2]], fillOpacity: 0.95
    });
    marker.bindTooltip(row[3]);
    return marker;
}
"""


def cases_feature_collection(
    cases_gdf: gpd.GeoDataFrame,
    *,
    category_names: dict[str, str] | None = None,
    now: datetime | None = None,
    lang: str = "zh",
    basemap: Basemap = NO_BASEMAP,
) -> dict:
    """Case points for a page that fetches them: per case its class (first two digits of
    the category), marker colour and tooltip (HTML-escaped), nothing else."""
    check_lang(lang)
    features = []
    if cases_gdf is not None and len(cases_gdf):
        cases = display_gdf(cases_gdf, basemap)
        colours, _overdue = case_colours(cases, now or datetime.now(UTC))
        classes = cases["category_code"].astype(str).str[:2].to_numpy()
        xs, ys = cases.geometry.x.to_numpy(), cases.geometry.y.to_numpy()
        for i, row in enumerate(cases.to_dict("records")):
            features.append(
                {
                    "type": "Feature",
                    "id": str(row["code"]),
                    "geometry": {"type": "Point", "coordinates": [float(xs[i]), float(ys[i])]},
                    "properties": {
                        "class": str(classes[i]),
                        "colour": colours[i],
                        "tooltip": _case_tooltip(row, lang, category_names or {}),
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def render_cases(
    cases_gdf: gpd.GeoDataFrame | None,
    *,
    data_url: str | None = None,
    class_counts: dict[str, int] | None = None,
    grids_gdf: gpd.GeoDataFrame | None = None,
    category_names: dict[str, str] | None = None,
    class_names: dict[str, str] | None = None,
    period: tuple[str, str] | None = None,
    now: datetime | None = None,
    lang: str = "zh",
    basemap: Basemap = NO_BASEMAP,
) -> folium.Map:
    """A heat map of cases and clustered markers, one cluster layer per category class.

    `cases_gdf`: code, category_code (4-digit subclass; its first two digits are the
    class), status, geometry; optional deadline_at. Each class is its own layer, so the
    layer control filters by category; the caller picks the time range.

    For many cases pass `data_url` (GeoJSON as `cases_feature_collection` makes it) and
    `class_counts` (class -> cases) instead: the page then fetches the points and fills
    the same layers, so the HTML stays small.
    """
    check_lang(lang)
    now = now or datetime.now(UTC)
    category_names = category_names or {}
    class_names = class_names or {}
    cases = display_gdf(cases_gdf, basemap) if cases_gdf is not None else None
    grids = display_gdf(grids_gdf, basemap, coverage=True) if grids_gdf is not None else None
    has_cases = cases is not None and len(cases) > 0
    fmap = new_map(total_bounds(cases if has_cases else None, grids), basemap)

    if grids is not None and len(grids):
        _outline_layer(grids, label("grids", lang), "#777777", 0.6).add_to(fmap)
    if data_url is not None:
        heat = EmptyHeat(label("heatmap", lang), radius=14, blur=12)
        heat.add_to(fmap)
        clusters = []
        for cls, n in sorted((class_counts or {}).items()):
            cluster = EmptyCluster(
                f"{label('cases', lang)} · {class_names.get(cls, cls)} ({n})", key=cls
            )
            cluster.add_to(fmap)
            clusters.append(cluster)
        RemoteCases(data_url, heat, clusters).add_to(fmap)
    elif has_cases:
        xy = np.column_stack([cases.geometry.y, cases.geometry.x]).round(6)
        HeatMap(xy.tolist(), name=label("heatmap", lang), radius=14, blur=12).add_to(fmap)
        colours, _overdue = case_colours(cases, now)
        palette = sorted(set(colours))
        colour_index = {c: i for i, c in enumerate(palette)}
        class_of = cases["category_code"].astype(str).str[:2]
        records = cases.to_dict("records")
        for cls in sorted(class_of.unique()):
            idx = np.flatnonzero((class_of == cls).to_numpy())
            rows = [
                [
                    float(xy[i, 0]),
                    float(xy[i, 1]),
                    colour_index[colours[i]],
                    _case_tooltip(records[i], lang, category_names),
                ]
                for i in idx
            ]
            name = class_names.get(cls, cls)
            FastMarkerCluster(
                rows,
                callback=_CASE_CALLBACK % json.dumps(palette),
                name=f"{label('cases', lang)} · {name} ({len(idx)})",
            ).add_to(fmap)
    notes = [f"{period[0]} – {period[1]}"] if period else []
    legend = _case_legend(lang)
    legend = Legend("case_status", legend.title, legend.entries, shape="dot", notes=notes)
    add_chrome(fmap, label("title_cases", lang), [legend])
    return fmap
