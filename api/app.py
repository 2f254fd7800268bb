"""The FastAPI application factory.

`create_app(settings)` builds everything from the settings it is given: the
engine, the migrations and the category seed run once at startup (lifespan), and
nothing happens at import time, so tests and the CLI each get an app on the
store they name.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from api import access
from api.errors import register_error_handlers
from api.protect import Protect
from api.routers import (
    areas,
    buildings,
    cases,
    categories,
    generations,
    imports,
    locate,
    meta,
    open311,
    stations,
    workers,
)
from api.routers import audit as audit_router
from api.routers import auth as auth_router
from api.routers import coverage as coverage_router
from api.routers import login as login_router
from api.routers import maps as maps_router
from api.routers import nearest as nearest_router
from api.routers import plans as plans_router
from api.routers import users as users_router
from api.routers import workload as workload_router
from api.settings import Settings
from gis.db import repo
from gis.db.engine import make_engine, make_sessionmaker, migrate

API_PREFIX = "/api/v1"

DESCRIPTION = """\
**wangge** serves urban grid governance (网格化治理) data: the district → street
(街道) → community (社区) → grid (网格) hierarchy in boundary generations, the
buildings (楼栋) each grid covers, service stations (驿站), grid workers (网格员)
and the case category tree.

- Features are GeoJSON (RFC 7946), coordinates in EPSG:4326 lon/lat, paged with
  `limit`/`offset` and OGC API - Features style `numberMatched`, `numberReturned`
  and `next`/`prev` links.
- `/api/v1/locate` finds the grid covering a point given in WGS84, CGCS2000,
  GCJ-02 (Amap, Tencent), BD-09 (Baidu) or an EPSG code.
- Errors answer `{"error": ..., "message": ...}` with details; invalid
  parameters answer 400 naming the parameter.
"""

TAGS = [
    {"name": "generations", "description": "Boundary generations: staged, active, retired."},
    {"name": "areas", "description": "Districts, streets, communities and grids."},
    {"name": "buildings", "description": "Buildings and the grid each belongs to."},
    {"name": "stations", "description": "Neighbourhood and other service stations (驿站)."},
    {"name": "workers", "description": "Grid workers and the grids they own."},
    {"name": "categories", "description": "The two-level case category tree."},
    {"name": "locate", "description": "Which grid covers a point."},
    {
        "name": "cases",
        "description": "Cases (事件): intake routed to a grid, the closed-loop workflow with "
        "deadlines and escalation, queries and counts.",
    },
    {"name": "imports", "description": "Import GeoJSON, GeoPackage, Shapefile or CSV files."},
    {"name": "service", "description": "Index and health."},
]


def _version() -> str:
    try:
        return metadata.version("wangge")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _prepare_store(app: FastAPI) -> None:
    """Open the store named by the settings, migrate it and seed the categories."""
    settings: Settings = app.state.settings
    engine = make_engine(settings.store_url, timeout_s=settings.db_timeout_s)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        repo.seed_categories(session)
    app.state.engine = engine
    app.state.sessions = sessions


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Migrations block; keep them off the event loop.
    await run_in_threadpool(_prepare_store, app)
    # Blocking work (sync routes, store calls) runs on at most `worker_threads` threads
    # per process. anyio's default of 40 lets a burst start 40 CPU-bound requests that
    # then fight over the GIL: walking-nearest on 2 workers at 200 req/s open loop went
    # from p50 1.1 s / p99 6.3 s (40 threads) to p50 4.7 ms / p99 8.9 ms (8 threads).
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = app.state.settings.worker_threads
    if app.state.freeze_gc:
        # Everything loaded so far (the libraries, the app, the store's metadata: some
        # 200,000 objects) lives as long as the serving process. Frozen, the collector
        # stops walking it on every full collection: one took ~110 ms, a pause that
        # every request in flight waited out.
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        app.state.engine.dispose()


def _openapi_with_400(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with FastAPI's automatic 422 replaced by our 400 answer."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            # Errors are plain JSON even on routes whose answer is GeoJSON.
            for status, response in responses.items():
                content = response.get("content", {})
                if status[0] in "45" and "application/geo+json" in content:
                    content["application/json"] = content.pop("application/geo+json")
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "invalid parameter",
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.setdefault(
        "ErrorOut",
        {
            "title": "ErrorOut",
            "type": "object",
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            "required": ["error", "message"],
        },
    )
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """A wangge app on the store the settings name (environment settings by default).

    `freeze_gc` (for a process that serves only this app, as `wangge serve`) moves
    what exists after startup out of the garbage collector's sight. Apps that come
    and go in one process (tests) must not: frozen cycles are never collected.
    """
    settings = settings or Settings()
    # FastAPIOffline serves Swagger UI's JavaScript and CSS itself: many government
    # networks have no internet, and the stock /docs page loads them from a CDN.
    app = FastAPIOffline(
        title="wangge",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url="/docs",
        redoc_url=None,
        lifespan=_lifespan,
        # Every route passes the access rules of api/access.py (roles, then scope).
        dependencies=[Depends(access.enforce)],
    )
    app.state.settings = settings
    app.state.freeze_gc = freeze_gc
    register_error_handlers(app)
    # Rate, body-size and bbox limits, Idempotency-Key, 503 while the store is away.
    app.add_middleware(Protect, settings=settings)
    app.include_router(meta.router)
    # Before the stations router: /stations/nearest must not be read as a station code.
    app.include_router(nearest_router.router, prefix=API_PREFIX)
    app.include_router(coverage_router.router, prefix=API_PREFIX)  # /coverage, /stations/siting
    for module in (generations, areas, buildings, stations, workers, categories, locate, imports):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(cases.router, prefix=API_PREFIX)
    for module in (auth_router, users_router, audit_router):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(workload_router.router, prefix=API_PREFIX)  # /workload
    app.include_router(plans_router.router, prefix=API_PREFIX)  # /plans
    app.include_router(open311.router)  # /open311/v2, errors in the GeoReport shape
    app.include_router(maps_router.router)  # HTML maps and their Leaflet files, /maps
    app.include_router(login_router.router)  # the browser login form, /login and /logout
    app.openapi = lambda: _openapi_with_400(app)  # type: ignore[method-assign]
    return app
