"""The map renderers (pure) and the served /maps pages on both stores.

The hand-drawn district used by the renderer tests (lon/lat):

          123.40      123.41      123.42
    41.81  +-----------+-----------+
           |    001    |    002    |      001: 300 households, 002: 500
           |  S1       |           |      community mean 400: 75 % and 125 %
    41.80  +-----------+-----------+
                                S2        S2 (health) just outside, 123.425 41.799
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import folium
import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.geometry
import sqlalchemy as sa
from shapely import LineString, Point, box

from api.settings import Settings
from data.demo import generate_district
from data.loader import load_district
from gis.cases import Actor
from gis.crs import wgs84_to_gcj02
from maps import render_cases, render_coverage, render_nearest, render_worker_area
from maps.assets import STATIC_DIR, localise_assets, render_html, write_map_file
from maps.basemap import Basemap, parse_basemap
from maps.layers import SHARE_COLOURS, Legend, share_legend_entries
from tests.server import serve

COMMUNITY = "210102001001"
G1, G2 = f"{COMMUNITY}001", f"{COMMUNITY}002"
GCJ02 = parse_basemap("gcj02:http://tiles.intranet/{z}/{x}/{y}.png")


def _grids() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "code": [G1, G2],
            "name": ["一网格", "二网格"],
            "parent_code": [COMMUNITY, COMMUNITY],
            "households": [300, 500],
            "worker": ["王芳", "李强"],
        },
        geometry=[box(123.40, 41.80, 123.41, 41.81), box(123.41, 41.80, 123.42, 41.81)],
        crs=4326,
    )


def _area(code: str, level_box) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"code": [code], "name": ["x"]}, geometry=[level_box], crs=4326)


def _stations() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "code": ["S1", "S2"],
            "name": ["南京驿站", "健康小站"],
            "kind": ["neighbourhood", "health"],
            "opening_hours": ["Mo-Su 08:00-20:00", "24/7"],
        },
        geometry=[Point(123.405, 41.805), Point(123.425, 41.799)],
        crs=4326,
    )


def _coverage(**kwargs) -> folium.Map:
    return render_coverage(
        kwargs.pop("grids", _grids()),
        _area(COMMUNITY, box(123.40, 41.80, 123.42, 41.81)),
        _area("210102001", box(123.40, 41.80, 123.42, 41.81)),
        _stations(),
        **kwargs,
    )


def _contains(html: str, text: str) -> bool:
    """`text` in the page as is or as folium writes it into JavaScript (\\uXXXX escapes)."""
    return text in html or json.dumps(text)[1:-1] in html


def _children(fmap: folium.Map, kind: type) -> list:
    return [c for c in fmap._children.values() if isinstance(c, kind)]


def _geojson_layers(fmap: folium.Map) -> dict[str, folium.GeoJson]:
    return {c.layer_name: c for c in _children(fmap, folium.GeoJson)}


def test_coverage_layers_and_legend():
    fmap = _coverage()
    layers = _geojson_layers(fmap)
    assert list(layers) == [
        "网格 (2)",
        "社区边界",
        "街道边界",
        "驿站 · 近邻驿站 (1)",
        "驿站 · 健康驿站 (1)",
    ]
    radius = [c for c in _children(fmap, folium.FeatureGroup) if "步行圈" in c.layer_name]
    assert len(radius) == 1 and len(radius[0]._children) == 2  # one circle per station
    circles = radius[0]._children.values()
    assert [c.options["radius"] for c in circles] == [500, 500]  # 10-minute life circle
    legends = {lg.key: lg for lg in _children(fmap, Legend)}
    assert set(legends) == {"share", "station_kind", "coverage"}
    assert "直线" in legends["coverage"].inner_html  # says the radius is a straight line
    assert "户数" in legends["share"].title and "工作量" in legends["share"].title
    assert legends["share"].entries == share_legend_entries("zh")
    assert [e[0] for e in legends["share"].entries][:2] == ["< 70%", "70–85%"]
    assert legends["station_kind"].entries == [("近邻驿站", "#1b9e77"), ("健康驿站", "#1f78b4")]
    assert len(_children(fmap, folium.LayerControl)) == 1


def test_coverage_colours_grids_by_household_share():
    grids = _geojson_layers(_coverage())["网格 (2)"]
    props = {f["id"]: f["properties"] for f in grids.data["features"]}
    assert props[G1]["share_pct"] == 75.0 and props[G2]["share_pct"] == 125.0
    styles = {f["id"]: grids.style_function(f) for f in grids.data["features"]}
    assert styles[G1]["fillColor"] == SHARE_COLOURS[1]  # 70–85 %
    assert styles[G2]["fillColor"] == SHARE_COLOURS[5]  # 115–130 %
    assert props[G1]["worker"] == "王芳" and props[G1]["households"] == 300


def test_coverage_uses_workload_share_when_present():
    fmap = _coverage(grids=_grids().assign(workload_share=[1.0, 1.4]), lang="en")
    legend = next(lg for lg in _children(fmap, Legend) if lg.key == "share")
    assert legend.title == "Grid workload, % of community mean"
    grids = _geojson_layers(fmap)["Grids (2)"]
    assert [f["properties"]["share_pct"] for f in grids.data["features"]] == [100.0, 140.0]


def _isochrones() -> gpd.GeoDataFrame:
    """S1 and a second neighbourhood station overlapping it, and S2 (health)."""
    return gpd.GeoDataFrame(
        {
            "station_code": ["S1", "S3", "S2"],
            "kind": ["neighbourhood", "neighbourhood", "health"],
            "minutes": [10, 10, 10],
        },
        geometry=[
            Point(123.405, 41.805).buffer(0.004),
            Point(123.408, 41.805).buffer(0.004),
            Point(123.425, 41.799).buffer(0.004),
        ],
        crs=4326,
    )


def test_coverage_draws_isochrones_per_kind_and_uncovered_buildings_when_given():
    uncovered = gpd.GeoDataFrame(
        {"code": ["B9"], "households": [40], "walk_min": [17.5]},
        geometry=[Point(123.419, 41.809)],
        crs=4326,
    )
    fmap = _coverage(isochrones_gdf=_isochrones(), uncovered_gdf=uncovered)
    layers = _geojson_layers(fmap)
    iso_names = [n for n in layers if n.startswith("步行等时圈")]
    assert iso_names == ["步行等时圈 · 健康驿站 (10分钟)", "步行等时圈 · 近邻驿站 (10分钟)"]
    # The two overlapping neighbourhood isochrones become one shape, not two stacked fills.
    near = layers["步行等时圈 · 近邻驿站 (10分钟)"].data["features"]
    assert len(near) == 1 and near[0]["geometry"]["type"] == "Polygon"
    assert near[0]["id"] == "isochrone:neighbourhood:10"
    assert "未覆盖楼栋 (1)" in layers
    props = layers["未覆盖楼栋 (1)"].data["features"][0]["properties"]
    assert props == {"code": "B9", "households": 40, "walk_min": 17.5}
    assert not [c for c in _children(fmap, folium.FeatureGroup) if "步行圈" in c.layer_name]
    legend = next(lg for lg in _children(fmap, Legend) if lg.key == "coverage")
    assert legend.entries[1][0] == "未覆盖楼栋（步行超过10分钟）: 1"
    assert "路网" in legend.inner_html


def test_coverage_fetches_large_layers_from_urls():
    from maps.layers import LOADER_JS, RemoteGeoJson

    fmap = _coverage(
        isochrone_urls={"health": "coverage?layer=isochrones&kind=health",
                        "neighbourhood": "coverage?layer=isochrones&kind=neighbourhood"},
        uncovered_url="coverage?layer=uncovered&minutes=10",
    )  # fmt: skip
    remote = _children(fmap, RemoteGeoJson)
    assert [(r.layer_name, r.show, r.lazy) for r in remote] == [
        ("步行等时圈 · 近邻驿站 (10分钟)", True, False),  # the first kind loads at once
        ("步行等时圈 · 健康驿站 (10分钟)", False, True),  # the others when switched on
        ("未覆盖楼栋", True, False),
    ]
    html = render_html(fmap)
    assert LOADER_JS in html and html.count("wanggeLoad(") == 1 + 3  # helper + one per layer
    assert r'"coverage?layer=uncovered\u0026minutes=10"' in html  # jinja's tojson escapes &
    assert r"data-count-for=\"uncovered\"" in html  # the legend shows the count once loaded
    assert not _geojson_layers(fmap).keys() & {"未覆盖楼栋"}  # nothing inlined


def test_isochrones_and_buildings_feature_collections_for_the_page():
    from maps.render import buildings_feature_collection, isochrones_feature_collection

    fc = isochrones_feature_collection(_isochrones())
    assert [f["id"] for f in fc["features"]] == [
        "isochrone:health:10",
        "isochrone:neighbourhood:10",
    ]
    assert fc["features"][1]["properties"] == {"kind": "neighbourhood", "minutes": 10}
    shifted = isochrones_feature_collection(_isochrones(), basemap=GCJ02)
    a = np.array(_coords({"features": fc["features"][:1]}))
    b = np.array(_coords({"features": shifted["features"][:1]}))
    assert a.shape == b.shape and np.abs(b - a).max() > 0.001  # moved to GCJ-02
    buildings = gpd.GeoDataFrame(
        {"code": ["B1"], "name": ["<b>1号楼</b>"], "households": [12], "walk_min": [np.nan]},
        geometry=[box(123.4, 41.8, 123.4001, 41.8001)],
        crs=4326,
    )
    props = buildings_feature_collection(buildings)["features"][0]["properties"]
    assert props == {"code": "B1", "name": "&lt;b&gt;1号楼&lt;/b&gt;", "households": 12,
                     "walk_min": None}  # fmt: skip


def test_gcj02_basemap_shifts_every_geometry_by_the_gcj02_offset():
    plain, shifted = _geojson_layers(_coverage()), _geojson_layers(_coverage(basemap=GCJ02))
    for name in ("网格 (2)", "驿站 · 近邻驿站 (1)"):
        before = np.array(_coords(plain[name].data))
        after = np.array(_coords(shifted[name].data))
        expected = np.round(wgs84_to_gcj02(before), 6)
        np.testing.assert_allclose(after, expected, atol=2e-6)
        offset_m = np.hypot(*((after - before) * [111_320 * np.cos(np.radians(41.8)), 110_950]).T)
        assert (offset_m > 300).all() and (offset_m < 700).all()  # GCJ-02 is 300–600 m off
    html = render_html(_coverage(basemap=GCJ02))
    assert "http://tiles.intranet/{z}/{x}/{y}.png" in html


def _coords(fc: dict) -> list:
    out = []
    for f in fc["features"]:
        g = f["geometry"]
        if g["type"] == "Point":
            out.append(g["coordinates"])
        else:
            out.extend(c for ring in g["coordinates"] for c in ring)
    return out


def test_coordinates_are_rounded_to_six_decimals():
    grids = _grids()
    grids.geometry = grids.geometry.translate(1.23456789e-7, 0)
    for x, y in _coords(_geojson_layers(_coverage(grids=grids))["网格 (2)"].data):
        assert round(x, 6) == x and round(y, 6) == y


def _residents() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"care_group": ["elderly_alone"], "name": ["秘密老人"]},
        geometry=[Point(123.403, 41.803)],
        crs=4326,
    )


def _worker_area(viewer: Actor | None, area_codes=(COMMUNITY, "210102001")) -> folium.Map:
    grids = _grids().iloc[[0]]
    buildings = gpd.GeoDataFrame(
        {"code": ["B1"], "name": ["1号楼"], "households": [60]},
        geometry=[box(123.402, 41.802, 123.403, 41.8025)],
        crs=4326,
    )
    cases = gpd.GeoDataFrame(
        {
            "code": ["C1", "C2", "C3"],
            "category_code": ["0101", "0201", "0101"],
            "status": ["reported", "in_progress", "closed"],
            "deadline_at": pd.to_datetime(
                ["2026-01-01T00:00Z", "2026-12-01T00:00Z", "2026-01-01T00:00Z"], utc=True
            ),
        },
        geometry=[Point(123.404, 41.804), Point(123.406, 41.806), Point(123.407, 41.807)],
        crs=4326,
    )
    return render_worker_area(
        grids,
        buildings,
        neighbours_gdf=_grids().iloc[[1]],
        cases_gdf=cases,
        stations_gdf=_stations().iloc[[0]],
        residents_gdf=_residents(),
        viewer=viewer,
        area_codes=area_codes,
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )


def test_worker_area_marks_open_cases_and_overdue():
    fmap = _worker_area(Actor("worker", "W1", grid_codes=(G1,)))
    cases = next(c for c in _children(fmap, folium.FeatureGroup) if "未办结" in c.layer_name)
    markers = list(cases._children.values())
    assert len(markers) == 2  # the closed case is not drawn
    assert [m.options["fillColor"] for m in markers] == ["#e31a1c", "#1f78b4"]  # C1 overdue
    assert {"相邻网格", "网格"} <= set(_geojson_layers(fmap))


def _shows_residents(fmap: folium.Map) -> bool:
    html = render_html(fmap)
    assert not _contains(html, "秘密老人")  # names never go on a map, only the care group
    shown = _contains(html, "关爱对象 (1)") and _contains(html, "独居老人")
    hidden = not any(_contains(html, t) for t in ("关爱对象", "独居老人", "elderly"))
    assert shown or hidden  # all or nothing: no stray trace of a resident
    return shown


def test_cared_for_residents_only_for_the_grid_worker_dispatchers_and_admins():
    denied = [
        None,  # anonymous
        Actor("resident", "r"),
        Actor("planner", "p"),
        Actor("department", "d", scope="城管"),
        Actor("worker", "W2", grid_codes=(G2,)),  # a worker of another grid
        Actor("worker", "W0"),  # a worker with no grids
        Actor("dispatcher", "d2", scope="210102002"),  # another street
        Actor("system", "wangge escalate"),
    ]
    for viewer in denied:
        fmap = _worker_area(viewer)
        assert not _shows_residents(fmap), viewer
        assert not [c for c in _children(fmap, folium.FeatureGroup) if "关爱" in c.layer_name]
    allowed = [
        Actor("worker", "W1", grid_codes=(G1, G2)),
        Actor("dispatcher", "d"),
        Actor("dispatcher", "d", scope=COMMUNITY),
        Actor("dispatcher", "d", scope="210102001"),  # the street above the community
        Actor("admin", "a"),
    ]
    for viewer in allowed:
        assert _shows_residents(_worker_area(viewer)), viewer


def test_care_rule_needs_every_grid_of_a_workers_map():
    from maps.render import may_see_cared_for

    worker = Actor("worker", "W1", grid_codes=(G1,))
    assert may_see_cared_for(worker, [G1])
    assert not may_see_cared_for(worker, [G1, G2])
    assert not may_see_cared_for(worker, [])


def test_nearest_draws_routes_minutes_and_open_state():
    stations = _stations().assign(
        minutes=[4.2, 12.0],
        open_now=[True, False],
        route=gpd.GeoSeries(
            [LineString([(123.41, 41.80), (123.405, 41.80), (123.405, 41.805)]), None]
        ),
    )
    fmap = render_nearest((123.41, 41.80), stations, lang="en")
    groups = {c.layer_name: c for c in _children(fmap, folium.FeatureGroup)}
    lines = list(groups["Walking routes"]._children.values())
    assert [len(line.locations) for line in lines] == [3, 2]  # S2 has no route: straight
    assert [line.options.get("dashArray") for line in lines] == [None, "6 6"]
    markers = list(groups["Stations (2)"]._children.values())
    assert [m.options["fillColor"] for m in markers] == ["#1a9641", "#7f7f7f"]
    labels = [
        next(c for c in m._children.values() if isinstance(c, folium.Tooltip)) for m in markers
    ]
    assert [t.text for t in labels] == ["南京驿站 · 4 min · open", "健康小站 · 12 min · closed"]
    assert all(t.options["permanent"] for t in labels)
    html = render_html(fmap)
    assert _contains(html, "Walking minutes: 4")
    legend = _children(fmap, Legend)[0]
    assert "solid: walking route" in legend.inner_html and "dashed" in legend.inner_html


def test_nearest_says_when_minutes_are_a_straight_line_estimate():
    fmap = render_nearest((123.41, 41.80), _stations().assign(minutes=[3.0, 9.0]))
    legend = _children(fmap, Legend)[0]
    assert "直线距离×绕行系数" in legend.inner_html and "路网的步行路线" not in legend.inner_html


def test_cases_heat_map_and_one_cluster_per_class():
    from folium.plugins import FastMarkerCluster, HeatMap

    cases = gpd.GeoDataFrame(
        {
            "code": ["C1", "C2", "C3"],
            "category_code": ["0101", "0102", "0501"],
            "status": ["reported", "closed", "in_progress"],
        },
        geometry=[Point(123.404, 41.804), Point(123.406, 41.806), Point(123.407, 41.807)],
        crs=4326,
    )
    fmap = render_cases(cases, grids_gdf=_grids(), class_names={"01": "市容", "05": "住宅"})
    assert len(_children(fmap, HeatMap)) == 1
    clusters = _children(fmap, FastMarkerCluster)
    assert [c.layer_name for c in clusters] == ["事件 · 市容 (2)", "事件 · 住宅 (1)"]


def test_a_large_case_map_fetches_its_points():
    from maps.layers import EmptyCluster, EmptyHeat, RemoteCases
    from maps.render import cases_feature_collection

    fmap = render_cases(
        None,
        data_url="cases?layer=cases&since=2025-01-01",
        class_counts={"05": 7, "01": 3000},
        grids_gdf=_grids(),
        class_names={"01": "市容", "05": "住宅"},
    )
    assert len(_children(fmap, EmptyHeat)) == 1
    assert [c.layer_name for c in _children(fmap, EmptyCluster)] == [
        "事件 · 市容 (3000)",
        "事件 · 住宅 (7)",
    ]
    assert len(_children(fmap, RemoteCases)) == 1
    html = render_html(fmap)
    assert "leaflet.markercluster.js" in html and "leaflet_heat.min.js" in html
    assert re.findall(r"https?://", html) == []

    cases = gpd.GeoDataFrame(
        {
            "code": ["C1", "C2"],
            "category_code": ["0101", "0501"],
            "status": ["reported", "closed"],
            "deadline_at": pd.to_datetime(["2026-01-01T00:00Z", None], utc=True),
        },
        geometry=[Point(123.404, 41.804), Point(123.406, 41.806)],
        crs=4326,
    )
    fc = cases_feature_collection(
        cases, category_names={"0101": "<暴露垃圾>"}, now=datetime(2026, 6, 1, tzinfo=UTC)
    )
    first, second = (f["properties"] for f in fc["features"])
    assert first["class"] == "01" and first["colour"] == "#e31a1c"  # open, overdue
    assert second["class"] == "05" and second["colour"] == "#33a02c"  # done
    assert "&lt;暴露垃圾&gt;" in first["tooltip"] and "<暴露" not in first["tooltip"]
    assert fc["features"][0]["geometry"]["coordinates"] == [123.404, 41.804]


def test_rendered_pages_load_nothing_from_outside():
    for fmap in (
        _coverage(),
        _worker_area(Actor("admin", "a")),
        render_nearest((123.4, 41.8), _stations().assign(minutes=[1.0, 2.0])),
    ):
        html = render_html(fmap)
        assert re.findall(r"https?://", html) == []
        for ref in re.findall(r'(?:src|href)="(/maps/static/[^"]+)"', html):
            assert (STATIC_DIR / ref.removeprefix("/maps/static/")).is_file()
    # The default CDN lists stay untouched for anyone else using folium in the process.
    assert folium.Map.default_js[0][1].startswith("https://")


def test_licences_are_vendored_with_the_assets():
    for name in ("leaflet/LICENSE", "markercluster/MIT-LICENCE.txt", "heat/LICENSE"):
        assert (STATIC_DIR / name).stat().st_size > 500


def test_write_map_file_copies_assets_beside_it(tmp_path):
    path = write_map_file(_coverage(), tmp_path / "coverage.html")
    html = path.read_text("utf-8")
    refs = re.findall(r'(?:src|href)="(coverage_files/[^"]+)"', html)
    assert len(refs) == 2 and all((tmp_path / r).is_file() for r in refs)
    assert (tmp_path / "coverage_files/leaflet/images/layers.png").is_file()


def test_parse_basemap():
    assert parse_basemap("none") == Basemap()
    osm = parse_basemap("http://tile.local/{z}/{x}/{y}.png")
    assert osm.template == "http://tile.local/{z}/{x}/{y}.png" and not osm.shifts
    assert GCJ02.shifts and GCJ02.template == "http://tiles.intranet/{z}/{x}/{y}.png"
    with pytest.raises(ValueError):
        parse_basemap("http://tile.local/no-placeholders.png")


def test_localise_rejects_an_unknown_cdn_asset():
    from maps.assets import UnknownAsset

    fmap = _coverage()
    folium.plugins.Fullscreen().add_to(fmap)
    with pytest.raises(UnknownAsset):
        localise_assets(fmap)


# ------------------------------------------------------------ served, both stores


@pytest.mark.db
def test_served_maps_on_both_stores(store):
    district = generate_district("tiny")
    load_district(store.sessions, district)
    grids = district.areas[district.areas["level"] == "grid"]
    with serve(Settings(database_url=store.url)) as base:
        with httpx.Client(base_url=base, timeout=60) as client:
            page = client.get("/maps/coverage")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert _contains(page.text, f"网格 ({len(grids)})")
            assert re.findall(r"https?://", page.text) == []
            assert _contains(client.get("/maps/coverage?lang=en").text, f"Grids ({len(grids)})")

            code = grids["code"].iat[0]
            page = client.get(f"/maps/grids/{code}")
            assert page.status_code == 200 and code in page.text
            assert client.get("/maps/grids/999").status_code == 404

            lon, lat = district.stations.geometry.iat[0].coords[0]
            page = client.get("/maps/nearest", params={"lon": lon, "lat": lat, "k": 2})
            assert page.status_code == 200
            assert _contains(page.text, district.stations["name"].iat[0])
            assert client.get("/maps/nearest", params={"lon": 500, "lat": 0}).status_code == 400

            page = client.get("/maps/cases", params={"since": "2025-11-01"})
            assert page.status_code == 200 and "leaflet_heat.min.js" in page.text
            match = re.search(r"var data = (\[\[.*?\]\]);", page.text, re.S)
            assert match and len(json.loads(match.group(1))) > 0
            assert client.get("/maps/cases", params={"category": "x"}).status_code == 400

            _check_served_layers(client, district)
            _check_served_care_rule(client, store, code)

            asset = client.get("/maps/static/leaflet/leaflet.js")
            assert asset.status_code == 200 and b"Leaflet" in asset.content[:400]
            assert client.get("/maps/static/../render.py").status_code == 404


def _check_served_layers(client: httpx.Client, district) -> None:
    """The layers a served map fetches: same route, `layer=...`, GeoJSON, the same
    answers as the API."""
    page = client.get("/maps/coverage", params={"kind": "neighbourhood"})
    assert "coverage?layer=isochrones" in page.text.replace("\\u0026", "&")
    assert "coverage?layer=uncovered" in page.text.replace("\\u0026", "&")
    params = {"kind": "neighbourhood", "minutes": 10}
    layer = client.get("/maps/coverage", params={**params, "layer": "uncovered"})
    assert layer.status_code == 200 and layer.headers["content-type"] == "application/geo+json"
    api = client.get("/api/v1/coverage", params={**params, "limit": 1}).json()
    assert api["walk"]["network"] is True  # the demo stores its streets
    assert len(layer.json()["features"]) == api["uncovered"]["numberMatched"]
    for f in layer.json()["features"]:
        assert (
            f["properties"]["walk_min"] is None or f["properties"]["walk_min"] >= 10
        )  # 2 decimals

    iso = client.get("/maps/coverage", params={**params, "layer": "isochrones"}).json()
    assert [f["id"] for f in iso["features"]] == ["isochrone:neighbourhood:10"]
    shape = shapely.geometry.shape(iso["features"][0]["geometry"])
    stations = district.stations[district.stations["kind"] == "neighbourhood"]
    assert shape.area > 0 and shape.buffer(1e-6).contains(stations.geometry).all()
    assert client.get("/maps/coverage", params={"layer": "nope"}).status_code == 400

    cases = client.get("/maps/cases", params={"layer": "cases", "since": "2000-01-01"})
    assert cases.status_code == 200
    assert len(cases.json()["features"]) == len(district.cases)
    assert {f["properties"]["class"] for f in cases.json()["features"]} == set(
        district.cases["category_code"].str[:2]
    )


def _check_served_care_rule(client: httpx.Client, store, code: str) -> None:
    """A cared-for resident in grid `code` shows on its map for its worker and a
    dispatcher, not for a planner (who may open the map) nor a worker elsewhere."""
    from gis.db.models import Building, CaredResident

    with store.sessions.begin() as session:
        building_id = session.scalar(
            sa.select(Building.id).where(Building.grid_code == code).order_by(Building.id)
        )
        session.add(CaredResident(building_id=building_id, care_group="veterans", name="秘密"))
    workers = client.get("/api/v1/workers", params={"grid": code}).json()["workers"]
    worker = workers[0]["code"]

    def page(**headers) -> str:
        answer = client.get(f"/maps/grids/{code}", headers=headers)
        assert answer.status_code == 200
        assert not _contains(answer.text, "秘密")
        return answer.text

    assert _contains(page(**{"X-Wangge-Role": "dispatcher"}), "退役军人")
    assert _contains(page(**{"X-Wangge-Role": "worker", "X-Wangge-User": worker}), "退役军人")
    assert _contains(page(**{"X-Wangge-Role": "admin"}), "关爱对象 (1)")
    assert not _contains(page(**{"X-Wangge-Role": "planner"}), "退役军人")
    assert not _contains(page(**{"X-Wangge-Role": "planner"}), "关爱对象")


@pytest.mark.db
def test_nearest_map_walks_the_streets_as_the_api_does(store):
    from api.routers.maps import nearest_frame

    district = generate_district("tiny")
    load_district(store.sessions, district)
    lon, lat = 123.43, 41.80
    settings = Settings(database_url=store.url)
    with store.sessions() as session:
        frame, point = nearest_frame(session, settings, lon, lat, 3)
    with serve(settings) as base:
        api = httpx.get(
            f"{base}/api/v1/stations/nearest", params={"lon": lon, "lat": lat, "k": 3}
        ).json()
    assert api["walk"]["network"] is True
    assert list(frame["code"]) == [f["id"] for f in api["features"]]
    assert list(frame["minutes"]) == [f["properties"]["walk_min"] for f in api["features"]]
    for route, f in zip(frame["route"], api["features"], strict=True):
        assert route is not None and len(route.coords) > 2  # along streets, not straight
        assert route.coords[0] == pytest.approx((lon, lat), abs=0.003)
        assert list(route.coords) == [tuple(c) for c in f["properties"]["path"]["coordinates"]]
    fmap = render_nearest(point, frame)
    legend = _children(fmap, Legend)[0]
    assert "路网的步行路线" in legend.inner_html and "直线距离" not in legend.inner_html
