"""Shapes of what the API sends, for validation where cheap and for the OpenAPI document.

GeoJSON collections are built as plain dicts (see `api.geojson`) and sent as they
are; their models here document the shape without re-validating every feature.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every error answer: the error class, a message for people, and any detail."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(examples=["NotFound"])
    message: str = Field(examples=["no area '210102001001009' in generation 'initial'"])


class Link(BaseModel):
    href: str
    rel: str = Field(examples=["next"])
    type: str | None = None
    title: str | None = None


class Feature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: str | int | None = None
    geometry: dict[str, Any] | None = Field(description="RFC 7946 geometry, lon/lat degrees")
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    numberMatched: int = Field(description="features matching the filters, before paging")
    numberReturned: int = Field(description="features in this page")
    links: list[Link]
    features: list[Feature]


class GenerationOut(BaseModel):
    """A boundary generation: a complete snapshot of the area hierarchy."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    status: Literal["staged", "active", "retired"]
    note: str | None = None
    created_at: datetime
    activated_at: datetime | None = None


class SubcategoryOut(BaseModel):
    code: str
    name: str
    name_en: str | None = None
    deadline_h: float | None = Field(None, description="hours allowed to resolve a case")
    workload_weight: float | None = Field(None, description="relative effort of one case")
    department: str | None = Field(None, description="who handles it beyond the grid")


class CategoryOut(BaseModel):
    code: str
    name: str
    name_en: str | None = None
    subclasses: list[SubcategoryOut]


class AreaRef(BaseModel):
    level: Literal["district", "street", "community", "grid"]
    code: str
    name: str


class NearestGrid(BaseModel):
    code: str
    name: str
    distance_m: float


class LocateOut(BaseModel):
    generation: str = Field(description="the boundary generation searched")
    crs: str = Field(description="the coordinate system the input point was given in")
    input: dict[str, float] = Field(description="the point as given")
    lon: float = Field(description="the point in EPSG:4326, after conversion")
    lat: float = Field(description="the point in EPSG:4326, after conversion")
    grid: AreaRef = Field(description="the grid the point belongs to")
    chain: list[AreaRef] = Field(description="district → street → community → grid")
    on_boundary_of: list[str] = Field(
        description="when the point lies on an edge or vertex shared by several grids, all "
        "of them (the point belongs to the lowest-coded one); empty otherwise"
    )


class ImportReportOut(BaseModel):
    """What an import wrote (the importer's report; fields it adds later pass through)."""

    model_config = ConfigDict(extra="allow")

    layer: str
    path: str = Field(description="the uploaded file's name")
    features: int = Field(description="features read from the file")
    inserted: int
    updated: int
    repaired: list[dict[str, Any]] = Field(
        default_factory=list, description="geometries repaired on the way in"
    )
    warnings: list[str] = Field(default_factory=list)
    generation: str | None = Field(None, description="areas: the generation written")
    activated: bool = Field(False, description="areas: whether it was switched on")


class WorkerOut(BaseModel):
    code: str
    name: str
    phone: str | None = None
    role: str
    active: bool
    grid_codes: list[str]


class WorkerPage(BaseModel):
    numberMatched: int
    numberReturned: int
    links: list[Link]
    workers: list[WorkerOut]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    descriptions = {
        400: "invalid parameter or input",
        403: "the caller's role may not do this",
        404: "not found",
        409: "conflicts with the stored state",
        413: "upload too large",
        422: "no feasible plan",
    }
    return {s: {"model": ErrorOut, "description": descriptions.get(s, "error")} for s in statuses}
