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
from gis.cases import OPEN_STATUSES, Actor, scope_kind
from gis.db import audit_repo, repo
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
from gis.errors import (
    Conflict,
    Forbidden,
    InfeasiblePlan,
    InvalidGeometry,
    InvalidInput,
    NotFound,
)
from gis.topology import (
    check_grid_layer,
    check_household_band,
    count_parts_and_holes,
    polygons_to_degrees,
    to_local_m,
)
from gis.workload import (
    WorkloadWeights,
    attribute_cases_to_buildings,
    decay_case_weights,
    measure_workload,
    plan_staffing,
    score_buildings,
    summarise_communities,
)

HISTORY_DAYS = 365
#: Roles that may propose, upload and apply plans.
PLANNER_ROLES = ("planner", "admin")
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


# ------------------------------------------------------------ who may plan where


def require_planner(actor: Actor) -> None:
    """Planners and admins plan; everyone else is refused."""
    if actor.role not in PLANNER_ROLES:
        raise Forbidden(f"only a planner may do this (you are {actor.role})", role=actor.role)


def outside_scope(session: Session, generation_id: int, codes, scope: str) -> list[str]:
    """The codes that are not `scope` and do not lie under it.

    Walks parent_code upwards in the generation's areas table, so any code scheme works
    (codes need not start with their parent's code).
    """
    up = dict(
        session.execute(
            sa.select(Area.code, Area.parent_code).where(Area.generation_id == generation_id)
        ).all()
    )
    outside = []
    for code in codes:
        c: str | None = code
        seen: set[str] = set()
        while c is not None and c != scope and c not in seen:
            seen.add(c)
            c = up.get(c)
        if c != scope:
            outside.append(code)
    return sorted(outside)


def authorise(session: Session, actor: Actor, generation_id: int, communities, what: str) -> None:
    """Refuse unless `actor` is a planner whose scope (if any) holds every community."""
    require_planner(actor)
    if actor.scope is None:
        return
    outside = outside_scope(session, generation_id, communities, actor.scope)
    if outside:
        raise Forbidden(
            f"{actor.label} may plan only within area {actor.scope}, but {what} touches "
            f"{len(outside)} communit{'y' if len(outside) == 1 else 'ies'} outside it: "
            + ", ".join(outside[:5]),
            scope=actor.scope,
            outside=outside[:20],
        )


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
    actor: Actor | None = None,
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
            created_by=actor.label if actor else None,
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
    actor: Actor,
    parent: str | None = None,
    params: balance.BalanceParams = DEFAULT_PARAMS,
    weights: WorkloadWeights = DEFAULT_WEIGHTS,
    processes: int = 2,
    name: str | None = None,
) -> int:
    """Solve the active generation's communities (under `parent`) and store the plan.

    A planner with a scope balances inside it: `parent` defaults to the scope and must
    lie within it. The plan and its audit row are written in the caller's transaction.
    """
    require_planner(actor)
    gen = repo.require_active_generation(session)
    if actor.scope is not None:
        parent = parent or actor.scope
        authorise(session, actor, gen.id, [parent], f"area {parent}")
    instances, origin, gen = load_communities(session, parent=parent, weights=weights)
    results = balance.propose_rebalance(instances, params, processes=processes)
    plan_id = save_plan(
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
    plan = get_plan(session, plan_id)
    audit_repo.record(
        session,
        actor,
        "plan.propose",
        "plan",
        plan_id,
        {
            "name": plan["name"],
            "parent": parent,
            "base_generation": gen.name,
            "statuses": _status_counts(plan["communities"]),
            **plan["metrics_after"]["totals"],
        },
    )
    return plan_id


def _status_counts(communities: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in communities:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return counts


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


def plan_communities(session: Session, plan_id: int) -> list[str] | None:
    """The communities a plan touches (its grids and its moves), None if there is no plan."""
    if session.scalar(sa.select(plans_table.c.id).where(plans_table.c.id == plan_id)) is None:
        return None
    grids, moves = plan_grids_table, assignments_table
    codes = session.scalars(
        sa.union(
            sa.select(grids.c.community_code).where(grids.c.plan_id == plan_id),
            sa.select(moves.c.community_code).where(moves.c.plan_id == plan_id),
        )
    ).all()
    return sorted({c for c in codes if c})


def plan_within_reach(session: Session, actor: Actor | None, plan_id: int) -> bool:
    """Whether every community the plan touches lies in the actor's reach (a plan that
    records none is reached only by callers who reach everything)."""
    if actor is None or scope_kind(actor) == "all":
        return True
    communities = plan_communities(session, plan_id)
    return bool(communities) and all(
        repo.actor_reaches_area(session, actor, c) for c in communities
    )


def list_plans(session: Session, actor: Actor | None = None) -> list[dict[str, Any]]:
    """Every plan, or for a scoped planner the plans wholly inside their area."""
    rows = session.execute(
        sa.select(
            plans_table.c.id, plans_table.c.name, plans_table.c.kind, plans_table.c.status
        ).order_by(plans_table.c.id)
    ).all()
    return [dict(r._mapping) for r in rows if plan_within_reach(session, actor, r.id)]


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


def _grid_owners(session: Session) -> dict[str, list[str]]:
    """Grid code → codes of the active grid workers holding it."""
    rows = session.execute(
        sa.select(WorkerGrid.grid_code, Worker.code)
        .join(Worker, Worker.id == WorkerGrid.worker_id)
        .where(Worker.role == "grid_worker", Worker.active.is_(True))
        .order_by(Worker.code)
    ).all()
    owners: dict[str, list[str]] = {}
    for grid, worker in rows:
        owners.setdefault(grid, []).append(worker)
    return owners


def _touching(grids: gpd.GeoDataFrame) -> dict[str, set[str]]:
    """Grid code → the grids of the same community it shares an edge with (a lone
    corner is not enough)."""
    out: dict[str, set[str]] = {c: set() for c in grids["code"]}
    if len(grids) < 2:
        return out
    lon0, lat0 = shapely.centroid(shapely.box(*grids.total_bounds)).coords[0]
    geoms = to_local_m(grids.geometry.values, lon0, lat0)
    codes = grids["code"].tolist()
    parents = grids["parent_code"].tolist()
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    for a, b in zip(left, right, strict=True):
        if a >= b or parents[a] != parents[b]:
            continue
        shared = shapely.intersection(shapely.boundary(geoms[a]), shapely.boundary(geoms[b]))
        if shapely.length(shared) > 0.5:
            out[codes[a]].add(codes[b])
            out[codes[b]].add(codes[a])
    return out


def staffing(session: Session, plan_id: int | str) -> dict[str, Any]:
    """What a plan does to grid workers: retired grids' workers go with their buildings
    or are released; new grids inherit a worker or need one (with a proposal).

    See gis.workload.plan_staffing for the rules. Returns the changes, the owners of
    every grid the plan draws before and after, and worker names.
    """
    plan = _plan_row(session, plan_id)
    grids = plan_grids_gdf(session, plan.id)
    communities = sorted(set(grids["parent_code"]))
    old = (
        list(
            session.scalars(
                sa.select(Area.code).where(
                    Area.generation_id == plan.base_generation_id,
                    Area.level == "grid",
                    Area.parent_code.in_(communities),
                )
            )
        )
        if communities
        else []
    )
    t = assignments_table
    flows = {
        (f, g): float(h or 0)
        for f, g, h in session.execute(
            sa.select(t.c.from_grid_code, t.c.grid_code, sa.func.sum(t.c.households))
            .where(t.c.plan_id == plan.id)
            .group_by(t.c.from_grid_code, t.c.grid_code)
        )
    }
    bt = Building.__table__
    households = {
        g: float(h or 0)
        for g, h in session.execute(
            sa.select(bt.c.grid_code, sa.func.sum(bt.c.households)).group_by(bt.c.grid_code)
        )
        if g is not None
    }
    after_hh: dict[str, float] = {}
    for (_f, g), h in flows.items():
        after_hh[g] = after_hh.get(g, 0.0) + h
    households.update({g: after_hh.get(g, 0.0) for g in grids["code"]})
    owners = _grid_owners(session)
    changes, after = plan_staffing(
        old, list(grids["code"]), owners, flows, _touching(grids), households
    )
    names = dict(session.execute(sa.select(Worker.code, Worker.name)).all())
    return {
        "changes": changes,
        "before": {g: owners.get(g, []) for g in sorted(set(old) | set(grids["code"]))},
        "after": after,
        "names": names,
    }


def _worker(code: str | None, names: dict[str, str]) -> dict[str, str] | None:
    return None if code is None else {"code": code, "name": names.get(code, code)}


def handover_lists(session: Session, plan_id: int | str) -> dict[str, Any]:
    """What changes hands if the plan is applied.

    `handovers`: per pair of grids, the buildings, households and open cases that move,
    from which worker to which (the worker after the apply: a new grid's inherited
    worker, or none when it still needs one). `grid_changes`: grids the plan retires
    or adds, with what happens to their workers (see `staffing`).
    """
    plan_id = int(_plan_row(session, plan_id).id)
    t = assignments_table
    moves = session.execute(
        sa.select(t.c.building_code, t.c.from_grid_code, t.c.grid_code, t.c.households)
        .where(t.c.plan_id == plan_id, t.c.from_grid_code != t.c.grid_code)
        .order_by(t.c.building_code)
    ).all()
    staff = staffing(session, plan_id)
    names = staff["names"]
    before, after = staff["before"], staff["after"]
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

    def item(from_g: str, to_g: str) -> dict[str, Any]:
        first_before = (before.get(from_g) or [None])[0]
        first_after = (after.get(to_g, before.get(to_g)) or [None])[0]
        return {
            "from_grid": from_g,
            "to_grid": to_g,
            "from_worker": _worker(first_before, names),
            "to_worker": _worker(first_after, names),
            "to_grid_needs_worker": first_after is None,
            "buildings": [],
            "households": 0,
            "open_cases": [],
        }

    lists: dict[tuple[str, str], dict[str, Any]] = {}
    for code, from_g, to_g, hh in moves:
        entry = lists.setdefault((from_g, to_g), item(from_g, to_g))
        entry["buildings"].append(code)
        entry["households"] += int(hh or 0)
    for (code, from_g, _x, _y), to_g in zip(open_cases, new_grid, strict=True):
        if to_g is not None and to_g != from_g:
            lists.setdefault((from_g, to_g), item(from_g, to_g))["open_cases"].append(code)
    changes = []
    for ch in staff["changes"]:
        out = dict(ch)
        out["workers"] = [_worker(w, names) for w in ch["workers"]]
        if ch["change"] == "retired":
            out["workers_released"] = [_worker(w, names) for w in ch["workers_released"]]
        else:
            out["proposed_worker"] = _worker(ch["proposed_worker"], names)
        changes.append(out)
    return {
        "plan": plan_id,
        "handovers": [lists[k] for k in sorted(lists, key=lambda k: (str(k[0]), str(k[1])))],
        "grid_changes": changes,
    }


# ------------------------------------------------------------------------- upload


def read_grid_layer(path, crs: str | None = None) -> gpd.GeoDataFrame:
    """A grid layer file (GeoJSON, GeoPackage, anything GDAL reads) in EPSG:4326.

    `crs` names the file's coordinates when they are not what the file declares
    (wgs84, cgcs2000, gcj02, bd09, EPSG:<code>); otherwise a declared projected CRS is
    converted and an undeclared one is taken as WGS84 lon/lat.
    """
    from pathlib import Path

    from gis.crs import InputCRS, geometries_to_storage, parse_crs

    try:
        if Path(path).suffix.lower() == ".gpkg":
            gdf = _read_geopackage(path)
        else:
            gdf = gpd.read_file(path)
    except InvalidInput:
        raise
    except Exception as exc:  # pyogrio and sqlite raise their own errors
        raise InvalidInput(f"cannot read the grid layer {path}: {exc}", field="file") from None
    gdf = gdf.rename(columns=lambda c: c if c == "geometry" else str(c).strip().lower())
    if crs:
        source = parse_crs(crs)
        geoms = geometries_to_storage(gdf.geometry.values, source)
        return gpd.GeoDataFrame(gdf.drop(columns="geometry"), geometry=geoms, crs=4326)
    if gdf.crs is None or gdf.crs.to_epsg() in (4326, 4490):
        return gdf.set_crs(4326, allow_override=True)
    epsg = gdf.crs.to_epsg()
    if epsg is None:
        return gdf.to_crs(4326)
    geoms = geometries_to_storage(gdf.geometry.values, InputCRS("epsg", epsg))
    return gpd.GeoDataFrame(gdf.drop(columns="geometry"), geometry=geoms, crs=4326)


def _read_geopackage(path) -> gpd.GeoDataFrame:
    """The first feature table of a GeoPackage, read with sqlite3 rather than GDAL.

    GDAL's own SQLite and the SpatiaLite extension loaded by the embedded store crash
    each other in one process (seen here: a segfault on the first GeoPackage read), so
    the GeoPackage is read as the SQLite file it is: each geometry is a small GPKG
    header followed by standard WKB.
    """
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        found = con.execute(
            "SELECT g.table_name, g.column_name, g.srs_id FROM gpkg_geometry_columns g "
            "JOIN gpkg_contents c ON c.table_name = g.table_name "
            "WHERE c.data_type = 'features' ORDER BY g.table_name LIMIT 1"
        ).fetchone()
        if found is None:
            raise InvalidInput("the GeoPackage has no feature table", field="file")
        table, column, srs_id = found
        org = con.execute(
            "SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys "
            "WHERE srs_id = ?",
            (srs_id,),
        ).fetchone()
        quoted = '"' + str(table).replace('"', '""') + '"'
        cursor = con.execute(f"SELECT * FROM {quoted}")  # the name comes from the file's catalogue
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    at = columns.index(column)
    geoms = [_gpkg_geometry(r[at]) for r in rows]
    attrs = pd.DataFrame(
        [r[:at] + r[at + 1 :] for r in rows], columns=columns[:at] + columns[at + 1 :]
    )
    crs = int(org[1]) if org and str(org[0]).upper() == "EPSG" and int(org[1]) > 0 else None
    return gpd.GeoDataFrame(attrs.drop(columns=["fid"], errors="ignore"), geometry=geoms, crs=crs)


def _gpkg_geometry(blob: bytes | None):
    """Shapely geometry from a GeoPackage geometry blob (header, envelope, WKB)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if blob[:2] != b"GP":
        raise InvalidInput("a GeoPackage geometry lacks its GP header", field="geometry")
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0b111)
    if envelope is None:
        raise InvalidInput("a GeoPackage geometry has an unknown envelope", field="geometry")
    return shapely.from_wkb(blob[8 + envelope :])


def _check_layer_attributes(grids_gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """code, parent_code (and name, level if present) checked; problems name the feature."""
    for col in ("code", "parent_code"):
        if col not in grids_gdf:
            raise InvalidInput(
                f"the grid layer needs a {col!r} column (found: "
                f"{', '.join(c for c in grids_gdf.columns if c != 'geometry')})",
                field=col,
            )
    problems = []
    seen: dict[str, int] = {}
    limit = Area.__table__.c.code.type.length
    out = grids_gdf.reset_index(drop=True).copy()
    for col in ("code", "parent_code"):  # a code written as a number in the file
        out[col] = out[col].map(lambda v: str(v) if isinstance(v, int | np.integer) else v)
    for n, row in enumerate(out.drop(columns="geometry").to_dict("records"), start=1):
        code, parent = row["code"], row["parent_code"]
        level = row.get("level")
        level = level.strip() if isinstance(level, str) else None
        for fld, value in (("code", code), ("parent_code", parent)):
            if not isinstance(value, str) or not value.strip():
                problems.append(
                    {
                        "feature": n,
                        "field": fld,
                        "problem": "missing",
                        "message": f"feature {n}: missing {fld}",
                    }
                )
        if isinstance(code, str) and len(code.strip()) > limit:
            problems.append(
                {
                    "feature": n,
                    "field": "code",
                    "problem": "too long",
                    "message": f"feature {n}: code {code} is longer than {limit} characters",
                }
            )
        if level not in (None, "", "grid", "网格"):
            problems.append(
                {
                    "feature": n,
                    "field": "level",
                    "problem": "not a grid",
                    "message": f"feature {n}: level {level!r}; a redraw uploads grids only",
                }
            )
        if isinstance(code, str) and code.strip():
            if code.strip() in seen:
                problems.append(
                    {
                        "feature": n,
                        "grid": code,
                        "field": "code",
                        "problem": "duplicate",
                        "message": f"feature {n}: grid {code} appears twice (also feature "
                        f"{seen[code.strip()]})",
                    }
                )
            seen.setdefault(code.strip(), n)
    if problems:
        raise InvalidInput(
            f"the grid layer has {len(problems)} attribute problem(s): "
            + "; ".join(p["message"] for p in problems[:5]),
            problems=problems,
        )
    out["code"] = out["code"].str.strip()
    out["parent_code"] = out["parent_code"].str.strip()
    return out


def upload_plan(
    session: Session,
    grids_gdf: gpd.GeoDataFrame,
    *,
    actor: Actor,
    name: str | None = None,
    params: balance.BalanceParams = DEFAULT_PARAMS,
    allow_out_of_band: bool = False,
) -> int:
    """Stage a planner's redrawn grid layer (code, parent_code, geometry; name optional)
    as a new boundary generation and a plan describing it.

    Every community named in the layer is replaced whole. The layer must tile each of
    those communities (valid polygons, each inside its community, no gaps, no
    overlaps), every grid must be one contiguous polygon and hold a household count
    within the band (unless `allow_out_of_band`); each problem names its grid. A valid
    layer becomes a *staged* generation (the active one with these communities'
    grids replaced) and a plan of kind 'upload' with the metrics, comparison and
    handover lists of any plan; `apply` (or `wangge activate` followed by apply)
    switches it on.
    """
    require_planner(actor)
    gen = repo.require_active_generation(session)
    grids_gdf = _check_layer_attributes(grids_gdf)
    codes = sorted(set(grids_gdf["parent_code"]))
    comms, _ = repo.areas_gdf(session, gen.id, level="community", codes=codes)
    authorise(session, actor, gen.id, list(comms["code"]), "the uploaded layer")
    problems = check_grid_layer(
        grids_gdf["code"],
        grids_gdf["parent_code"],
        grids_gdf.geometry.values,
        comms["code"],
        comms.geometry.values,
        one_piece=True,
    )
    # A code may not belong to a grid of another community in the active map.
    elsewhere = dict(
        session.execute(
            sa.select(Area.code, Area.parent_code).where(
                Area.generation_id == gen.id,
                Area.code.in_(list(grids_gdf["code"])),
                Area.parent_code.not_in(codes),
            )
        ).all()
    )
    for code, parent in sorted(elsewhere.items()):
        problems.append(
            {
                "grid": code,
                "problem": "code taken",
                "message": f"grid code {code} belongs to {parent}, outside the uploaded "
                "communities",
            }
        )
    unreadable = [p for p in problems if p["problem"] in ("empty", "type", "invalid")]
    if unreadable:
        raise InvalidGeometry(
            f"the grid layer has {len(unreadable)} unusable geometr"
            f"{'y' if len(unreadable) == 1 else 'ies'}: "
            + "; ".join(p["message"] for p in unreadable[:5]),
            problems=problems,
        )
    known = set(comms["code"])
    b = buildings_for_balance(session, gen, community_codes=[c for c in codes if c in known])
    new_codes = (
        assign_points(b.geometry.values, grids_gdf.geometry.values, grids_gdf["code"].to_numpy())
        if len(b)
        else np.array([], dtype=object)
    )
    lost = [c for c, g in zip(b["code"], new_codes, strict=True) if g is None]
    if lost:
        problems.append(
            {
                "problem": "buildings",
                "buildings": lost[:20],
                "message": f"{len(lost)} building(s) fall in no uploaded grid: "
                + ", ".join(lost[:5]),
            }
        )
    if not allow_out_of_band:
        hh = pd.Series(b["households"].to_numpy(), index=new_codes).groupby(level=0).sum()
        problems.extend(
            check_household_band(
                grids_gdf["code"],
                [int(hh.get(c, 0)) for c in grids_gdf["code"]],
                params.low,
                params.high,
            )
        )
    if problems:
        raise InvalidGeometry(
            f"the grid layer has {len(problems)} problem(s): "
            + "; ".join(p["message"] for p in problems[:5]),
            problems=problems,
        )
    old_grids, _ = repo.areas_gdf(session, gen.id, level="grid")
    old_grids = old_grids[old_grids["parent_code"].isin(codes)]
    instances, origin = balance.build_communities(comms, old_grids, b)
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
    name = name or f"upload-{_now():%Y%m%d-%H%M%S-%f}"
    staged = repo.create_generation(session, name, note=f"redraw uploaded by {actor.label}")
    repo.copy_areas(session, gen, staged, ["district", "street", "community"])
    _copy_grids_except(session, gen, staged, codes)
    names = dict(
        session.execute(
            sa.select(Area.code, Area.name).where(
                Area.generation_id == gen.id, Area.level == "grid"
            )
        ).all()
    )
    given = grids_gdf["name"] if "name" in grids_gdf else pd.Series([None] * len(grids_gdf))
    layer = gpd.GeoDataFrame(
        {
            "code": grids_gdf["code"],
            "name": [
                n if isinstance(n, str) and n.strip() else names.get(c, f"网格{c[-3:]}")
                for c, n in zip(grids_gdf["code"], given, strict=True)
            ],
            "level": "grid",
            "parent_code": grids_gdf["parent_code"],
        },
        geometry=grids_gdf.geometry.values,
        crs=4326,
    )
    repo.write_areas(session, layer, staged)
    plan_id = save_plan(
        session,
        instances=instances,
        results=results,
        origin=origin,
        base=gen,
        params={
            "upload": True,
            "communities": codes,
            "generation": staged.name,
            "generation_id": staged.id,
            "band": [params.low, params.high],
            "allow_out_of_band": allow_out_of_band,
        },
        kind="upload",
        name=name,
        actor=actor,
        polygons=local,
        bparams=params,
    )
    audit_repo.record(
        session,
        actor,
        "plan.upload",
        "plan",
        plan_id,
        {
            "name": name,
            "generation": staged.name,
            "communities": codes,
            "grids": len(grids_gdf),
            **get_plan(session, plan_id)["metrics_after"]["totals"],
        },
    )
    return plan_id


def _copy_grids_except(
    session: Session, source: Generation, target: Generation, communities: list[str]
) -> None:
    """Copy the grids of every community but these from one generation to another."""
    src = sa.select(
        sa.literal(target.id), Area.level, Area.code, Area.name, Area.parent_code, Area.geom
    ).where(
        Area.generation_id == source.id,
        Area.level == "grid",
        Area.parent_code.not_in(communities),
    )
    session.execute(
        sa.insert(Area).from_select(
            ["generation_id", "level", "code", "name", "parent_code", "geom"], src
        )
    )


# -------------------------------------------------------------------------- apply


def validate_plan(session: Session, plan_id: int | str, generation: Generation | None = None):
    """Topology problems of the grids the plan would switch on (empty: valid).

    Checked on `generation` when given (the one written or staged for the plan), else
    on the plan's derived polygons. Every grid must tile its community; a grid must be
    one piece unless it was already in pieces in the base generation.
    """
    plan = _plan_row(session, plan_id)
    communities = sorted(
        session.scalars(
            sa.select(plan_grids_table.c.community_code)
            .where(plan_grids_table.c.plan_id == plan.id)
            .distinct()
        )
    )
    if generation is None:
        grids = plan_grids_gdf(session, plan.id)
    else:
        grids, _ = repo.areas_gdf(session, generation.id, level="grid")
        grids = grids[grids["parent_code"].isin(communities)]
    comms, _ = repo.areas_gdf(
        session, plan.base_generation_id, level="community", codes=communities
    )
    base, _ = repo.areas_gdf(session, plan.base_generation_id, level="grid")
    base = base[base["parent_code"].isin(communities)]
    parts, _holes = count_parts_and_holes(base.geometry.values)
    in_pieces = set(base["code"][parts > 1])
    return check_grid_layer(
        grids["code"],
        grids["parent_code"],
        grids.geometry.values,
        comms["code"],
        comms.geometry.values,
        one_piece=set(grids["code"]) - in_pieces,
    )


def apply_plan(
    session: Session,
    plan_id: int | str,
    *,
    actor: Actor,
    generation_name: str | None = None,
    assign_new_grids: bool = False,
) -> dict:
    """Switch a plan on: its generation (written now for a solver plan, staged at upload
    for a redraw), validated, activated; buildings reassigned, workers of retired and
    new grids handled (see `staffing`), open cases re-routed, an audit row written,
    all in the caller's transaction (raise = nothing happened).

    An uploaded plan whose staged generation was already switched on with `wangge
    activate` is completed: buildings, workers and cases follow it. With
    `assign_new_grids`, a new grid that needs a worker gets the proposed one.
    """
    from gis.db.cases_repo import reroute

    plan = _plan_row(session, plan_id)
    require_planner(actor)
    if plan.status != "proposed":
        raise Conflict(f"plan {plan.id} is {plan.status}, not proposed", plan=plan.id)
    grids = plan_grids_gdf(session, plan.id)
    changed = sorted(set(grids["parent_code"]))
    authorise(session, actor, plan.base_generation_id, changed, f"plan {plan.id}")
    active = repo.require_active_generation(session)
    staged_id = (plan.parameters or {}).get("generation_id")
    gen = session.get(Generation, staged_id) if staged_id else None
    if staged_id and gen is None:
        raise Conflict(f"plan {plan.id}'s staged generation is gone", plan=plan.id)
    already_on = gen is not None and gen.id == active.id
    if not already_on and active.id != plan.base_generation_id:
        raise Conflict(
            f"plan {plan.id} was made on generation {plan.base_generation_id}, "
            f"but {active.name!r} is active now: propose it again",
            plan=plan.id,
        )
    if gen is not None and gen.status == "retired":
        raise Conflict(f"plan {plan.id}'s generation {gen.name!r} is retired", plan=plan.id)
    staff = staffing(session, plan.id)
    if gen is None:
        gen = repo.create_generation(
            session,
            generation_name or f"plan-{plan.id}-{_now():%Y%m%d%H%M%S}",
            note=f"plan {plan.name}",
        )
        repo.copy_areas(session, active, gen, ["district", "street", "community"])
        _copy_grids_except(session, active, gen, changed)
        new_grids = grids.assign(level="grid")
        repo.write_areas(
            session, new_grids[["code", "name", "level", "parent_code", "geometry"]], gen
        )
    problems = validate_plan(session, plan.id, gen)
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
    workers = _apply_staffing(session, staff, assign_new_grids)
    rerouted = reroute(session, dry_run=False)
    session.execute(
        sa.update(plans_table)
        .where(plans_table.c.id == plan.id)
        .values(status="applied", applied_generation_id=gen.id, applied_at=_now())
    )
    result = {
        "plan": plan.id,
        "generation": gen.name,
        "buildings_moved": len(moves),
        "communities": changed,
        "cases_rerouted": rerouted.get("moved", 0),
        **workers,
    }
    audit_repo.record(session, actor, "plan.apply", "plan", plan.id, result)
    session.flush()
    return result


def _apply_staffing(session: Session, staff: dict, assign_new_grids: bool) -> dict:
    """Worker rows follow the plan: retired grids' rows go (their workers move to the
    successor or are released); new grids get the proposed worker only when asked."""
    ids = dict(session.execute(sa.select(Worker.code, Worker.id)).all())
    wg = WorkerGrid.__table__
    moved, released, assigned, needing = [], [], [], []
    for ch in staff["changes"]:
        if ch["change"] == "retired":
            session.execute(sa.delete(wg).where(wg.c.grid_code == ch["grid"]))
            for w in ch["workers"]:
                if ch["workers_go_to"]:
                    session.execute(
                        sa.insert(wg).values(worker_id=ids[w], grid_code=ch["workers_go_to"])
                    )
                    moved.append(
                        {"worker": w, "from_grid": ch["grid"], "to_grid": ch["workers_go_to"]}
                    )
                else:
                    released.append({"worker": w, "grid": ch["grid"]})
        elif ch["needs_worker"]:
            proposal = ch["proposed_worker"]
            if assign_new_grids and proposal is not None:
                session.execute(sa.insert(wg).values(worker_id=ids[proposal], grid_code=ch["grid"]))
                assigned.append({"worker": proposal, "grid": ch["grid"]})
            else:
                needing.append({"grid": ch["grid"], "proposed_worker": proposal})
    return {
        "workers_moved": moved,
        "workers_released": released,
        "workers_assigned": assigned,
        "grids_needing_worker": needing,
    }
