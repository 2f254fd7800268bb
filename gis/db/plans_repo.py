"""Workload, balancing plans, comparison, handover lists and applying a plan.

Plans are data: `plans` holds parameters, per-community solver answers and metrics,
`plan_assignments` the building → grid rows of every community the plan touches,
`plan_grids` the derived grid polygons. Applying writes a new generation, validates
its topology, switches it on, reassigns buildings and re-routes open cases in the
caller's transaction: any problem raises and the caller's rollback undoes it all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa
from geoalchemy2 import Geometry
from sqlalchemy.orm import Session

from gis import balance
from gis.assign import assign_points
from gis.cases import OPEN_STATUSES
from gis.db import repo
from gis.db.models import (
    Area,
    Building,
    CaredResident,
    Case,
    Category,
    Generation,
    Worker,
    WorkerGrid,
)
from gis.errors import Conflict, InfeasiblePlan, InvalidGeometry, InvalidInput, NotFound
from gis.topology import check_grid_layer, polygons_to_degrees, to_local_m
from gis.workload import (
    WorkloadWeights,
    attribute_cases_to_buildings,
    decay_case_weights,
    measure_workload,
    score_buildings,
    summarise_communities,
)

HISTORY_DAYS = 365
DEFAULT_WEIGHTS = WorkloadWeights()
DEFAULT_PARAMS = balance.BalanceParams()
# Their own MetaData: these tables come from migration 0004, not from the models module.
_metadata = sa.MetaData()

plans_table = sa.Table(
    "plans",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100)),
    sa.Column("kind", sa.String(10)),
    sa.Column("status", sa.String(10)),
    sa.Column("base_generation_id", sa.Integer),
    sa.Column("applied_generation_id", sa.Integer),
    sa.Column("parameters", sa.JSON),
    sa.Column("metrics_before", sa.JSON),
    sa.Column("metrics_after", sa.JSON),
    sa.Column("communities", sa.JSON),
    sa.Column("created_by", sa.String(100)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("applied_at", sa.DateTime(timezone=True)),
)
assignments_table = sa.Table(
    "plan_assignments",
    _metadata,
    sa.Column("plan_id", sa.Integer, primary_key=True),
    sa.Column("building_code", sa.String(40), primary_key=True),
    sa.Column("community_code", sa.String(20)),
    sa.Column("from_grid_code", sa.String(20)),
    sa.Column("grid_code", sa.String(20)),
    sa.Column("households", sa.Integer),
)
plan_grids_table = sa.Table(
    "plan_grids",
    _metadata,
    sa.Column("plan_id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(100)),
    sa.Column("community_code", sa.String(20)),
    sa.Column("geom", Geometry(geometry_type="MULTIPOLYGON", srid=4326, spatial_index=False)),
)


# ------------------------------------------------------------------------- inputs


def buildings_for_balance(
    session: Session,
    generation: Generation,
    *,
    community_codes: list[str] | None = None,
    weights: WorkloadWeights = DEFAULT_WEIGHTS,
    as_of: datetime | None = None,
) -> gpd.GeoDataFrame:
    """Buildings (points) with households, population, cared residents, case load and
    the movable workload score; case load from the last year's cases, decayed by age."""
    t = Building.__table__
    stmt = sa.select(
        t.c.id,
        t.c.code,
        t.c.grid_code,
        t.c.community_code,
        t.c.households,
        t.c.population,
        t.c.locked,
        sa.func.ST_AsBinary(t.c.point),
    ).order_by(t.c.code)
    if community_codes is not None:
        stmt = stmt.where(t.c.community_code.in_(community_codes))
    rows = session.execute(stmt).all()
    cols = ["id", "code", "grid_code", "community_code", "households", "population", "locked"]
    gdf = repo._frame(rows, cols)
    gdf["locked"] = gdf["locked"].astype(bool)
    cared = dict(
        session.execute(
            sa.select(CaredResident.building_id, sa.func.count()).group_by(
                CaredResident.building_id
            )
        ).all()
    )
    gdf["cared"] = gdf["id"].map(cared).fillna(0).astype(int)
    as_of = as_of or datetime.now(UTC)
    gdf["case_load"] = 0.0
    if len(gdf):
        ctab = Case.__table__
        bounds = gdf.total_bounds
        cases = session.execute(
            sa.select(
                sa.func.ST_X(ctab.c.geom),
                sa.func.ST_Y(ctab.c.geom),
                ctab.c.reported_at,
                sa.func.coalesce(Category.workload_weight, 1.0),
            )
            .join(Category, Category.code == ctab.c.category_code)
            .where(ctab.c.reported_at >= as_of - timedelta(days=HISTORY_DAYS))
            .where(
                repo._bbox_filter(session, ctab.c.geom, tuple(bounds))
                if community_codes is not None
                else sa.true()
            )
        ).all()
        if cases:
            lon0, lat0 = gdf.geometry.x.mean(), gdf.geometry.y.mean()
            cxy = shapely.get_coordinates(
                to_local_m(shapely.points([(r[0], r[1]) for r in cases]), lon0, lat0)
            )
            bxy = shapely.get_coordinates(to_local_m(gdf.geometry.values, lon0, lat0))
            reported = pd.to_datetime([r[2] for r in cases], utc=True)
            age = (pd.Timestamp(as_of) - reported).total_seconds().to_numpy() / 86400
            w = decay_case_weights(
                np.array([r[3] for r in cases], float), age, weights.half_life_days
            )
            gdf["case_load"] = attribute_cases_to_buildings(cxy, bxy, w)
    gdf["workload"] = score_buildings(
        gdf["households"], gdf["population"], gdf["cared"], gdf["case_load"], weights
    )
    return gdf


def grid_workload(
    session: Session,
    *,
    parent: str | None = None,
    weights: WorkloadWeights = DEFAULT_WEIGHTS,
    band: tuple[int, int] = (300, 500),
    as_of: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per grid workload of the active generation (all, or under one area code), and the
    per-community imbalance figures."""
    gen = repo.require_active_generation(session)
    communities = _communities_under(session, gen, parent)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    grids = grids[grids["parent_code"].isin(communities)]
    b = buildings_for_balance(
        session, gen, community_codes=communities, weights=weights, as_of=as_of
    )
    if len(grids):
        lon0, lat0 = shapely.centroid(shapely.box(*grids.total_bounds)).coords[0]
        area = pd.Series(
            shapely.area(to_local_m(grids.geometry.values, lon0, lat0)), index=grids["code"]
        )
    else:
        area = pd.Series(dtype=float)
    per_grid = measure_workload(
        pd.DataFrame(b.drop(columns="geometry")),
        area,
        pd.Series(grids["parent_code"].to_numpy(), index=grids["code"]),
        weights,
        band,
    )
    return per_grid, summarise_communities(per_grid)


def _communities_under(session: Session, gen: Generation, parent: str | None) -> list[str]:
    """Community codes at or under `parent` (a district, street or community code)."""
    rows = session.execute(
        sa.select(Area.code, Area.level, Area.parent_code).where(Area.generation_id == gen.id)
    ).all()
    level = {r.code: r.level for r in rows}
    up = {r.code: r.parent_code for r in rows}
    if parent is not None and parent not in level:
        raise NotFound(f"no area {parent!r} in the active generation", code=parent)
    out = []
    for code, lvl in level.items():
        if lvl != "community":
            continue
        if parent is None:
            out.append(code)
            continue
        c: str | None = code
        while c is not None and c != parent:
            c = up.get(c)
        if c == parent:
            out.append(code)
    return sorted(out)


def load_communities(
    session: Session,
    *,
    parent: str | None = None,
    weights: WorkloadWeights = DEFAULT_WEIGHTS,
    as_of: datetime | None = None,
) -> tuple[list[balance.Community], tuple[float, float], Generation]:
    """Balancing instances for the active generation's communities (under `parent`)."""
    gen = repo.require_active_generation(session)
    codes = _communities_under(session, gen, parent)
    comms, _ = repo.areas_gdf(session, gen.id, level="community", codes=codes)
    grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    grids = grids[grids["parent_code"].isin(codes)]
    b = buildings_for_balance(session, gen, community_codes=codes, weights=weights, as_of=as_of)
    instances, origin = balance.build_communities(comms, grids, b)
    return instances, origin, gen


# -------------------------------------------------------------------------- plans


def _now() -> datetime:
    return datetime.now(UTC)


def save_plan(
    session: Session,
    *,
    instances: list[balance.Community],
    results: list[balance.CommunityResult],
    origin: tuple[float, float],
    base: Generation,
    params: dict[str, Any],
    kind: str = "balance",
    name: str | None = None,
    actor: str | None = None,
    polygons: dict[str, Any] | None = None,
    bparams: balance.BalanceParams = DEFAULT_PARAMS,
) -> int:
    """Store a plan: the assignment and derived polygons of every community it changes."""
    name = name or f"plan-{_now():%Y%m%d-%H%M%S-%f}"
    if session.scalar(sa.select(plans_table.c.id).where(plans_table.c.name == name)):
        raise Conflict(f"a plan named {name!r} already exists", plan=name)
    before, after, assignments, grid_rows = [], [], [], []
    lon0, lat0 = origin
    for inst, res in zip(instances, results, strict=True):
        original = np.asarray(inst.grid_codes, dtype=object)[inst.assignment]
        before.append(balance.measure_partition(inst, inst.grid_codes, original, None, bparams))
        changed = res.moved_buildings > 0 or res.grid_codes != inst.grid_codes
        if not changed:
            continue
        derived = (
            {c: polygons[c] for c in res.grid_codes}
            if polygons is not None
            else balance.dissolve_grids(inst, res.grid_codes, res.assignment)
        )
        after.append(
            balance.measure_partition(inst, res.grid_codes, res.assignment, derived, bparams)
        )
        for code, from_g, to_g, hh in zip(
            inst.building_codes, original, res.assignment, inst.households, strict=True
        ):
            assignments.append(
                {
                    "building_code": code,
                    "community_code": inst.code,
                    "from_grid_code": from_g,
                    "grid_code": to_g,
                    "households": int(hh),
                }
            )
        geoms = polygons_to_degrees([derived[c] for c in res.grid_codes], lon0, lat0)
        for code, geom in zip(res.grid_codes, geoms, strict=True):
            grid_rows.append({"code": code, "community_code": inst.code, "wkt": geom})
    # Grids keep their names; a new grid from a split is named after its code.
    names = dict(
        session.execute(
            sa.select(Area.code, Area.name).where(
                Area.generation_id == base.id, Area.level == "grid"
            )
        ).all()
    )
    result = session.execute(
        sa.insert(plans_table).values(
            name=name,
            kind=kind,
            status="proposed",
            base_generation_id=base.id,
            parameters=_jsonable(params),
            metrics_before=_jsonable(_metrics_doc(before)),
            metrics_after=_jsonable(_metrics_doc(after)),
            communities=_jsonable([r.summary() for r in results]),
            created_by=actor,
            created_at=_now(),
        )
    )
    plan_id = int(result.inserted_primary_key[0])
    for start in range(0, len(assignments), repo.WRITE_BATCH):
        session.execute(
            sa.insert(assignments_table),
            [a | {"plan_id": plan_id} for a in assignments[start : start + repo.WRITE_BATCH]],
        )
    rows = [
        {
            "plan_id": plan_id,
            "code": r["code"],
            "name": names.get(r["code"], f"网格{r['code'][-3:]}"),
            "community_code": r["community_code"],
            "wkt": w,
        }
        for r, w in zip(
            grid_rows,
            repo._wkt(repo._to_multipolygons([r["wkt"] for r in grid_rows])) if grid_rows else [],
            strict=True,
        )
    ]
    repo._insert_with_geoms(session, plan_grids_table, rows, {"geom": "wkt"})
    session.flush()
    return plan_id


def _jsonable(value: Any) -> Any:
    """numpy scalars to Python, non-finite floats to None, through dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _metrics_doc(per_community: list[dict]) -> dict:
    summaries = [m["summary"] for m in per_community]
    return {
        "communities": summaries,
        "grids": [
            g | {"community": m["summary"]["community"]} for m in per_community for g in m["grids"]
        ],
        "totals": {
            "communities": len(summaries),
            "outside_band": int(sum(s["outside_band"] for s in summaries)),
            "beyond_tolerance": int(sum(s["beyond_tolerance"] for s in summaries)),
            "moved_buildings": int(sum(s["moved_buildings"] for s in summaries)),
            "moved_households": int(sum(s["moved_households"] for s in summaries)),
        },
    }


def propose_plan(
    session: Session,
    *,
    parent: str | None = None,
    params: balance.BalanceParams = DEFAULT_PARAMS,
    weights: WorkloadWeights = DEFAULT_WEIGHTS,
    processes: int = 2,
    name: str | None = None,
    actor: str | None = None,
    lock_codes: list[str] | None = None,
) -> int:
    """Solve the active generation's communities (under `parent`) and store the plan."""
    instances, origin, gen = load_communities(session, parent=parent, weights=weights)
    results = balance.propose_rebalance(instances, params, processes=processes)
    return save_plan(
        session,
        instances=instances,
        results=results,
        origin=origin,
        base=gen,
        params={"balance": params.to_dict(), "weights": weights.to_dict(), "parent": parent},
        name=name,
        actor=actor,
        bparams=params,
    )


def _plan_row(session: Session, plan_id: int | str):
    row = session.execute(sa.select(plans_table).where(plans_table.c.id == int(plan_id))).first()
    if row is None:
        raise NotFound(f"no plan {plan_id}", plan=str(plan_id))
    return row


def get_plan(session: Session, plan_id: int | str) -> dict[str, Any]:
    row = _plan_row(session, plan_id)
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "status": row.status,
        "base_generation_id": row.base_generation_id,
        "applied_generation_id": row.applied_generation_id,
        "parameters": row.parameters,
        "communities": row.communities,
        "metrics_before": row.metrics_before,
        "metrics_after": row.metrics_after,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "applied_at": row.applied_at.isoformat() if row.applied_at else None,
    }


def list_plans(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        sa.select(
            plans_table.c.id, plans_table.c.name, plans_table.c.kind, plans_table.c.status
        ).order_by(plans_table.c.id)
    ).all()
    return [dict(r._mapping) for r in rows]


def plan_grids_gdf(session: Session, plan_id: int) -> gpd.GeoDataFrame:
    t = plan_grids_table
    rows = session.execute(
        sa.select(t.c.code, t.c.name, t.c.community_code, sa.func.ST_AsBinary(t.c.geom))
        .where(t.c.plan_id == plan_id)
        .order_by(t.c.code)
    ).all()
    return repo._frame(rows, ["code", "name", "parent_code"])


def _assignment(session: Session, plan_id: int) -> dict[str, str]:
    t = assignments_table
    return dict(
        session.execute(
            sa.select(t.c.building_code, t.c.grid_code).where(t.c.plan_id == plan_id)
        ).all()
    )


def compare_plans(session: Session, plan_id: int | str, other: str = "active") -> dict[str, Any]:
    """Two plans (or a plan and the active boundaries) side by side, with the buildings
    whose grid differs between them."""
    a = get_plan(session, plan_id)
    if other == "active":
        b_doc = {"id": "active", "metrics": a["metrics_before"]}
        b_assign: dict[str, str] = {}
    else:
        b = get_plan(session, other)
        b_doc = {"id": b["id"], "metrics": b["metrics_after"]}
        b_assign = _assignment(session, int(b["id"]))
    a_assign = _assignment(session, int(a["id"]))
    current = (
        dict(
            session.execute(
                sa.select(Building.code, Building.grid_code).where(
                    Building.code.in_(list(set(a_assign) | set(b_assign)))
                )
            ).all()
        )
        if (a_assign or b_assign)
        else {}
    )
    differ = sorted(
        code
        for code in set(a_assign) | set(b_assign)
        if a_assign.get(code, current.get(code)) != b_assign.get(code, current.get(code))
    )
    return {
        "left": {"id": a["id"], "metrics": a["metrics_after"]},
        "right": b_doc,
        "buildings_differing": len(differ),
        "sample": differ[:50],
    }


def handover_lists(session: Session, plan_id: int | str) -> list[dict[str, Any]]:
    """Per pair of workers: buildings, households and open cases that change hands."""
    plan_id = int(_plan_row(session, plan_id).id)
    t = assignments_table
    moves = session.execute(
        sa.select(t.c.building_code, t.c.from_grid_code, t.c.grid_code, t.c.households).where(
            t.c.plan_id == plan_id, t.c.from_grid_code != t.c.grid_code
        )
    ).all()
    owner = {}
    for grid_code, code, name in session.execute(
        sa.select(WorkerGrid.grid_code, Worker.code, Worker.name)
        .join(Worker, Worker.id == WorkerGrid.worker_id)
        .where(Worker.role == "grid_worker")
        .order_by(Worker.code)
    ):
        owner.setdefault(grid_code, {"code": code, "name": name})
    grids = plan_grids_gdf(session, plan_id)
    # Open cases change hands when their point falls in a moved building's new grid.
    open_cases = (
        session.execute(
            sa.select(
                Case.code, Case.grid_code, sa.func.ST_X(Case.geom), sa.func.ST_Y(Case.geom)
            ).where(
                Case.status.in_(OPEN_STATUSES),
                Case.community_code.in_(list(set(grids["parent_code"]))),
            )
        ).all()
        if len(grids)
        else []
    )
    new_grid = (
        assign_points(
            shapely.points([(r[2], r[3]) for r in open_cases]),
            grids.geometry.values,
            grids["code"].to_numpy(),
        )
        if open_cases
        else []
    )
    lists: dict[tuple[str, str], dict[str, Any]] = {}
    for code, from_g, to_g, hh in moves:
        key = (from_g, to_g)
        item = lists.setdefault(key, _handover_item(from_g, to_g, owner))
        item["buildings"].append(code)
        item["households"] += int(hh or 0)
    for (code, from_g, _x, _y), to_g in zip(open_cases, new_grid, strict=True):
        if to_g is not None and to_g != from_g:
            lists.setdefault((from_g, to_g), _handover_item(from_g, to_g, owner))[
                "open_cases"
            ].append(code)
    return [lists[k] for k in sorted(lists, key=lambda k: (str(k[0]), str(k[1])))]


def _handover_item(from_g, to_g, owner) -> dict[str, Any]:
    return {
        "from_grid": from_g,
        "to_grid": to_g,
        "from_worker": owner.get(from_g),
        "to_worker": owner.get(to_g),
        "buildings": [],
        "households": 0,
        "open_cases": [],
    }


# ------------------------------------------------------------------------- upload


def upload_plan(
    session: Session,
    grids_gdf: gpd.GeoDataFrame,
    *,
    name: str | None = None,
    actor: str | None = None,
    params: balance.BalanceParams = DEFAULT_PARAMS,
) -> int:
    """Stage a planner's redrawn grid layer (code, parent_code, geometry) as a plan.

    Every community named in the layer is replaced whole; the same topology checks as
    an apply run first, and buildings go to the grid covering their point.
    """
    gen = repo.require_active_generation(session)
    for col in ("code", "parent_code"):
        if col not in grids_gdf:
            raise InvalidInput(f"the grid layer needs a {col!r} column", field=col)
    codes = sorted(set(grids_gdf["parent_code"]))
    comms, _ = repo.areas_gdf(session, gen.id, level="community", codes=codes)
    problems = check_grid_layer(
        grids_gdf["code"],
        grids_gdf["parent_code"],
        grids_gdf.geometry.values,
        comms["code"],
        comms.geometry.values,
    )
    if problems:
        raise InvalidGeometry(
            f"the grid layer has {len(problems)} topology problem(s): "
            + "; ".join(p["message"] for p in problems[:5]),
            problems=problems,
        )
    old_grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    old_grids = old_grids[old_grids["parent_code"].isin(codes)]
    b = buildings_for_balance(session, gen, community_codes=codes)
    instances, origin = balance.build_communities(comms, old_grids, b)
    new_codes = assign_points(
        b.geometry.values, grids_gdf.geometry.values, grids_gdf["code"].to_numpy()
    )
    if any(c is None for c in new_codes):
        missing = b["code"][[c is None for c in new_codes]].tolist()
        raise InvalidInput(
            f"{len(missing)} building(s) fall in no uploaded grid", buildings=missing[:20]
        )
    by_code = dict(zip(b["code"], new_codes, strict=True))
    lon0, lat0 = origin
    local = dict(
        zip(grids_gdf["code"], to_local_m(grids_gdf.geometry.values, lon0, lat0), strict=True)
    )
    results = []
    for inst in instances:
        assignment = np.array([by_code[c] for c in inst.building_codes], dtype=object)
        grid_codes = sorted(grids_gdf.loc[grids_gdf["parent_code"] == inst.code, "code"])
        original = np.asarray(inst.grid_codes, dtype=object)[inst.assignment]
        moved = assignment != original
        results.append(
            balance.CommunityResult(
                inst.code,
                "upload",
                0.0,
                0.0,
                grid_codes,
                assignment,
                int(moved.sum()),
                int(inst.households[moved].sum()),
            )
        )
    return save_plan(
        session,
        instances=instances,
        results=results,
        origin=origin,
        base=gen,
        params={"upload": True, "communities": codes},
        kind="upload",
        name=name,
        actor=actor,
        polygons=local,
        bparams=params,
    )


# -------------------------------------------------------------------------- apply


def validate_plan(session: Session, plan_id: int | str) -> list[dict]:
    """Topology problems of the grid layer the plan would switch on (empty: valid)."""
    plan = _plan_row(session, plan_id)
    gen = session.get(Generation, plan.base_generation_id)
    grids = plan_grids_gdf(session, plan.id)
    comms, _ = repo.areas_gdf(
        session, gen.id, level="community", codes=sorted(set(grids["parent_code"]))
    )
    return check_grid_layer(
        grids["code"],
        grids["parent_code"],
        grids.geometry.values,
        comms["code"],
        comms.geometry.values,
    )


def apply_plan(session: Session, plan_id: int | str, *, generation_name: str | None = None) -> dict:
    """Write the plan as a new generation, validate, switch it on, reassign buildings and
    re-route open cases, all in the caller's transaction (raise = nothing happened)."""
    from gis.db.cases_repo import reroute

    plan = _plan_row(session, plan_id)
    if plan.status != "proposed":
        raise Conflict(f"plan {plan.id} is {plan.status}, not proposed", plan=plan.id)
    active = repo.require_active_generation(session)
    if active.id != plan.base_generation_id:
        raise Conflict(
            f"plan {plan.id} was made on generation {plan.base_generation_id}, "
            f"but {active.name!r} is active now: propose it again",
            plan=plan.id,
        )
    grids = plan_grids_gdf(session, plan.id)
    changed = sorted(set(grids["parent_code"]))
    gen = repo.create_generation(
        session,
        generation_name or f"plan-{plan.id}-{_now():%Y%m%d%H%M%S}",
        note=f"plan {plan.name}",
    )
    repo.copy_areas(session, active, gen, ["district", "street", "community"])
    # Grids of untouched communities are copied as they are.
    src = sa.select(
        sa.literal(gen.id), Area.level, Area.code, Area.name, Area.parent_code, Area.geom
    ).where(Area.generation_id == active.id, Area.level == "grid", Area.parent_code.not_in(changed))
    session.execute(
        sa.insert(Area).from_select(
            ["generation_id", "level", "code", "name", "parent_code", "geom"], src
        )
    )
    new_grids = grids.assign(level="grid")
    repo.write_areas(session, new_grids[["code", "name", "level", "parent_code", "geometry"]], gen)
    problems = validate_plan(session, plan.id)
    if problems:
        raise InfeasiblePlan(
            f"plan {plan.id} fails topology validation ({len(problems)} problem(s)): "
            + "; ".join(p["message"] for p in problems[:5]),
            problems=problems,
        )
    repo.activate_generation(session, gen)
    t = assignments_table
    moves = session.execute(
        sa.select(t.c.building_code, t.c.grid_code).where(
            t.c.plan_id == plan.id, t.c.from_grid_code != t.c.grid_code
        )
    ).all()
    if moves:
        bt = Building.__table__
        session.execute(
            sa.update(bt)
            .where(bt.c.code == sa.bindparam("b_code"))
            .values(grid_code=sa.bindparam("g")),
            [{"b_code": c, "g": g} for c, g in moves],
        )
    rerouted = reroute(session, dry_run=False)
    session.execute(
        sa.update(plans_table)
        .where(plans_table.c.id == plan.id)
        .values(status="applied", applied_generation_id=gen.id, applied_at=_now())
    )
    session.flush()
    return {
        "plan": plan.id,
        "generation": gen.name,
        "buildings_moved": len(moves),
        "communities": changed,
        "cases_rerouted": rerouted.get("moved", 0),
    }
