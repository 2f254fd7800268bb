"""Plans over real HTTP on both stores: propose, compare, handover, apply, upload a redraw;
workers on split and merge; the planner's scope; audit rows.

The district is the demo's "tiny" preset (street 210199001 with communities
210199001001 (five grids, 2,185 households) and 210199001002 (four grids, 1,696), one
grid over the band, one grid worker per grid), loaded into a fresh store for each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import shapely
import sqlalchemy as sa

from api.settings import Settings
from data.demo import generate_district
from data.loader import load_district
from gis.cases import OPEN_STATUSES, Actor
from gis.db import audit_repo, plans_repo, repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import Area, AuditEntry, Building, Case, Generation, Worker, WorkerGrid
from gis.errors import Forbidden
from tests.server import serve

PLANNER = {"X-Wangge-Role": "planner", "X-Wangge-User": "planner-1"}
DISPATCHER = {"X-Wangge-Role": "dispatcher"}
QUICK = {"time_limit_s": 2.0, "processes": 1}
STREET = "210199001"
NORTH, SOUTH = "210199001001", "210199001002"


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
            "audit": s.scalar(sa.select(sa.func.count()).select_from(AuditEntry)),
            "worker_grids": s.execute(
                sa.select(WorkerGrid.worker_id, WorkerGrid.grid_code).order_by(
                    WorkerGrid.worker_id, WorkerGrid.grid_code
                )
            ).all(),
        }


def audit_actions(sessions, plan_id) -> list[tuple[str, str]]:
    with sessions() as s:
        rows = audit_repo.entries(s, object_type="plan", object_id=str(plan_id))
    return sorted((r["action"], r["actor"]) for r in rows)


def owners(sessions) -> dict[str, list[str]]:
    with sessions() as s:
        rows = s.execute(
            sa.select(WorkerGrid.grid_code, Worker.code)
            .join(Worker, Worker.id == WorkerGrid.worker_id)
            .order_by(Worker.code)
        ).all()
    out: dict[str, list[str]] = {}
    for grid, worker in rows:
        out.setdefault(grid, []).append(worker)
    return out


def propose(api: httpx.Client, **body) -> dict:
    response = api.post("/api/v1/plans", json=QUICK | body, headers=PLANNER)
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
    doc = api.get(f"/api/v1/plans/{plan['id']}/handover").json()
    handover = doc["handovers"]
    assert sum(len(h["buildings"]) for h in handover) == moved
    assert all(h["from_worker"] and h["to_worker"] for h in handover)
    assert doc["grid_changes"] == []  # same grids: no worker changes
    assert audit_actions(sessions, plan["id"]) == [("plan.propose", "planner:planner-1")]
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
    assert audit_actions(sessions, plan["id"]) == [
        ("plan.apply", "planner:planner-1"),
        ("plan.propose", "planner:planner-1"),
    ]
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
            .values(
                geom=sa.func.ST_GeomFromText(
                    shapely.multipolygons(shapely.get_parts(smaller)).wkt, 4326
                )
            )
        )
    before = snapshot(sessions)
    response = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(p["problem"] == "gap" for p in body["problems"])
    assert snapshot(sessions) == before


def grid_layer(sessions, community: str):
    with sessions() as s:
        gen = repo.require_active_generation(s)
        grids, _ = repo.areas_gdf(s, gen.id, level="grid")
    return grids[grids["parent_code"] == community].reset_index(drop=True)


def as_body(layer) -> dict:
    return json.loads(layer[["code", "parent_code", "geometry"]].to_json())


def merged_layer(mine):
    """The planner merges the first two grids in QGIS and keeps the first code."""
    layer = mine.iloc[1:].copy()
    layer.loc[layer.index[0], "code"] = mine["code"].iloc[0]
    layer.loc[layer.index[0], "geometry"] = shapely.union_all(mine.geometry.iloc[:2].values)
    return layer


WIDE_BAND = {"low": 300, "high": 1200}


def test_upload_redraw_is_staged_validated_and_compared(api, sessions):
    mine = grid_layer(sessions, NORTH)
    kept, retired = mine["code"].iloc[0], mine["code"].iloc[1]
    layer = merged_layer(mine)
    # The merged grid holds 965 households: refused in the default band, naming it.
    refused = api.post("/api/v1/plans/upload", json=as_body(layer), headers=PLANNER)
    assert refused.status_code == 400, refused.text
    assert [(p["grid"], p["problem"]) for p in refused.json()["problems"]] == [(kept, "band")]
    before = snapshot(sessions)
    assert (
        api.post("/api/v1/plans/upload", json=as_body(layer), headers=DISPATCHER).status_code == 403
    )
    assert snapshot(sessions) == before

    response = api.post(
        "/api/v1/plans/upload", json=as_body(layer), params=WIDE_BAND, headers=PLANNER
    )
    assert response.status_code == 201, response.text
    plan = response.json()
    assert plan["kind"] == "upload"
    after = {g["grid"]: g for g in plan["metrics_after"]["grids"]}
    assert retired not in after and after[kept]["households"] == 965
    staged_name = plan["parameters"]["generation"]
    with sessions() as s:
        staged = repo.get_generation(s, staged_name)
        assert staged.status == "staged"
        staged_grids, _ = repo.areas_gdf(s, staged.id, level="grid")
        assert set(staged_grids["code"]) == (
            set(grid_layer(sessions, SOUTH)["code"]) | set(layer["code"])
        )
    doc = api.get(f"/api/v1/plans/{plan['id']}/handover").json()
    assert {h["from_grid"] for h in doc["handovers"]} == {retired}
    assert {h["to_grid"] for h in doc["handovers"]} == {kept}
    # A merge: the merged grid keeps its worker; the retired grid's worker is released.
    (change,) = doc["grid_changes"]
    assert change["change"] == "retired" and change["successor"] == kept
    assert change["workers_go_to"] is None
    assert [w["code"] for w in change["workers_released"]] == [f"WG{retired}"]
    compare = api.get(f"/api/v1/plans/{plan['id']}/compare").json()
    assert compare["buildings_differing"] == plan["metrics_after"]["totals"]["moved_buildings"]
    assert audit_actions(sessions, plan["id"]) == [("plan.upload", "planner:planner-1")]

    applied = api.post(f"/api/v1/plans/{plan['id']}/apply", headers=PLANNER)
    assert applied.status_code == 200, applied.text
    result = applied.json()
    assert result["generation"] == staged_name
    assert result["workers_released"] == [{"worker": f"WG{retired}", "grid": retired}]
    with sessions() as s:
        assert repo.require_active_generation(s).name == staged_name
        assert set(
            s.scalars(sa.select(Building.grid_code).where(Building.community_code == NORTH))
        ) == set(layer["code"])
    held = owners(sessions)
    assert retired not in held and held[kept] == [f"WG{kept}"]


def test_upload_problems_are_named_by_grid(api, sessions):
    mine = grid_layer(sessions, NORTH)
    before = snapshot(sessions)
    # Overlap: the first grid grown into its neighbours (and out of the community).
    bad = mine.copy()
    bad.loc[0, "geometry"] = shapely.buffer(bad.geometry.iloc[0], 0.001)
    refused = api.post("/api/v1/plans/upload", json=as_body(bad), params=WIDE_BAND, headers=PLANNER)
    assert refused.status_code == 400
    problems = refused.json()["problems"]
    assert ("outside", mine["code"].iloc[0]) in {(p["problem"], p.get("grid")) for p in problems}
    overlaps = [p for p in problems if p["problem"] == "overlap"]
    assert overlaps and all(mine["code"].iloc[0] in p["grids"] for p in overlaps)
    # Not contiguous: two grids that do not touch drawn as one, the other code dropped.
    geoms = mine.geometry.values
    a, c = next(
        (i, j)
        for i in range(len(mine))
        for j in range(i + 1, len(mine))
        if not shapely.intersects(geoms[i], geoms[j])
    )
    apart = mine.copy()
    apart.loc[a, "geometry"] = shapely.union_all([geoms[a], geoms[c]])
    apart = apart.drop(index=c)
    refused = api.post(
        "/api/v1/plans/upload",
        json=as_body(apart),
        params={"low": 0, "high": 99999},
        headers=PLANNER,
    )
    assert refused.status_code == 400
    assert [(p["problem"], p["grid"]) for p in refused.json()["problems"]] == [
        ("parts", mine["code"].iloc[a])
    ]
    # A gap names the grids beside it; a duplicate code names both features.
    gap = mine.drop(index=len(mine) - 1)
    refused = api.post(
        "/api/v1/plans/upload", json=as_body(gap), params={"low": 0, "high": 99999}, headers=PLANNER
    )
    (problem,) = [p for p in refused.json()["problems"] if p["problem"] == "gap"]
    assert problem["community"] == NORTH and problem["grids"]
    twice = mine.copy()
    twice.loc[1, "code"] = twice["code"].iloc[0]
    refused = api.post("/api/v1/plans/upload", json=as_body(twice), headers=PLANNER)
    assert refused.status_code == 400
    assert [p["problem"] for p in refused.json()["problems"]] == ["duplicate"]
    assert snapshot(sessions) == before


def test_upload_file_then_wangge_activate_then_plan_apply(api, sessions, store_url, tmp_path):
    """A GeoPackage from QGIS, staged; `wangge activate` switches the boundaries on and
    `wangge plan apply` completes the plan: buildings follow."""
    from typer.testing import CliRunner

    from api.cli import app

    mine = grid_layer(sessions, NORTH)
    layer = merged_layer(mine)
    path = tmp_path / "redraw.gpkg"
    # Written by GDAL in a process of its own: GDAL's SQLite and SpatiaLite (loaded in
    # this one by the embedded store) crash each other.
    source = tmp_path / "redraw.geojson"
    source.write_text(layer[["code", "parent_code", "geometry"]].to_json())
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pyogrio; pyogrio.write_dataframe("
            "pyogrio.read_dataframe(sys.argv[1]), sys.argv[2], layer='grids')",
            str(source),
            str(path),
        ],
        check=True,
    )
    with path.open("rb") as f:
        response = api.post(
            "/api/v1/plans/upload/file",
            files={"file": ("redraw.gpkg", f, "application/geopackage+sqlite3")},
            data={"high": "1200", "name": "north-merge"},
            headers=PLANNER,
        )
    assert response.status_code == 201, response.text
    plan = response.json()
    assert plan["parameters"]["generation"] == "north-merge"
    env = {"WANGGE_DATABASE_URL": store_url, "WANGGE_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    done = runner.invoke(app, ["activate", "north-merge"], env=env)
    assert done.exit_code == 0, done.output
    with sessions() as s:
        assert repo.require_active_generation(s).name == "north-merge"
        stale = s.scalar(
            sa.select(sa.func.count()).where(Building.grid_code == mine["code"].iloc[1])
        )
    assert stale > 0  # activate switches boundaries only
    done = runner.invoke(app, ["plan", "apply", str(plan["id"])], env=env)
    assert done.exit_code == 0, done.output
    with sessions() as s:
        assert not s.scalar(
            sa.select(sa.func.count()).where(Building.grid_code == mine["code"].iloc[1])
        )
        assert plans_repo.get_plan(s, plan["id"])["status"] == "applied"
    assert audit_actions(sessions, plan["id"]) == [
        ("plan.apply", "planner:cli"),
        ("plan.upload", "planner:planner-1"),
    ]


def test_split_and_merge_workers(api, sessions):
    """North (2,185 households in 5 grids) in a 300–400 band needs a sixth grid; south
    (1,696 in 4) in a 450–600 band needs one grid fewer."""
    split = propose(api, parent=NORTH, low=300, high=400, tolerance=1e9)
    (community,) = [c for c in split["communities"] if c["community"] == NORTH]
    assert any(c.startswith("split") for c in community["changes"])
    doc = api.get(f"/api/v1/plans/{split['id']}/handover").json()
    (new,) = doc["grid_changes"]
    assert new["change"] == "new" and new["needs_worker"] and not new["workers"]
    # Proposed: the lightest-loaded worker of a touching grid.
    with sessions() as s:
        grids = plans_repo.plan_grids_gdf(s, split["id"])
    touching = plans_repo._touching(grids)[new["grid"]]
    assert touching and new["proposed_worker"]["code"] in {f"WG{g}" for g in touching}
    loads = {g["grid"]: g["households"] for g in split["metrics_after"]["grids"]}
    assert new["proposed_worker_load"] == min(loads[g] for g in touching)
    assert any(h["to_grid"] == new["grid"] and h["to_worker"] is None for h in doc["handovers"])
    applied = api.post(
        f"/api/v1/plans/{split['id']}/apply", params={"assign_new_grids": True}, headers=PLANNER
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["workers_assigned"] == [
        {"worker": new["proposed_worker"]["code"], "grid": new["grid"]}
    ]
    assert owners(sessions)[new["grid"]] == [new["proposed_worker"]["code"]]

    merge = propose(api, parent=SOUTH, low=450, high=600, tolerance=1e9)
    (community,) = [c for c in merge["communities"] if c["community"] == SOUTH]
    assert any(c.startswith("merge") for c in community["changes"])
    doc = api.get(f"/api/v1/plans/{merge['id']}/handover").json()
    (gone,) = doc["grid_changes"]
    assert gone["change"] == "retired" and gone["workers_released"]
    applied = api.post(f"/api/v1/plans/{merge['id']}/apply", headers=PLANNER)
    assert applied.status_code == 200, applied.text
    assert applied.json()["workers_released"] == [
        {"worker": f"WG{gone['grid']}", "grid": gone["grid"]}
    ]
    assert gone["grid"] not in owners(sessions)


def test_scope_limits_propose_and_apply(sessions):
    """A planner scoped to an area plans inside it; codes are walked up parent_code."""
    quick = plans_repo.balance.BalanceParams(time_limit_s=2.0)
    north = Actor("planner", "n", scope=NORTH)
    with sessions() as s, s.begin():
        plan_id = plans_repo.propose_plan(s, actor=north, params=quick, processes=1)
        assert {c["community"] for c in plans_repo.get_plan(s, plan_id)["communities"]} == {NORTH}
    with sessions() as s, s.begin(), pytest.raises(Forbidden):
        plans_repo.propose_plan(s, actor=north, parent=SOUTH, params=quick, processes=1)
    with sessions() as s, s.begin():
        everywhere = plans_repo.propose_plan(
            s, actor=Actor("planner", "all"), params=quick, processes=1
        )
        touched = sorted(set(plans_repo.plan_grids_gdf(s, everywhere)["parent_code"]))
    assert SOUTH in touched  # the grid over the band is in the south
    before = snapshot(sessions)
    for who in (north, Actor("dispatcher", "d"), Actor("planner", "x", scope="nowhere")):
        with sessions() as s, s.begin(), pytest.raises(Forbidden):
            plans_repo.apply_plan(s, everywhere, actor=who)
    assert snapshot(sessions) == before
    with sessions() as s, s.begin():
        done = plans_repo.apply_plan(s, everywhere, actor=Actor("planner", "st", scope=STREET))
    assert done["communities"] == touched
    # Any code scheme: a staged generation whose codes share no prefixes.
    with sessions() as s, s.begin():
        gen = repo.create_generation(s, "names")
        box = shapely.box(0, 0, 1, 1)
        areas = plans_repo.gpd.GeoDataFrame(
            {
                "code": ["east", "riverside", "hill", "maple", "oak"],
                "name": ["e", "r", "h", "m", "o"],
                "level": ["district", "street", "street", "community", "community"],
                "parent_code": [None, "east", "east", "riverside", "hill"],
            },
            geometry=[box] * 5,
            crs=4326,
        )
        repo.write_areas(s, areas, gen)
        assert plans_repo.outside_scope(s, gen.id, ["maple", "oak"], "riverside") == ["oak"]
        assert plans_repo.outside_scope(s, gen.id, ["maple", "oak"], "east") == []


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
    resident = {"X-Wangge-Role": "resident"}
    assert api.post("/api/v1/plans", json=QUICK, headers=resident).status_code == 403
