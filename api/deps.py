"""Dependencies shared by the routers: a session, the settings, paging and a bbox.

The engine and sessionmaker live on `app.state` (built by the app factory), so
nothing here touches a database at import time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.errors import invalid_parameter
from api.settings import Settings
from gis.cases import ROLES, Actor

DEFAULT_PAGE_SIZE = 100


# Dependencies that never block are `async def`: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_session(request: Request) -> Iterator[Session]:
    """One session per request. Handlers that write commit it themselves, so the
    commit is done before the response goes out; anything uncommitted is rolled back."""
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionmakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def get_page(
    settings: SettingsDep,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            description=f"most items to return (default {DEFAULT_PAGE_SIZE}, "
            "at most the server's page_size_max)",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, description="items to skip")] = 0,
) -> Page:
    """Paging from the query; the upper bound of `limit` is a setting, so it is checked here."""
    top = settings.page_size_max
    if limit is None:
        limit = min(DEFAULT_PAGE_SIZE, top)
    elif limit > top:
        raise invalid_parameter("limit", f"must be ≤ {top}", value=limit)
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(get_page)]

BBox = tuple[float, float, float, float]


def parse_bbox(text: str | None) -> BBox | None:
    """Read `minx,miny,maxx,maxy` in lon/lat degrees; None when absent."""
    if text is None or text.strip() == "":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise invalid_parameter(
            "bbox", f"must be four numbers minx,miny,maxx,maxy (got {len(parts)})", value=text
        )
    try:
        minx, miny, maxx, maxy = (float(p) for p in parts)
    except ValueError:
        raise invalid_parameter(
            "bbox", "must be four numbers minx,miny,maxx,maxy", value=text
        ) from None
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise invalid_parameter("bbox", "must be finite numbers", value=text)
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180):
        raise invalid_parameter("bbox", "longitudes must lie within -180..180", value=text)
    if not (-90 <= miny <= 90 and -90 <= maxy <= 90):
        raise invalid_parameter("bbox", "latitudes must lie within -90..90", value=text)
    if not (minx < maxx and miny < maxy):
        raise invalid_parameter("bbox", "needs minx < maxx and miny < maxy", value=text)
    return (minx, miny, maxx, maxy)


def get_bbox(
    bbox: Annotated[
        str | None,
        Query(
            description="minx,miny,maxx,maxy in EPSG:4326 degrees (lon/lat); keeps features "
            "that intersect the box",
            examples=["123.40,41.79,123.45,41.82"],
        ),
    ] = None,
) -> BBox | None:
    return parse_bbox(bbox)


BBoxDep = Annotated[BBox | None, Depends(get_bbox)]


# People who may act over HTTP; "system" is the scheduler's own role.
HTTP_ROLES = tuple(r for r in ROLES if r != "system")


async def get_actor(
    request: Request,
    x_wangge_role: Annotated[
        str | None,
        Header(description=f"stand-in for auth: the caller's role, one of {', '.join(HTTP_ROLES)}"),
    ] = None,
    x_wangge_user: Annotated[
        str | None, Header(description="stand-in for auth: the caller's name (a worker's code)")
    ] = None,
) -> Actor:
    """Who is calling, from the X-Wangge-Role and X-Wangge-User headers (default: resident).

    A stand-in until the auth issue lands: headers prove nothing, and this dependency
    is the one place to replace with signed tokens. A worker's grids are looked up so
    steps on cases in those grids are allowed (in the thread pool: the only caller
    that touches the database).
    """
    role = (x_wangge_role or "resident").strip().lower()
    if role not in HTTP_ROLES:
        raise invalid_parameter(
            "X-Wangge-Role",
            f"must be one of {', '.join(HTTP_ROLES)}",
            location="header",
            value=x_wangge_role,
        )
    name = (x_wangge_user or "").strip()
    grids: tuple[str, ...] = ()
    if role == "worker" and name:
        from gis.db.cases_repo import worker_grid_codes

        def lookup() -> tuple[str, ...]:
            # Its own short session: the handler's session must stay fresh for `begin()`.
            with request.app.state.sessions() as session:
                return worker_grid_codes(session, name)

        grids = await run_in_threadpool(lookup)
    return Actor(role=role, name=name, grid_codes=grids)


ActorDep = Annotated[Actor, Depends(get_actor)]
