"""The HTTP API over real HTTP, on a real uvicorn server, on both stores.

The district used throughout, drawn in lon/lat (codes are DB11/T 2157 style,
numbered west→east, north→south):

          123.40      123.41      123.42
    41.81  +-----------+-----------+
           |    001    |    002    |      S3 (new_employment)
           |  B1  S1   |           |
    41.805 +-----------*-----------+      * (123.41, 41.805): vertex of all four grids
           |    003    |    004    |
           |  B2       |  B3  S2   |      S2 (health)
    41.80  +-----------+-----------+

Grid codes are community 210102001001 + the three digits shown; the community is
the whole square, inside street 210102001 inside district 210102. That is
generation "initial" (active). Generation "redraw" (staged) splits the same
community into two grids, west 001 and east 002; generation "empty" has no grids.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import pyproj
import pytest
from shapely import Point, box

from api.app import create_app
from api.settings import Settings
from gis.crs import wgs84_to_gcj02
from gis.db import repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.domain import STATION_KINDS
from tests.server import serve

DISTRICT, STREET, COMMUNITY = "210102", "210102001", "210102001001"
G1, G2, G3, G4 = (f"{COMMUNITY}{i:03d}" for i in range(1, 5))
WEST, MID, EAST = 123.40, 123.41, 123.42
SOUTH, MIDDLE, NORTH = 41.80, 41.805, 41.81


def _hierarchy(grids: list[tuple[str, str, tuple[float, float, float, float]]]):
    rows = [
        {
            "code": DISTRICT,
            "name": "和平区",
            "level": "district",
            "parent_code": None,
            "geometry": box(123.30, 41.70, 123.50, 41.90),
        },
        {
            "code": STREET,
            "name": "太原街街道",
            "level": "street",
            "parent_code": DISTRICT,
            "geometry": box(123.38, 41.78, 123.44, 41.83),
        },
        {
            "code": COMMUNITY,
            "name": "南京社区",
            "level": "community",
            "parent_code": STREET,
            "geometry": box(WEST, SOUTH, EAST, NORTH),
        },
    ]
    for code, name, bounds in grids:
        rows.append(
            {
                "code": code,
                "name": name,
                "level": "grid",
                "parent_code": COMMUNITY,
                "geometry": box(*bounds),
            }
        )
    return gpd.GeoDataFrame(rows, crs=4326)


def seed_district(store_url: str) -> None:
    """Write the district of the module docstring through the repository."""
    engine = make_engine(store_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s, s.begin():
            initial = repo.create_generation(s, "initial")
            repo.write_areas(
                s,
                _hierarchy(
                    [
                        (G1, "第一网格", (WEST, MIDDLE, MID, NORTH)),
                        (G2, "第二网格", (MID, MIDDLE, EAST, NORTH)),
                        (G3, "第三网格", (WEST, SOUTH, MID, MIDDLE)),
                        (G4, "第四网格", (MID, SOUTH, EAST, MIDDLE)),
                    ]
                ),
                initial,
            )
            repo.activate_generation(s, initial)
            redraw = repo.create_generation(s, "redraw")
            repo.write_areas(
                s,
                _hierarchy(
                    [
                        (G1, "西网格", (WEST, SOUTH, MID, NORTH)),
                        (G2, "东网格", (MID, SOUTH, EAST, NORTH)),
                    ]
                ),
                redraw,
            )
            repo.create_generation(s, "empty")
        with sessions() as s, s.begin():
            repo.write_buildings(
                s,
                gpd.GeoDataFrame(
                    {
                        "code": ["B1", "B2", "B3"],
                        "name": ["1号楼", "2号楼", "3号楼"],
                        "households": [120, 80, 60],
                        "population": [300, 200, 150],
                        "floors": [6, 18, None],
                        "geometry": [
                            box(123.402, 41.807, 123.403, 41.808),
                            box(123.402, 41.802, 123.403, 41.803),
                            box(123.412, 41.802, 123.413, 41.803),
                        ],
                    },
                    crs=4326,
                ),
            )
            repo.write_stations(
                s,
                gpd.GeoDataFrame(
                    {
                        "code": ["S1", "S2", "S3"],
                        "name": ["南京近邻驿站", "太原健康驿站", "暖新驿站"],
                        "kind": ["neighbourhood", "health", "new_employment"],
                        "services": ["咨询;阅览", "测血压", "饮水;充电"],
                        "opening_hours": ["Mo-Su 08:00-20:00", "Mo-Fr 09:00-17:00", "24/7"],
                        "geometry": [
                            Point(123.405, 41.8075),
                            Point(123.415, 41.8025),
                            Point(123.425, 41.809),
                        ],
                    },
                    crs=4326,
                ),
            )
            repo.write_workers(
                s,
                pd.DataFrame(
                    {
                        "code": ["W1", "W2", "W3"],
                        "name": ["张网格", "李网格", "王社区"],
                        "role": ["grid_worker", "grid_worker", "community_staff"],
                        "grid_codes": [f"{G1};{G2}", G3, ""],
                    }
                ),
            )
    finally:
        engine.dispose()


@pytest.fixture
def settings(store_url, tmp_path, monkeypatch) -> Settings:
    # Only what the test says: no WANGGE_* left over in the environment.
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    return Settings(database_url=store_url, data_dir=tmp_path, page_size_max=50)


@pytest.fixture
def api(settings, store_url) -> Iterator[httpx.Client]:
    """A client of a real server on the seeded district."""
    seed_district(store_url)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def codes(collection: dict) -> list[str]:
    return [f["id"] for f in collection["features"]]


def link(collection: dict, rel: str) -> str | None:
    return next((x["href"] for x in collection["links"] if x["rel"] == rel), None)


def assert_bad_request(response: httpx.Response, parameter: str) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "InvalidInput"
    assert body["message"].startswith(f"query parameter {parameter}:"), body["message"]
    assert body["problems"][0]["parameter"] == parameter
    return body


# ----------------------------------------------------------------- service


def test_index_health_docs_and_openapi(api):
    index = api.get("/").json()
    assert {x["rel"] for x in index["links"]} >= {"service-doc", "service-desc", "api"}
    assert api.get("/healthz").json() == {"status": "ok"}
    docs = api.get("/docs")
    assert docs.status_code == 200
    # The docs page works offline: every script and stylesheet is served by wangge.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(api.get(a).status_code == 200 for a in assets)
    spec = api.get("/openapi.json").json()
    assert spec["info"]["title"] == "wangge" and spec["info"]["description"]
    assert set(spec["paths"]) >= {
        "/api/v1/generations",
        "/api/v1/generations/{name_or_id}",
        "/api/v1/generations/{name_or_id}/activate",
        "/api/v1/areas",
        "/api/v1/areas/{code}",
        "/api/v1/buildings",
        "/api/v1/stations",
        "/api/v1/workers",
        "/api/v1/categories",
        "/api/v1/locate",
        "/api/v1/imports/{layer}",
    }
    # Invalid parameters answer 400, and the document says so instead of FastAPI's 422.
    locate = spec["paths"]["/api/v1/locate"]["get"]
    assert "400" in locate["responses"] and "422" not in locate["responses"]
    for name in api.get("/api/v1").json()["links"]:
        assert api.get(name["href"]).status_code in (200, 400), name  # locate wants lon/lat
    missing = api.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"


def test_unexpected_errors_do_not_leak_tracebacks(settings, store_url, monkeypatch):
    from api import access

    # A route added here needs an access rule like every other (tests/test_access.py).
    monkeypatch.setitem(access.RULES, ("GET", "/boom"), access.Rule(access.EVERYONE))
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with serve(settings, app) as base:
        response = httpx.get(f"{base}/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "InternalError"
    assert "secret" not in response.text and "Traceback" not in response.text


# ------------------------------------------------------------------- areas


def test_areas_filter_by_level_parent_and_bbox(api):
    grids = api.get("/api/v1/areas", params={"level": "grid"})
    assert grids.headers["content-type"].startswith("application/geo+json")
    body = grids.json()
    assert body["type"] == "FeatureCollection"
    assert codes(body) == [G1, G2, G3, G4]
    assert body["numberMatched"] == body["numberReturned"] == 4
    first = body["features"][0]
    assert first["properties"] == {
        "code": G1,
        "name": "第一网格",
        "level": "grid",
        "parent_code": COMMUNITY,
    }
    assert first["geometry"]["type"] == "MultiPolygon"
    ring = np.array(first["geometry"]["coordinates"][0][0])
    assert ring[:, 0].min() == WEST and ring[:, 1].max() == NORTH
    # No coordinate carries more than 7 decimals.
    assert np.allclose(ring, np.round(ring, 7), rtol=0, atol=1e-12)

    children = api.get("/api/v1/areas", params={"parent": COMMUNITY}).json()
    assert codes(children) == [G1, G2, G3, G4]
    everything = api.get("/api/v1/areas").json()
    assert codes(everything) == [DISTRICT, STREET, COMMUNITY, G1, G2, G3, G4]

    west_half = "123.401,41.801,123.409,41.809"
    inside = api.get("/api/v1/areas", params={"level": "grid", "bbox": west_half}).json()
    assert codes(inside) == [G1, G3]
    far = api.get("/api/v1/areas", params={"bbox": "100,20,100.1,20.1"}).json()
    assert far["numberMatched"] == 0 and far["features"] == []


def test_areas_paging_links_repeat_the_query(api):
    page1 = api.get("/api/v1/areas", params={"level": "grid", "limit": 3}).json()
    assert codes(page1) == [G1, G2, G3]
    assert (page1["numberMatched"], page1["numberReturned"]) == (4, 3)
    assert link(page1, "prev") is None
    query = parse_qs(urlsplit(link(page1, "next")).query)
    assert query == {"level": ["grid"], "limit": ["3"], "offset": ["3"]}

    page2 = api.get(link(page1, "next")).json()
    assert codes(page2) == [G4]
    assert link(page2, "next") is None
    assert parse_qs(urlsplit(link(page2, "prev")).query)["offset"] == ["0"]
    assert parse_qs(urlsplit(link(page2, "self")).query)["offset"] == ["3"]

    beyond = api.get("/api/v1/areas", params={"level": "grid", "offset": 10}).json()
    assert beyond["numberMatched"] == 4 and beyond["numberReturned"] == 0


def test_area_by_code_and_generation(api):
    area = api.get(f"/api/v1/areas/{G2}").json()
    assert area["type"] == "Feature" and area["id"] == G2
    assert area["properties"]["name"] == "第二网格"
    staged = api.get(f"/api/v1/areas/{G2}", params={"generation": "redraw"}).json()
    assert staged["properties"]["name"] == "东网格"

    missing = api.get(f"/api/v1/areas/{COMMUNITY}999")
    assert missing.status_code == 404
    assert f"{COMMUNITY}999" in missing.json()["message"]
    assert missing.json()["code"] == f"{COMMUNITY}999"
    assert api.get(f"/api/v1/areas/{G4}", params={"generation": "redraw"}).status_code == 404
    unknown = api.get("/api/v1/areas", params={"generation": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]


def test_bad_parameters_answer_400_naming_them(api):
    for bbox in [
        "1,2,3",
        "a,b,c,d",
        "123.41,41.80,123.40,41.81",
        "123.40,41.80,123.41,95",
        "200,0,201,1",
        "nan,0,1,1",
    ]:
        assert_bad_request(api.get("/api/v1/areas", params={"bbox": bbox}), "bbox")
    assert_bad_request(api.get("/api/v1/buildings", params={"bbox": "1,1,0,0"}), "bbox")

    body = assert_bad_request(api.get("/api/v1/locate", params={"lon": 123.4, "lat": 91}), "lat")
    assert body["message"] == "query parameter lat: must be ≤ 90"
    assert_bad_request(api.get("/api/v1/locate", params={"lon": -181, "lat": 41}), "lon")
    assert_bad_request(api.get("/api/v1/locate", params={"lon": "east", "lat": 41}), "lon")
    missing = assert_bad_request(api.get("/api/v1/locate", params={"lon": 123.4}), "lat")
    assert missing["problems"][0]["problem"] == "is required"

    body = assert_bad_request(api.get("/api/v1/areas", params={"limit": 0}), "limit")
    assert body["message"] == "query parameter limit: must be ≥ 1"
    body = assert_bad_request(api.get("/api/v1/areas", params={"limit": 51}), "limit")
    assert body["message"] == "query parameter limit: must be ≤ 50"  # settings.page_size_max
    assert_bad_request(api.get("/api/v1/stations", params={"offset": -1}), "offset")
    body = assert_bad_request(api.get("/api/v1/areas", params={"level": "village"}), "level")
    assert "grid" in body["message"]
    assert_bad_request(api.get("/api/v1/workers", params={"role": "boss"}), "role")


# ------------------------------------------------------------------ locate


def test_locate_inside_a_grid(api):
    found = api.get("/api/v1/locate", params={"lon": 123.415, "lat": 41.8025}).json()
    assert found["generation"] == "initial"
    assert [(a["level"], a["code"]) for a in found["chain"]] == [
        ("district", DISTRICT),
        ("street", STREET),
        ("community", COMMUNITY),
        ("grid", G4),
    ]
    assert found["grid"] == {"level": "grid", "code": G4, "name": "第四网格"}
    assert found["on_boundary_of"] == []
    assert (found["lon"], found["lat"], found["crs"]) == (123.415, 41.8025, "wgs84")


@pytest.mark.parametrize(
    ("lon", "lat", "owner", "sharing"),
    [
        (MID, 41.8075, G1, [G1, G2]),  # edge between 001 and 002
        (123.415, MIDDLE, G2, [G2, G4]),  # edge between 002 and 004
        (MID, MIDDLE, G1, [G1, G2, G3, G4]),  # the vertex all four share
    ],
)
def test_locate_on_shared_boundaries_lowest_code_wins(api, lon, lat, owner, sharing):
    found = api.get("/api/v1/locate", params={"lon": lon, "lat": lat}).json()
    assert found["grid"]["code"] == owner
    assert found["on_boundary_of"] == sharing


def test_locate_outside_names_the_nearest_grid(api):
    lon, lat = 123.43, 41.807  # east of grid 002, level with its middle
    response = api.get("/api/v1/locate", params={"lon": lon, "lat": lat})
    assert response.status_code == 404
    body = response.json()
    _az, _back, expected_m = pyproj.Geod(ellps="WGS84").inv(lon, lat, EAST, lat)
    assert body["error"] == "NotFound"
    assert body["nearest_grid"]["code"] == G2 and body["nearest_grid"]["name"] == "第二网格"
    assert abs(body["nearest_grid"]["distance_m"] - expected_m) < 1.0
    assert body["message"] == (
        f"point ({lon}, {lat}) is outside every grid of generation initial; "
        f"nearest grid {G2} is {body['nearest_grid']['distance_m']:g} m away"
    )


def test_locate_converts_gcj02_bd09_and_epsg_points(api):
    wgs = np.array([[123.405, 41.8025]])  # inside grid 003
    gcj = wgs84_to_gcj02(wgs)[0]
    offset_m = pyproj.Geod(ellps="WGS84").inv(*wgs[0], *gcj)[2]
    assert 100 < offset_m < 1000  # the obfuscation really moves the point
    found = api.get("/api/v1/locate", params={"lon": gcj[0], "lat": gcj[1], "crs": "gcj02"}).json()
    assert found["grid"]["code"] == G3 and found["crs"] == "gcj02"
    assert found["input"] == {"lon": gcj[0], "lat": gcj[1]}
    assert math.isclose(found["lon"], wgs[0, 0], abs_tol=2e-7)
    assert math.isclose(found["lat"], wgs[0, 1], abs_tol=2e-7)

    utm = pyproj.Transformer.from_crs(4326, 32651, always_xy=True).transform(*wgs[0])
    found = api.get(
        "/api/v1/locate", params={"lon": utm[0], "lat": utm[1], "crs": "EPSG:32651"}
    ).json()
    assert found["grid"]["code"] == G3 and found["crs"] == "EPSG:32651"
    assert math.isclose(found["lon"], wgs[0, 0], abs_tol=2e-7)

    bad = api.get("/api/v1/locate", params={"lon": 123.4, "lat": 41.8, "crs": "mars"})
    assert bad.status_code == 400 and "mars" in bad.json()["message"]


# ------------------------------------------------------------- generations


def test_generations_list_and_activate(api):
    listed = api.get("/api/v1/generations").json()
    assert [(g["name"], g["status"]) for g in listed] == [
        ("initial", "active"),
        ("redraw", "staged"),
        ("empty", "staged"),
    ]
    by_id = api.get(f"/api/v1/generations/{listed[1]['id']}").json()
    assert by_id["name"] == "redraw"
    assert api.get("/api/v1/generations/active").json()["name"] == "initial"
    assert api.get("/api/v1/generations/nope").status_code == 404

    refused = api.post("/api/v1/generations/empty/activate")
    assert refused.status_code == 409
    assert refused.json()["error"] == "Conflict" and "no grids" in refused.json()["message"]

    switched = api.post("/api/v1/generations/redraw/activate")
    assert switched.status_code == 200, switched.text
    assert switched.json()["status"] == "active" and switched.json()["activated_at"]
    statuses = {g["name"]: g["status"] for g in api.get("/api/v1/generations").json()}
    assert statuses == {"initial": "retired", "redraw": "active", "empty": "staged"}
    # Lookups follow the switch at once: this point was in 004, now in the east grid.
    found = api.get("/api/v1/locate", params={"lon": 123.415, "lat": 41.8025}).json()
    assert (found["generation"], found["grid"]["code"]) == ("redraw", G2)
    assert codes(api.get("/api/v1/areas", params={"level": "grid"}).json()) == [G1, G2]


# ------------------------------------------------------ categories, layers


def test_categories_tree(api):
    tree = api.get("/api/v1/categories").json()
    assert len(tree) == 12 and sum(len(c["subclasses"]) for c in tree) == 53
    six = next(c for c in tree if c["code"] == "06")
    sub = next(s for s in six["subclasses"] if s["code"] == "0603")
    assert sub["deadline_h"] == 2
    assert set(sub) >= {"code", "name", "deadline_h", "workload_weight", "department"}


def test_stations_filter_by_kind_and_bbox(api):
    everything = api.get("/api/v1/stations").json()
    assert codes(everything) == ["S1", "S2", "S3"]
    s1 = everything["features"][0]
    assert s1["geometry"] == {"type": "Point", "coordinates": [123.405, 41.8075]}
    assert s1["properties"]["services"] == ["咨询", "阅览"]
    assert codes(api.get("/api/v1/stations", params={"kind": "health"}).json()) == ["S2"]
    assert codes(api.get("/api/v1/stations", params={"kind": "健康驿站"}).json()) == ["S2"]
    in_box = api.get("/api/v1/stations", params={"bbox": "123.40,41.80,123.42,41.81"}).json()
    assert codes(in_box) == ["S1", "S2"]

    body = assert_bad_request(api.get("/api/v1/stations", params={"kind": "spa"}), "kind")
    assert all(kind in body["message"] for kind in STATION_KINDS)


def test_buildings_by_grid_and_community(api):
    everything = api.get("/api/v1/buildings").json()
    assert codes(everything) == ["B1", "B2", "B3"]
    props = {f["id"]: f["properties"] for f in everything["features"]}
    # Routed to the grid covering each footprint when written.
    assert {c: p["grid_code"] for c, p in props.items()} == {"B1": G1, "B2": G3, "B3": G4}
    assert props["B1"]["floors"] == 6 and props["B3"]["floors"] is None
    assert json.dumps(props["B1"]["floors"]) == "6"
    assert codes(api.get("/api/v1/buildings", params={"grid": G3}).json()) == ["B2"]
    community = api.get("/api/v1/buildings", params={"community": COMMUNITY, "limit": 2}).json()
    assert codes(community) == ["B1", "B2"] and community["numberMatched"] == 3


def test_workers_by_grid_and_role(api):
    page = api.get("/api/v1/workers").json()
    assert [w["code"] for w in page["workers"]] == ["W1", "W2", "W3"]
    assert page["workers"][0]["grid_codes"] == [G1, G2]
    assert [
        w["code"] for w in api.get("/api/v1/workers", params={"grid": G2}).json()["workers"]
    ] == ["W1"]
    staff = api.get("/api/v1/workers", params={"role": "community_staff"}).json()
    assert [w["code"] for w in staff["workers"]] == ["W3"]
    first = api.get("/api/v1/workers", params={"limit": 2}).json()
    assert (first["numberMatched"], first["numberReturned"]) == (3, 2)
    assert parse_qs(urlsplit(link(first, "next")).query)["offset"] == ["2"]


# ----------------------------------------------------------------- imports


def _stations_geojson(features: list[dict]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _station(code, kind, lon, lat, name="驿站"):
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"code": code, "name": name, "kind": kind},
    }


def test_import_stations_good_file_then_bad_file(api):
    good = _stations_geojson(
        [
            _station("N1", "convenience", 123.401, 41.801, "便民驿站一"),
            _station("N2", "shared", 123.419, 41.809, "共享驿站二"),
        ]
    )
    created = api.post(
        "/api/v1/imports/stations",
        files={"file": ("new_stations.geojson", good, "application/geo+json")},
    )
    assert created.status_code == 201, created.text
    listed = api.get("/api/v1/stations").json()
    assert codes(listed) == ["N1", "N2", "S1", "S2", "S3"]
    assert codes(api.get("/api/v1/stations", params={"kind": "shared"}).json()) == ["N2"]

    bad = _stations_geojson(
        [
            _station("N3", "convenience", 123.402, 41.802),
            _station("N4", "casino", 123.403, 41.803),  # no such kind
        ]
    )
    refused = api.post(
        "/api/v1/imports/stations",
        files={"file": ("bad_stations.geojson", bad, "application/geo+json")},
    )
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"] == "ImportRejected" and body["problems"]
    problem = body["problems"][0]
    assert set(problem) >= {"feature", "field", "problem"}
    assert (problem["feature"], problem["field"]) == (2, "kind")  # features count from 1
    assert "feature 2" in body["message"] and body["path"] == "bad_stations.geojson"
    # One bad feature refuses the whole file: N3 was not written either.
    assert codes(api.get("/api/v1/stations").json()) == ["N1", "N2", "S1", "S2", "S3"]


def test_import_areas_with_form_fields_and_stations_with_query_crs(api):
    grids = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": box(*bounds).__geo_interface__,
                "properties": {
                    "code": code,
                    "name": name,
                    "level": "grid",
                    "parent_code": COMMUNITY,
                },
            }
            for code, name, bounds in [
                (G1, "北网格", (WEST, MIDDLE, EAST, NORTH)),
                (G2, "南网格", (WEST, SOUTH, EAST, MIDDLE)),
            ]
        ],
    }
    created = api.post(
        "/api/v1/imports/areas",
        files={"file": ("north_south.geojson", json.dumps(grids).encode())},
        data={"generation": "north-south", "activate": "true"},
    )
    assert created.status_code == 201, created.text
    report = created.json()
    assert (report["generation"], report["activated"], report["inserted"]) == (
        "north-south",
        True,
        2,
    )
    found = api.get("/api/v1/locate", params={"lon": 123.415, "lat": 41.8025}).json()
    assert (found["generation"], found["grid"]["code"]) == ("north-south", G2)

    wgs = np.array([[123.406, 41.806]])
    gcj = wgs84_to_gcj02(wgs)[0]
    created = api.post(
        "/api/v1/imports/stations",
        params={"crs": "gcj02"},
        files={"file": ("amap.geojson", _stations_geojson([_station("A1", "health", *gcj)]))},
    )
    assert created.status_code == 201, created.text
    stored = api.get("/api/v1/stations", params={"kind": "health"}).json()["features"]
    a1 = next(f for f in stored if f["id"] == "A1")
    assert np.allclose(a1["geometry"]["coordinates"], wgs[0], atol=2e-7)


def test_import_refuses_unknown_layers_and_large_uploads(api, monkeypatch):
    from api.routers import imports

    unknown = api.post("/api/v1/imports/rivers", files={"file": ("r.geojson", b"{}")})
    assert unknown.status_code == 404
    assert "stations" in unknown.json()["message"]

    # The server runs in this process, so the limit can be lowered for the test.
    monkeypatch.setattr(imports, "MAX_UPLOAD_BYTES", 1000)
    monkeypatch.setattr(imports, "_ENVELOPE_BYTES", 0)
    big = api.post("/api/v1/imports/stations", files={"file": ("big.geojson", b" " * 5000)})
    assert big.status_code == 413 and big.json()["error"] == "UploadTooLarge"
    assert "larger than 1000 bytes" in big.json()["message"]

    # Without a Content-Length (chunked), the handler counts the bytes as it saves them.
    boundary = "wangge-test-boundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.geojson"\r\n'
        "Content-Type: application/geo+json\r\n\r\n" + " " * 5000 + f"\r\n--{boundary}--\r\n"
    ).encode()
    chunked = api.post(
        "/api/v1/imports/stations",
        content=iter([body[:2000], body[2000:]]),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and chunked.json()["error"] == "UploadTooLarge"
