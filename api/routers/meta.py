"""The service's front page, its health probes and the index of the v1 API."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.errors import RETRY_AFTER_UNAVAILABLE_S
from gis.db import repo
from gis.db.engine import store_unavailable

log = logging.getLogger("wangge.api")

router = APIRouter(tags=["service"])


class ReadinessOut(BaseModel):
    """Whether the service can answer: its store reachable, a boundary generation active."""

    status: Literal["ready", "unavailable"]
    generation: str | None = Field(None, description="the active boundary generation")
    reason: str | None = Field(None, description="why the service is not ready")


@router.get("/", summary="Index of links")
def read_index(request: Request) -> dict[str, Any]:
    """Where to go from here: the API documentation, its OpenAPI document and the API."""
    app = request.app
    return {
        "name": app.title,
        "version": app.version,
        "links": [
            {
                "rel": "service-doc",
                "href": str(request.url_for("custom_swagger_ui_html")),
                "title": "API documentation",
            },
            {
                "rel": "service-desc",
                "href": str(request.url_for("openapi")),
                "title": "OpenAPI document",
            },
            {"rel": "api", "href": str(request.url_for("read_api_index")), "title": "API v1"},
            {"rel": "health", "href": str(request.url_for("read_health")), "title": "health"},
            {
                "rel": "ready",
                "href": str(request.url_for("read_readiness")),
                "title": "readiness",
            },
        ],
    }


@router.get("/healthz", summary="Liveness probe")
def read_health() -> dict[str, str]:
    """Answers while the process serves requests; it does not query the store."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness probe",
    response_model=ReadinessOut,
    responses={503: {"model": ReadinessOut, "description": "not ready, with the reason"}},
)
def read_readiness(request: Request) -> JSONResponse:
    """200 when the database answers and a boundary generation is active; 503 with
    the reason otherwise (the database is unreachable, or no areas are imported)."""
    try:
        with request.app.state.sessions() as session:
            active = repo.active_generation(session)
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        log.warning("readiness: database unavailable: %s", exc.__class__.__name__)
        out = ReadinessOut(status="unavailable", reason="the database cannot be reached")
        return JSONResponse(
            out.model_dump(),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )
    if active is None:
        out = ReadinessOut(
            status="unavailable",
            reason="no active boundary generation: import areas (wangge import areas FILE)",
        )
        return JSONResponse(out.model_dump(), status_code=503)
    return JSONResponse(ReadinessOut(status="ready", generation=active.name).model_dump())


@router.get("/api/v1", summary="Index of the v1 resources")
def read_api_index(request: Request) -> dict[str, Any]:
    """Links to every collection of the v1 API."""
    names = {
        "generations": "boundary generations",
        "areas": "districts, streets, communities and grids",
        "buildings": "buildings",
        "stations": "service stations",
        "workers": "grid workers",
        "categories": "case category tree",
        "locate": "which grid covers a point",
    }
    base = str(request.url_for("read_api_index")).rstrip("/")
    return {"links": [{"rel": "data", "href": f"{base}/{n}", "title": t} for n, t in names.items()]}
