"""Balancing plans: propose, read, compare, handover lists, upload a redraw, apply."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any

import geopandas as gpd
from fastapi import APIRouter, Body, File, Form, Path, Query, UploadFile
from pydantic import BaseModel, Field

from api.deps import ActorDep, SessionDep
from api.errors import invalid_parameter
from gis.balance import BalanceParams
from gis.db import plans_repo
from gis.errors import InvalidGeometry
from gis.workload import WorkloadWeights

router = APIRouter(prefix="/plans", tags=["plans"])

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
    building_move_cost: float | None = Field(
        None,
        ge=0,
        description="households-equivalent cost of moving one building on top of its "
        "households (default: the community's mean households per building)",
    )


@router.post("", summary="Propose a rebalancing plan", status_code=201)
def propose_plan(body: PlanIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Solve each community (under `parent`) and store the plan; per community the answer
    says optimal, feasible with its gap, unchanged, or infeasible with the reasons.
    A planner whose scope is an area balances only inside it."""
    plans_repo.require_planner(actor)
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
        building_move_cost=body.building_move_cost,
    )
    with session.begin():
        plan_id = plans_repo.propose_plan(
            session,
            actor=actor,
            parent=body.parent,
            params=params,
            weights=WorkloadWeights.from_dict(body.weights),
            processes=body.processes,
            name=body.name,
        )
    return plans_repo.get_plan(session, plan_id)


@router.get("", summary="List plans")
def list_plans(session: SessionDep, actor: ActorDep) -> list[dict[str, Any]]:
    """Every plan; a planner whose scope is an area sees the plans inside it."""
    return plans_repo.list_plans(session, actor)


def _stage_upload(session, actor, grids, name, low, high, allow_out_of_band) -> dict[str, Any]:
    if low >= high:
        raise invalid_parameter("high", "must be above low", value=high)
    if grids.empty:
        raise InvalidGeometry("the grid layer has no features")
    params = BalanceParams(low=low, high=high)
    with session.begin():
        plan_id = plans_repo.upload_plan(
            session,
            grids,
            actor=actor,
            name=name,
            params=params,
            allow_out_of_band=allow_out_of_band,
        )
    return plans_repo.get_plan(session, plan_id)


@router.post("/upload", summary="Stage a redrawn grid layer (GeoJSON body)", status_code=201)
def upload_plan(
    session: SessionDep,
    actor: ActorDep,
    layer: Annotated[dict[str, Any], Body(description="a GeoJSON FeatureCollection of grids")],
    name: Annotated[str | None, Query(description="plan and staged generation name")] = None,
    low: Annotated[int, Query(ge=0, description="household band, lower end")] = 300,
    high: Annotated[int, Query(ge=1, description="household band, upper end")] = 500,
    allow_out_of_band: Annotated[
        bool, Query(description="stage it even if some grid is outside the band")
    ] = False,
) -> dict[str, Any]:
    """A grid layer edited elsewhere (QGIS): features with `code`, `parent_code` and
    optionally `name`, in EPSG:4326. Each community named is replaced whole. The layer
    must tile each community, keep each grid in one piece and in the household band;
    a refusal (400) lists every problem with its grid code. A valid layer is staged as
    a new boundary generation (status 'staged') and a plan of kind 'upload', with the
    metrics, comparison and handover lists of any plan; apply switches it on."""
    plans_repo.require_planner(actor)
    try:
        grids = gpd.GeoDataFrame.from_features(layer.get("features", []), crs=4326)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidGeometry(f"the grid layer cannot be read: {exc}") from None
    return _stage_upload(session, actor, grids, name, low, high, allow_out_of_band)


@router.post("/upload/file", summary="Stage a redrawn grid layer (a file)", status_code=201)
def upload_plan_file(
    session: SessionDep,
    actor: ActorDep,
    file: Annotated[UploadFile, File(description="GeoJSON or GeoPackage of grids")],
    crs: Annotated[
        str | None,
        Form(description="the file's coordinates if not as declared: wgs84, gcj02, bd09, ..."),
    ] = None,
    name: Annotated[str | None, Form()] = None,
    low: Annotated[int, Form(ge=0)] = 300,
    high: Annotated[int, Form(ge=1)] = 500,
    allow_out_of_band: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """The same as `/plans/upload`, for a file saved from QGIS (GeoJSON, GeoPackage)."""
    plans_repo.require_planner(actor)
    suffix = FilePath(file.filename or "layer.geojson").suffix.lower() or ".geojson"
    if suffix not in (".geojson", ".json", ".gpkg"):
        raise invalid_parameter("file", "must be a .geojson or .gpkg file", value=file.filename)
    with tempfile.TemporaryDirectory(prefix="wangge-redraw-") as folder:
        path = FilePath(folder) / f"layer{suffix}"
        path.write_bytes(file.file.read())
        grids = plans_repo.read_grid_layer(path, crs)
    return _stage_upload(session, actor, grids, name, low, high, allow_out_of_band)


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
def read_handover(plan_id: PlanId, session: SessionDep) -> dict[str, Any]:
    """`handovers`: per pair of grids, the buildings, households and open cases that
    change hands, from which worker to which. `grid_changes`: grids the plan retires
    (their workers follow their buildings to a successor without a worker, or are
    released) and new grids (a worker inherited, or needed: proposed to the touching
    grid's worker with the lightest load)."""
    return plans_repo.handover_lists(session, plan_id)


@router.post("/{plan_id}/apply", summary="Switch a plan on (planner only)")
def apply_plan(
    plan_id: PlanId,
    session: SessionDep,
    actor: ActorDep,
    assign_new_grids: Annotated[
        bool, Query(description="give each new grid that needs a worker the proposed one")
    ] = False,
) -> dict[str, Any]:
    """Writes the plan as a new generation (an uploaded redraw's staged one is used),
    validates its topology, switches it on, reassigns buildings, moves the workers of
    retired grids, re-routes open cases and records an audit row, in one transaction;
    a plan that fails validation changes nothing and answers 422 with the problems.
    A planner whose scope is an area may apply only plans inside it (403)."""
    plans_repo.require_planner(actor)
    with session.begin():
        return plans_repo.apply_plan(
            session, plan_id, actor=actor, assign_new_grids=assign_new_grids
        )
