"""Buildings (楼栋): footprints with households, and the grid each belongs to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import ActorDep, BBoxDep, PageDep, SessionDep
from api.geojson import GeoJSONResponse, feature_collection
from api.schemas import FeatureCollection, error_responses
from gis.db import repo

router = APIRouter(prefix="/buildings", tags=["buildings"])


@router.get(
    "",
    summary="List buildings",
    response_model=FeatureCollection,
    response_class=GeoJSONResponse,
    responses=error_responses(400),
)
def list_buildings(
    request: Request,
    session: SessionDep,
    page: PageDep,
    bbox: BBoxDep,
    actor: ActorDep,
    grid: Annotated[str | None, Query(description="keep the buildings of this grid code")] = None,
    community: Annotated[
        str | None, Query(description="keep the buildings of this community code")
    ] = None,
) -> GeoJSONResponse:
    """Buildings as a GeoJSON FeatureCollection ordered by code; `bbox` tests the
    point inside each footprint, the one grid assignment uses. Only the buildings
    within the caller's reach (a worker's grids, a dispatcher's or planner's area)."""
    gdf, total = repo.buildings_gdf(
        session,
        grid_code=grid,
        community_code=community,
        bbox=bbox,
        limit=page.limit,
        offset=page.offset,
        actor=actor,
    )
    body = feature_collection(
        gdf, url=request.url, number_matched=total, limit=page.limit, offset=page.offset
    )
    return GeoJSONResponse(body)
