"""Areas of a boundary generation: districts, streets, communities and grids."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from api.deps import BBoxDep, PageDep, SessionDep
from api.geojson import GeoJSONResponse, feature, feature_collection
from api.schemas import Feature, FeatureCollection, error_responses
from gis.db import repo
from gis.db.models import LEVELS
from gis.errors import NotFound

router = APIRouter(prefix="/areas", tags=["areas"])

# Built from the models' tuple so the OpenAPI enum cannot drift from the store.
Level = Literal[LEVELS]  # type: ignore[valid-type]
GenerationQuery = Annotated[
    str | None,
    Query(description="generation name or id; default: the active one", examples=["initial"]),
]


@router.get(
    "",
    summary="List areas",
    response_model=FeatureCollection,
    response_class=GeoJSONResponse,
    responses=error_responses(400, 404),
)
def list_areas(
    request: Request,
    session: SessionDep,
    page: PageDep,
    bbox: BBoxDep,
    level: Annotated[Level | None, Query(description="keep one level only")] = None,
    parent: Annotated[str | None, Query(description="keep the children of this area code")] = None,
    generation: GenerationQuery = None,
) -> GeoJSONResponse:
    """Areas as a GeoJSON FeatureCollection ordered by code, one page at a time.

    Properties: `code`, `name`, `level`, `parent_code`; the feature `id` is the code.
    """
    gen = repo.get_generation(session, generation)
    gdf, total = repo.areas_gdf(
        session,
        gen.id,
        level=level,
        parent_code=parent,
        bbox=bbox,
        limit=page.limit,
        offset=page.offset,
    )
    body = feature_collection(
        gdf, url=request.url, number_matched=total, limit=page.limit, offset=page.offset
    )
    return GeoJSONResponse(body)


@router.get(
    "/{code}",
    summary="One area",
    response_model=Feature,
    response_class=GeoJSONResponse,
    responses=error_responses(404),
)
def read_area(
    code: Annotated[str, Path(description="area code", examples=["210102001001001"])],
    session: SessionDep,
    generation: GenerationQuery = None,
) -> GeoJSONResponse:
    """The area with this code in a generation, as a GeoJSON Feature."""
    gen = repo.get_generation(session, generation)
    gdf, _total = repo.areas_gdf(session, gen.id, codes=[code])
    if gdf.empty:
        raise NotFound(
            f"no area {code!r} in generation {gen.name!r}", code=code, generation=gen.name
        )
    return GeoJSONResponse(feature(gdf))
