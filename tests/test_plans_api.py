"""Plans over real HTTP on both stores: propose, compare, handover, apply, upload a redraw.

The district is the demo's "tiny" preset (two communities, nine grids, ~520 buildings,
one grid over the band), loaded into a fresh store for each test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
import shapely
import sqlalchemy as sa

from api.settings import Settings
from data.demo import generate_district
from data.loader import load_district
from gis.cases import OPEN_STATUSES
from gis.db import plans_repo, repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import Area, Building, Case, Generation
from tests.server import serve

PLANNER = {"X-Wangge-Role": "planner", "X-Wangge-User": "planner-1"}
DISPATCHER = {"X-Wangge-Role": "dispatcher"}
QUICK = {"time_limit_s": 2.0, "processes": 1}


@pytest.fixture(scope="module")
def tiny():
    return generate_district("tiny")


@pytest.fixture
def sessions(store_url, tiny):
    engine = make_engine(store_url)
    makers = make_sessionmaker(engine)
    load_district(makers, tiny)
    yield makers
    engine.dispose()


@pytest.fixture
def api(sessions, store_url, tmp_path, monkeypatch) -> Iterator[httpx.Client]:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    settings = Settings(database_url=store_url, data_dir=tmp_path)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=120) as client:
        yield client


def snapshot(sessions) -> dict:
    """Everything an apply may touch, to show that a refused one touched nothing."""
    with sessions() as s:
        return {
            "generations": s.execute(
                sa.select(Generation.name, Generation.status).order_by(Generation.id)
            ).all(),
            "areas": s.scalar(sa.select(sa.func.count()).select_from(Area)),
            "buildings": s.execute(
                sa.select(Building.code, Building.grid_code).order_by(Building.code)
            ).all(),
            "cases": s.execute(
                sa.select(Case.code, Case.grid_code, Case.generation_id).order_by(Case.code)
            ).all(),
            "plans": plans_repo.list_plans(s),
        }


def propose(api: httpx.Client) -> dict:
    response = api.post("/api/v1/plans", json=QUICK, headers=PLANNER)
    assert response.status_code == 201, response.text
    return response.json()


def test_propose_compare_handover_and_apply(api, sessions):
    plan = propose(api)
    assert plan["status"] == "proposed"
    assert plan["metrics_before"]["totals"]["outside_band"] >= 1
    assert plan["metrics_after"]["totals"]["outside_band"] == 0
    assert {c["status"] for c in plan["communities"]} <= {"optimal", "feasible", "unchanged"}
    moved = plan["metrics_after"]["totals"]["moved_buildings"]
    assert moved > 0

    read = api.get(f"/api/v1/plans/{plan['id']}").json()
    assert read["metrics_after"] == plan["metrics_after"]
    compare = api.get(f"/api/v1/plans/{plan['id']}/compare", params={"with": "active"}).json()
    assert compare["buildings_differing"] == moved
    handover = api.get(f"/api/v1/plans/{plan['id']}/handover").json()
    assert sum(len(h["buildings"]) for h in handover) == moved
    assert all(h["from_worker"] and h["to_worker"] for h in handover)
    grids = api.get(f"/api/v1/plans/{plan['id']}/grids").json()
    assert grids["type"] == "FeatureCollection" and grids["features"]

    # Only a planner may switch a plan on; the refusal changes nothing.
    before = snapshot(sessions)
    refused = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=DISPATCHER)
    assert refused.status_code == 403
    assert snapshot(sessions) == before

    applied = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert applied.status_code == 200, applied.text
    result = applied.json()
    assert result["buildings_moved"] == moved
    with sessions() as s:
        active = repo.require_active_generation(s)
        assert active.name == result["generation"]
        grid_of = dict(s.execute(sa.select(Building.code, Building.grid_code)).all())
        for item in handover:
            assert all(grid_of[b] == item["to_grid"] for b in item["buildings"])
        # Every open case now belongs to the new generation (re-routed in the same apply).
        gens = set(s.scalars(sa.select(Case.generation_id).where(Case.status.in_(OPEN_STATUSES))))
        assert gens == {active.id}
        # The new generation's grids tile their communities.
        grids_gdf, _ = repo.areas_gdf(s, active.id, level="grid")
        comms, _ = repo.areas_gdf(s, active.id, level="community")
        from gis.topology import check_grid_layer

        assert (
            check_grid_layer(
                grids_gdf["code"],
                grids_gdf["parent_code"],
                grids_gdf.geometry.values,
                comms["code"],
                comms.geometry.values,
            )
            == []
        )
    again = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert again.status_code == 409


def test_apply_that_fails_validation_changes_nothing(api, sessions):
    plan = propose(api)
    # Shrink one derived grid: its community now has a gap.
    with sessions() as s, s.begin():
        grids = plans_repo.plan_grids_gdf(s, plan["id"])
        code = grids["code"].iloc[0]
        smaller = shapely.buffer(grids.geometry.iloc[0], -0.0003)
        t = plans_repo.plan_grids_table
        s.execute(
            sa.update(t)
            .where(t.c.plan_id == plan["id"], t.c.code == code)
            .values(geom=sa.func.ST_GeomFromText(shapely.multipolygons([smaller]).wkt, 4326))
        )
    before = snapshot(sessions)
    response = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(p["problem"] == "gap" for p in body["problems"])
    assert snapshot(sessions) == before


def test_upload_redraw_is_validated_and_compared(api, sessions):
    with sessions() as s:
        gen = repo.require_active_generation(s)
        grids, _ = repo.areas_gdf(s, gen.id, level="grid")
    community = sorted(set(grids["parent_code"]))[0]
    mine = grids[grids["parent_code"] == community].reset_index(drop=True)
    # The planner merges the first two grids in QGIS and keeps the first code.
    merged = shapely.union_all(mine.geometry.iloc[:2].values)
    layer = mine.iloc[1:].copy()
    layer.loc[layer.index[0], "code"] = mine["code"].iloc[0]
    layer.loc[layer.index[0], "geometry"] = merged
    body = json.loads(layer[["code", "parent_code", "geometry"]].to_json())
    response = api.post("/api/v1/plans/upload", json=body, headers=PLANNER)
    assert response.status_code == 201, response.text
    plan = response.json()
    assert plan["kind"] == "upload"
    after = {g["grid"]: g for g in plan["metrics_after"]["grids"]}
    assert mine["code"].iloc[1] not in after
    handover = api.get(f"/api/v1/plans/{plan['id']}/handover").json()
    assert {h["from_grid"] for h in handover} == {mine["code"].iloc[1]}
    applied = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert applied.status_code == 200, applied.text

    # An overlapping layer is refused whole, naming the problem.
    bad = mine.copy()
    bad.loc[0, "geometry"] = shapely.buffer(bad.geometry.iloc[0], 0.001)
    body = json.loads(bad[["code", "parent_code", "geometry"]].to_json())
    refused = api.post("/api/v1/plans/upload", json=body, headers=PLANNER)
    assert refused.status_code == 400
    assert {p["problem"] for p in refused.json()["problems"]} >= {"outside", "overlap"}


def test_workload_endpoint(api):
    response = api.get("/api/v1/workload", params={"level": "grid"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["grids"]) == 9
    assert {"households", "case_load", "patrol_km", "score", "share_of_mean"} <= set(
        body["grids"][0]
    )
    assert sum(c["outside_band"] for c in body["communities"]) >= 1
    one = api.get("/api/v1/workload", params={"parent": body["communities"][0]["community_code"]})
    assert len(one.json()["communities"]) == 1
    assert api.get("/api/v1/workload", params={"parent": "999"}).status_code == 404
    assert api.post("/api/v1/plans", json=QUICK).status_code == 403
