"""Coverage shares on hand-checked examples, isochrones, and siting (never worse than doing
nothing; equal to brute force on tiny instances); then the HTTP routes and the CLI."""

from __future__ import annotations

import itertools
import json
import os

import geopandas as gpd
import httpx
import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from api.cli import app as cli_app
from api.settings import Settings
from gis.db.engine import make_engine, make_sessionmaker, migrate
from gis.network import build_road_graph, snap_points
from gis.stations import (
    brute_force_covering,
    compute_coverage,
    isochrone_polygon,
    site_stations,
)
from tests.server import serve
from tests.walk_bruteforce import (
    BLOCKS,
    COMMUNITY,
    GRID_E,
    GRID_W,
    LADDER,
    brute_walk_m,
    lines_gdf,
    seed_blocks_district,
    to_lonlat,
)

#: One straight street, 2 km, a station at its west end and four buildings 10 m off it::
#:
#:     S=(0,0) ===============================================================> (2000,0)
#:               B1 (300,10) hh 10   B2 (700,10) hh 20 | B3 (1000,10) hh 30   B4 (1500,10) hh 40
#:               ------------ grid G1 ----------------- | ------------ grid G2 ------------
#:
#: Walks: 310, 710, 1010, 1510 m; at 80 m/min the 5/10/15-minute circles are 400/800/1200 m.
STREET = [[(0, 0), (2000, 0)]]
HOUSES = [("B1", 300, 10, "G1"), ("B2", 700, 20, "G1"), ("B3", 1000, 30, "G2"),
          ("B4", 1500, 40, "G2")]  # fmt: skip


def _points_gdf(rows, **columns) -> gpd.GeoDataFrame:
    xy = [(r[0], r[1]) for r in rows]
    return gpd.GeoDataFrame(columns, geometry=shapely.points(to_lonlat(xy)), crs=4326)


def _houses() -> gpd.GeoDataFrame:
    return _points_gdf(
        [(x, 10) for _, x, _, _ in HOUSES],
        code=[h[0] for h in HOUSES],
        households=[h[2] for h in HOUSES],
        grid_code=[h[3] for h in HOUSES],
        community_code="C1",
    )


def test_coverage_shares_hand_checked():
    station = _points_gdf([(0, 0)], code=["S"])
    cov = compute_coverage(build_road_graph(lines_gdf(STREET)), _houses(), station)
    np.testing.assert_allclose(cov.buildings["walk_m"], [310, 710, 1010, 1510], atol=0.05)
    grids = cov.by_grid.set_index("grid_code")
    assert grids.loc["G1", ["share_5min", "share_10min", "share_15min"]].tolist() == (
        pytest.approx([10 / 30, 1.0, 1.0])
    )
    assert grids.loc["G2", ["share_5min", "share_10min", "share_15min"]].tolist() == (
        pytest.approx([0.0, 0.0, 30 / 70])
    )
    community = cov.by_community.set_index("community_code").loc["C1"]
    assert [community[f"share_{m}min"] for m in (5, 10, 15)] == pytest.approx([0.1, 0.3, 0.6])
    assert cov.uncovered["code"].tolist() == ["B4"]
    assert set(cov.buildings["station_code"]) == {"S"}
    assert cov.network is True

    # No network: straight line x 1.3 (300.2 -> 390 m, 700.1 -> 910 m, 1000 -> 1300 m).
    flat = compute_coverage(None, _houses(), station)
    assert flat.network is False and "detour" in flat.method
    grids = flat.by_grid.set_index("grid_code")
    assert grids.loc["G1", ["share_5min", "share_10min", "share_15min"]].tolist() == (
        pytest.approx([1 / 3, 1 / 3, 1.0])
    )
    assert grids.loc["G2", "share_15min"] == 0
    assert flat.uncovered["code"].tolist() == ["B3", "B4"]


def test_isochrone_is_the_reachable_street_buffered():
    graph = build_road_graph(lines_gdf(BLOCKS))
    origin = snap_points(graph, graph.to_metric(to_lonlat([(150, 400)])))
    poly = isochrone_polygon(graph, origin, limit_m=300, buffer_m=20)

    def covers(x, y) -> bool:
        return poly.covers(shapely.Point(graph.to_metric(to_lonlat([(x, y)]))[0]))

    # 150 m to A or B, then 150 m further down A-D and B-E; along A-B in both directions.
    assert covers(0, 400) and covers(300, 400) and covers(0, 260) and covers(300, 260)
    assert covers(440, 400)  # B then 140 m towards C
    assert not covers(0, 200) and not covers(300, 200) and not covers(500, 400)
    assert not covers(150, 200)  # the block interior is not walkable


# --------------------------------------------------------------------- siting


def _tiny_instance(seed: int, n_houses: int = 10, n_cand: int = 6):
    rng = np.random.default_rng(seed)
    houses_xy = rng.uniform((-20, -20), (320, 120), (n_houses, 2))
    cand_xy = rng.uniform((0, 0), (300, 100), (n_cand, 2))
    hh = rng.integers(1, 50, n_houses)
    houses = _points_gdf(houses_xy, code=[f"B{i}" for i in range(n_houses)], households=hh)
    existing = _points_gdf([(0, 0)], code=["S"])
    candidates = _points_gdf(cand_xy, code=[f"C{j}" for j in range(n_cand)])
    walk = np.array([[brute_walk_m(LADDER, c, h) for h in houses_xy] for c in cand_xy])
    base = np.array([brute_walk_m(LADDER, (0, 0), h) for h in houses_xy])
    return houses, existing, candidates, walk, base, hh.astype(float)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("p", [1, 2])
def test_max_covering_equals_brute_force(seed, p):
    houses, existing, candidates, walk, base, hh = _tiny_instance(seed)
    radius = 120.0
    graph = build_road_graph(lines_gdf(LADDER))
    result = site_stations(graph, houses, existing, candidates, radius_m=radius, p=p)
    uncovered = base > radius
    best = brute_force_covering(walk <= radius, hh * uncovered, p)
    gained = result.after["households_covered"] - result.before["households_covered"]
    assert gained == pytest.approx(best)
    assert result.before["households_covered"] == pytest.approx(hh[~uncovered].sum())
    assert result.sites["households_newly_covered"].sum() == gained
    assert len(result.chosen) <= p


@pytest.mark.parametrize("seed", [4, 5])
def test_p_median_equals_brute_force(seed):
    houses, existing, candidates, walk, base, hh = _tiny_instance(seed)
    graph = build_road_graph(lines_gdf(LADDER))
    p = 2
    result = site_stations(
        graph, houses, existing, candidates, radius_m=100, p=p, objective="median", reach_m=1e5
    )
    best = min(
        float((np.minimum(base, walk[list(c)].min(axis=0)) * hh).sum() / hh.sum())
        for c in itertools.combinations(range(len(walk)), p)
    )
    assert result.after["mean_walk_m"] == pytest.approx(best, abs=0.05)


@pytest.mark.parametrize("objective", ["coverage", "median"])
def test_siting_is_never_worse_than_doing_nothing(objective):
    graph = build_road_graph(lines_gdf(BLOCKS))
    rng = np.random.default_rng(9)
    for _ in range(4):
        houses = _points_gdf(
            rng.uniform(-50, 650, (40, 2)),
            code=[f"B{i}" for i in range(40)],
            households=rng.integers(0, 80, 40),
        )
        existing = _points_gdf(rng.uniform(0, 600, (2, 2)), code=["S1", "S2"])
        cands = _points_gdf(rng.uniform(0, 600, (8, 2)), code=[f"C{j}" for j in range(8)])
        for p in (1, 3):
            for g in (graph, None):
                r = site_stations(
                    g, houses, existing, cands, radius_m=150, p=p, objective=objective
                )
                assert r.after["households_covered"] >= r.before["households_covered"]
                assert r.after["mean_walk_m"] <= r.before["mean_walk_m"] + 1e-9
                assert r.status in ("Optimal", "none") or r.status.startswith("no ")


# ---------------------------------------------------------- HTTP and the CLI

HOODS = [
    {"code": "S1", "name": "一号", "kind": "neighbourhood", "x_m": 10, "y_m": 200,
     "opening_hours": "24/7"},
    {"code": "S3", "name": "三号", "kind": "neighbourhood", "x_m": 590, "y_m": 390,
     "opening_hours": "24/7"},
]  # fmt: skip
BUILDINGS = [
    {"code": f"B{i}", "households": hh, "x_m": x, "y_m": y}
    for i, (x, y, hh) in enumerate(
        [(20, 370, 30), (150, 20, 40), (280, 210, 50), (450, 10, 60), (620, 120, 70),
         (640, 20, 80), (500, 390, 90)]
    )
]  # fmt: skip


def _seed(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    seed_blocks_district(make_sessionmaker(engine), HOODS, BUILDINGS)
    engine.dispose()


def _expected_walks() -> dict[str, float]:
    return {
        b["code"]: min(
            brute_walk_m(BLOCKS, (s["x_m"], s["y_m"]), (b["x_m"], b["y_m"])) for s in HOODS
        )
        for b in BUILDINGS
    }


def test_coverage_and_siting_over_http(store_url, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    _seed(store_url)
    walks = _expected_walks()
    settings = Settings(database_url=store_url, data_dir=tmp_path)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=60) as api:
        body = api.get(
            "/api/v1/coverage",
            params={"kind": "neighbourhood", "minutes": "5,10", "buildings": "true",
                    "isochrones": "true"},
        ).json()  # fmt: skip
        assert body["walk"]["network"] is True
        got = {b["code"]: b["walk_m"] for b in body["buildings"]}
        for code, walk in walks.items():
            assert got[code] == pytest.approx(walk, abs=0.1)
        hh = {b["code"]: b["households"] for b in BUILDINGS}
        grid_of = {b["code"]: GRID_W if b["x_m"] < 300 else GRID_E for b in BUILDINGS}
        for grid in body["grids"]:
            mine = [c for c in hh if grid_of[c] == grid["grid_code"]]
            for m in (5, 10):
                near = sum(hh[c] for c in mine if walks[c] <= 80 * m)
                assert grid[f"share_{m}min"] == pytest.approx(near / sum(hh[c] for c in mine))
        assert body["communities"][0]["community_code"] == COMMUNITY
        far = sorted(c for c, w in walks.items() if w > 800)
        assert sorted(f["id"] for f in body["uncovered"]["features"]) == far
        assert body["uncovered"]["numberMatched"] == len(far)
        assert len(body["isochrones"]["features"]) == 2 * 2

        siting = api.post(
            "/api/v1/stations/siting",
            json={"kind": "neighbourhood", "p": 1, "radius_m": 200, "candidates": "buildings"},
        ).json()
        assert siting["solver"] == "HiGHS" and siting["status"] == "Optimal"
        assert siting["after"]["households_covered"] >= siting["before"]["households_covered"]
        assert len(siting["sites"]) == 1 and siting["sites"][0]["households_newly_covered"] > 0

        r = api.get("/api/v1/coverage", params={"kind": "neighbourhood", "minutes": "five"})
        assert r.status_code == 400 and r.json()["problems"][0]["parameter"] == "minutes"
        r = api.get("/api/v1/coverage", params={"kind": "bathhouse"})
        assert r.status_code == 400 and "party_service" in r.json()["message"]
        r = api.post("/api/v1/stations/siting", json={"kind": "neighbourhood", "p": 1,
                                                      "radius_m": 6000})  # fmt: skip
        assert r.status_code == 400 and r.json()["problems"][0]["parameter"] == "radius_m"


def test_cli_coverage_and_site(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    _seed(url)
    for name in list(os.environ):
        if name.startswith("WANGGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANGGE_DATABASE_URL", url)
    runner = CliRunner()
    out = tmp_path / "walks.geojson"
    result = runner.invoke(
        cli_app, ["coverage", "--kind", "neighbourhood", "--minutes", "5,10", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert COMMUNITY in result.output and "street network" in result.output
    written = gpd.read_file(out)
    assert sorted(written.loc[written["uncovered"], "code"]) == sorted(
        c for c, w in _expected_walks().items() if w > 800
    )
    result = runner.invoke(
        cli_app, ["site", "--kind", "neighbourhood", "--p", "2", "--radius-m", "200"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output[result.output.index("{") :])
    assert answer["after"]["households_covered"] >= answer["before"]["households_covered"]
    result = runner.invoke(cli_app, ["coverage", "--kind", "spa"])
    assert result.exit_code == 1 and "neighbourhood" in result.output
