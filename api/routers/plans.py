"""Balancing plans: propose, read, compare, handover lists, upload a redraw, apply."""

from __future__ import annotations

import json
from typing import Annotated, Any

import geopandas as gpd
from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from api.deps import ActorDep, SessionDep
from api.errors import invalid_parameter
from gis.balance import BalanceParams
from gis.db import plans_repo
from gis.errors import Forbidden, InvalidGeometry
from gis.workload import WorkloadWeights

router = APIRouter(prefix="/plans", tags=["plans"])

PLANNER_ROLES = ("planner", "admin")
PlanId = Annotated[int, Path(description="the plan's id")]


class PlanIn(BaseModel):
    """What to balance and how: the band, tolerance and time limit per community."""

    parent: str | None = Field(None, description="a district, street or community code")
    low: int = Field(300, ge=0)
    high: int = Field(500, ge=1)
    tolerance: float = Field(0.10, ge=0)
    time_limit_s: float = Field(20.0, gt=0, le=600)
    reach_cells: int = Field(2, ge=1, le=10)
    allow_resize: bool = True
    seed: int = 0
    processes: int = Field(2, ge=1, le=8)
    name: str | None = None
    weights: dict[str, float] | None = None


def _require_planner(actor) -> None:
    if actor.role not in PLANNER_ROLES:
        raise Forbidden(f"only a planner may do this (you are {actor.role})", role=actor.role)


@router.post("", summary="Propose a rebalancing plan", status_code=201)
def propose_plan(body: PlanIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Solve each community (under `parent`) and store the plan; per community the answer
    says optimal, feasible with its gap, unchanged, or infeasible with the reasons."""
    _require_planner(actor)
    if body.low >= body.high:
        raise invalid_parameter("high", "must be above low", location="body", value=body.high)
    params = BalanceParams(
        low=body.low,
        high=body.high,
        tolerance=body.tolerance,
        time_limit_s=body.time_limit_s,
        reach_cells=body.reach_cells,
        allow_resize=body.allow_resize,
        seed=body.seed,
    )
    with session.begin():
        plan_id = plans_repo.propose_plan(
            session,
            parent=body.parent,
            params=params,
            weights=WorkloadWeights.from_dict(body.weights),
            processes=body.processes,
            name=body.name,
            actor=actor.name or actor.role,
        )
    return plans_repo.get_plan(session, plan_id)


@router.get("", summary="List plans")
def list_plans(session: SessionDep) -> list[dict[str, Any]]:
    return plans_repo.list_plans(session)


@router.post("/upload", summary="Stage a redrawn grid layer as a plan", status_code=201)
def upload_plan(
    session: SessionDep,
    actor: ActorDep,
    layer: Annotated[dict[str, Any], Body(description="a GeoJSON FeatureCollection of grids")],
    name: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """A grid layer edited elsewhere (QGIS): features with `code` and `parent_code`.
    It gets the same topology checks, metrics, comparison and handover lists as a
    proposed plan, and is switched on with apply."""
    _require_planner(actor)
    try:
        grids = gpd.GeoDataFrame.from_features(layer.get("features", []), crs=4326)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidGeometry(f"the grid layer cannot be read: {exc}") from None
    if grids.empty:
        raise InvalidGeometry("the grid layer has no features")
    with session.begin():
        plan_id = plans_repo.upload_plan(session, grids, name=name, actor=actor.name)
    return plans_repo.get_plan(session, plan_id)


@router.get("/{plan_id}", summary="One plan with its metrics before and after")
def read_plan(plan_id: PlanId, session: SessionDep) -> dict[str, Any]:
    return plans_repo.get_plan(session, plan_id)


@router.get("/{plan_id}/grids", summary="A plan's derived grid polygons (GeoJSON)")
def read_plan_grids(plan_id: PlanId, session: SessionDep) -> dict[str, Any]:
    plans_repo.get_plan(session, plan_id)
    return json.loads(plans_repo.plan_grids_gdf(session, plan_id).to_json(drop_id=True))


@router.get("/{plan_id}/compare", summary="Two plans, or a plan and the active map, side by side")
def compare_plan(
    plan_id: PlanId,
    session: SessionDep,
    with_: Annotated[str, Query(alias="with", description="a plan id or 'active'")] = "active",
) -> dict[str, Any]:
    if with_ != "active" and not with_.isdigit():
        raise invalid_parameter("with", "must be a plan id or 'active'", value=with_)
    return plans_repo.compare_plans(session, plan_id, with_)


@router.get("/{plan_id}/handover", summary="Handover lists: what changes hands, between whom")
def read_handover(plan_id: PlanId, session: SessionDep) -> list[dict[str, Any]]:
    return plans_repo.handover_lists(session, plan_id)


@router.post("/{plan_id}/apply", summary="Switch a plan on (planner only)")
def apply_plan(plan_id: PlanId, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Writes the plan as a new generation, validates its topology, switches it on,
    reassigns buildings and re-routes open cases in one transaction; a plan that fails
    validation changes nothing and answers 422 with the problems."""
    _require_planner(actor)
    with session.begin():
        return plans_repo.apply_plan(session, plan_id)
