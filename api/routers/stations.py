"""Service stations (驿站) and community service centres."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import BBoxDep, PageDep, SessionDep
from api.errors import invalid_parameter
from api.geojson import GeoJSONResponse, feature_collection
from api.schemas import FeatureCollection, error_responses
from gis.db import repo
from gis.domain import STATION_KINDS

router = APIRouter(prefix="/stations", tags=["stations"])

_KIND_LIST = ", ".join(f"{key} ({name})" for key, name in STATION_KINDS.items())


def resolve_station_kind(kind: str | None) -> str | None:
    """The stored key for a kind given by key or by its Chinese name."""
    if kind is None or kind == "":
        return None
    if kind in STATION_KINDS:
        return kind
    by_name = {name: key for key, name in STATION_KINDS.items()}
    if kind in by_name:
        return by_name[kind]
    raise invalid_parameter("kind", f"must be one of {_KIND_LIST}", value=kind)


@router.get(
    "",
    summary="List stations",
    response_model=FeatureCollection,
    response_class=GeoJSONResponse,
    responses=error_responses(400),
)
def list_stations(
    request: Request,
    session: SessionDep,
    page: PageDep,
    bbox: BBoxDep,
    kind: Annotated[
        str | None,
        Query(description=f"keep one kind, by key or Chinese name: {_KIND_LIST}"),
    ] = None,
) -> GeoJSONResponse:
    """Stations as a GeoJSON FeatureCollection ordered by code, with their kind,
    services, opening hours, capacity and phone."""
    gdf, total = repo.stations_gdf(
        session,
        kind=resolve_station_kind(kind),
        bbox=bbox,
        limit=page.limit,
        offset=page.offset,
    )
    body = feature_collection(
        gdf, url=request.url, number_matched=total, limit=page.limit, offset=page.offset
    )
    return GeoJSONResponse(body)
