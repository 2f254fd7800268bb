"""The service's front page, its health probe and the index of the v1 API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["service"])


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
        ],
    }


@router.get("/healthz", summary="Liveness probe")
def read_health() -> dict[str, str]:
    """Answers while the process serves requests; it does not query the store."""
    return {"status": "ok"}


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
