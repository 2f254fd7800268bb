"""GET /api/v1/stations/nearest over real HTTP on both stores, against brute force.

The district is tests/walk_bruteforce.BLOCKS (metres, x east, y north)::

    A(0,400) --P-- B(300,400) ---------- C(600,400)   P = resident at (150, 410)
     |   S1         |  S2                  S3
     |              |                                 G(650,200) S4
     |              |                                /
    D(0,0) ------- E(300,0) ------------------- F(600,0)
                    H

    S1 (10,200)   Mo-Fr 08:30-17:30; Sa 09:00-12:00
    S2 (310,380)  Mo-Su 18:00-02:00
    S3 (590,390)  24/7 (C is a dead end)
    S4 (640,190)  no hours
    H  (300,10)   health, Mo-Fr 08:00-17:00
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pyproj
import pytest

from api.settings import Settings
from gis.crs import wgs84_to_gcj02
from gis.db.engine import make_engine, make_sessionmaker
from gis.stations import nearest_straight
from tests.server import serve
from tests.walk_bruteforce import BLOCKS, brute_walk_m, seed_blocks_district, to_lonlat

STATIONS = [
    {"code": "S1", "name": "一号", "kind": "neighbourhood", "x_m": 10, "y_m": 200,
     "opening_hours": "Mo-Fr 08:30-17:30; Sa 09:00-12:00"},
    {"code": "S2", "name": "二号", "kind": "neighbourhood", "x_m": 310, "y_m": 380,
     "opening_hours": "Mo-Su 18:00-02:00"},
    {"code": "S3", "name": "三号", "kind": "neighbourhood", "x_m": 590, "y_m": 390,
     "opening_hours": "24/7"},
    {"code": "S4", "name": "四号", "kind": "neighbourhood", "x_m": 640, "y_m": 190,
     "opening_hours": None},
    {"code": "H", "name": "健康", "kind": "health", "x_m": 300, "y_m": 10,
     "opening_hours": "Mo-Fr 08:00-17:00"},
]  # fmt: skip
RESIDENT_M = (150, 410)
GEOD = pyproj.Geod(ellps="WGS84")
WEDNESDAY_10 = "2026-11-25T10:00:00"


def _settings(store_url, tmp_path, monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    return Settings(database_url=store_url, data_dir=tmp_path)


def _client(store_url, tmp_path, monkeypatch, *, network) -> Iterator[httpx.Client]:
    engine = make_engine(store_url)
    seed_blocks_district(make_sessionmaker(engine), STATIONS, network=network)
    engine.dispose()
    with (
        serve(_settings(store_url, tmp_path, monkeypatch)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client


@pytest.fixture
def api(store_url, tmp_path, monkeypatch):
    yield from _client(store_url, tmp_path, monkeypatch, network=BLOCKS)


@pytest.fixture
def api_without_network(store_url, tmp_path, monkeypatch):
    yield from _client(store_url, tmp_path, monkeypatch, network=None)


def _resident(**params) -> dict:
    lon, lat = to_lonlat([RESIDENT_M])[0]
    return {"lon": lon, "lat": lat, **params}


def _straight_m(station: dict) -> float:
    (lon0, lat0), (lon1, lat1) = to_lonlat([RESIDENT_M, (station["x_m"], station["y_m"])])
    return GEOD.inv(lon0, lat0, lon1, lat1)[2]


def _codes(body: dict) -> list[str]:
    return [f["id"] for f in body["features"]]


def test_nearest_by_walk_and_straight_match_brute_force(api):
    hoods = [s for s in STATIONS if s["kind"] == "neighbourhood"]
    walk = {s["code"]: brute_walk_m(BLOCKS, RESIDENT_M, (s["x_m"], s["y_m"])) for s in hoods}
    straight = {s["code"]: _straight_m(s) for s in hoods}

    body = api.get(
        "/api/v1/stations/nearest", params=_resident(kind="neighbourhood", k=4, at=WEDNESDAY_10)
    ).json()
    assert body["walk"]["network"] is True
    assert _codes(body) == sorted(walk, key=walk.get)
    for f in body["features"]:
        props = f["properties"]
        assert props["walk_m"] == pytest.approx(walk[f["id"]], abs=0.15)
        assert props["straight_m"] == pytest.approx(straight[f["id"]], abs=0.1)
        assert props["walk_min"] == pytest.approx(walk[f["id"]] / 80, abs=0.06)
        path = np.array(props["path"]["coordinates"])
        np.testing.assert_allclose(path[0], to_lonlat([RESIDENT_M])[0], atol=1e-7)
        np.testing.assert_allclose(path[-1], f["geometry"]["coordinates"], atol=1e-7)
    # S1 is closest in a straight line but across a block on foot.
    assert _codes(body)[0] == "S2"

    body = api.get(
        "/api/v1/stations/nearest",
        params=_resident(kind="neighbourhood", k=2, mode="straight", at=WEDNESDAY_10),
    ).json()
    assert _codes(body) == sorted(straight, key=straight.get)[:2]
    assert all(f["properties"]["path"] is None for f in body["features"])
    for f in body["features"]:  # ranked by straight line, walking metres still reported
        assert f["properties"]["walk_m"] == pytest.approx(walk[f["id"]], abs=0.15)

    # Any kind, k=1: the health station is not nearer than S2.
    assert _codes(api.get("/api/v1/stations/nearest", params=_resident(k=1)).json()) == ["S2"]
    health = api.get("/api/v1/stations/nearest", params=_resident(kind="健康驿站")).json()
    assert _codes(health) == ["H"]


@pytest.mark.parametrize(
    ("at", "open_codes"),
    [
        ("2026-11-24T01:00:00", ["S2", "S3"]),  # Tuesday 01:00: Monday's 18:00-02:00 still runs
        ("2026-11-23T17:00:00Z", ["S2", "S3"]),  # the same instant given in UTC
        ("2026-11-24T03:00:00", ["S3"]),  # after the spill-over
        ("2026-11-28T10:00:00", ["S1", "S3"]),  # Saturday morning: S1's Sa 09:00-12:00
        ("2026-11-29T01:30:00", ["S2", "S3"]),  # Sunday 01:30: Saturday's evening span
        ("2026-11-29T10:00:00", ["S3"]),  # Sunday: S1 is closed all day
        (WEDNESDAY_10, ["S1", "S3"]),
    ],
)
def test_open_now_across_midnight_and_weekdays(api, at, open_codes):
    body = api.get(
        "/api/v1/stations/nearest",
        params=_resident(kind="neighbourhood", k=10, open_now="true", at=at),
    ).json()
    walk = {c: brute_walk_m(BLOCKS, RESIDENT_M, (s["x_m"], s["y_m"]))
            for s in STATIONS for c in [s["code"]]}  # fmt: skip
    assert _codes(body) == sorted(open_codes, key=walk.get)
    assert all(f["properties"]["open"] is True for f in body["features"])
    everything = api.get(
        "/api/v1/stations/nearest", params=_resident(kind="neighbourhood", k=10, at=at)
    ).json()
    flags = {f["id"]: f["properties"]["open"] for f in everything["features"]}
    assert flags["S4"] is None  # no hours: unknown, never "open"
    assert {c for c, v in flags.items() if v} == set(open_codes)


def test_detour_fallback_without_network(api_without_network):
    body = api_without_network.get(
        "/api/v1/stations/nearest", params=_resident(kind="neighbourhood", k=4)
    ).json()
    assert body["walk"]["network"] is False
    assert "detour" in body["walk"]["method"] and body["walk"]["detour_factor"] == 1.3
    hoods = [s for s in STATIONS if s["kind"] == "neighbourhood"]
    straight = {s["code"]: _straight_m(s) for s in hoods}
    assert _codes(body) == sorted(straight, key=straight.get)
    for f in body["features"]:
        props = f["properties"]
        assert props["walk_m"] == pytest.approx(1.3 * straight[f["id"]], abs=0.15)
        assert len(props["path"]["coordinates"]) == 2


def test_bad_input(api):
    far = to_lonlat([(150, 10_600)])[0]  # 10 km north of the district's edge at y = 600 m
    r = api.get("/api/v1/stations/nearest", params={"lon": far[0], "lat": far[1]})
    assert r.status_code == 404
    assert r.json()["distance_to_district_m"] == pytest.approx(10_000, abs=5)
    assert "outside the district" in r.json()["message"]

    r = api.get("/api/v1/stations/nearest", params=_resident(kind="spa"))
    assert r.status_code == 400
    assert "neighbourhood (近邻驿站)" in r.json()["message"] and "health" in r.json()["message"]
    r = api.get("/api/v1/stations/nearest", params=_resident(k=51))
    assert r.status_code == 400 and r.json()["problems"][0]["parameter"] == "k"
    r = api.get("/api/v1/stations/nearest", params=_resident(radius_m=5001))
    assert r.status_code == 400 and r.json()["problems"][0]["parameter"] == "radius_m"
    r = api.get("/api/v1/stations/nearest", params=_resident(mode="fly"))
    assert r.status_code == 400

    # A point given in GCJ-02 lands where its WGS84 twin does.
    wgs = api.get("/api/v1/stations/nearest", params=_resident(k=1)).json()
    gx, gy = wgs84_to_gcj02(np.array([[wgs["query"]["lon"], wgs["query"]["lat"]]]))[0]
    gcj = api.get("/api/v1/stations/nearest", params={"lon": gx, "lat": gy, "crs": "gcj02", "k": 1})
    assert _codes(gcj.json()) == _codes(wgs)
    assert gcj.json()["features"][0]["properties"]["walk_m"] == pytest.approx(
        wgs["features"][0]["properties"]["walk_m"], abs=0.2
    )


def test_nearest_straight_is_exact_against_brute_force():
    rng = np.random.default_rng(11)
    stations = rng.uniform(0, 5000, (300, 2))
    points = rng.uniform(-500, 5500, (2000, 2))
    brute = np.hypot(*(points[:, None, :] - stations[None, :, :]).transpose(2, 0, 1))
    for k in (1, 4):
        idx, dist = nearest_straight(points, stations, k)
        np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :k], rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.take_along_axis(brute, idx, axis=1), dist, atol=1e-9)
