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
from starlette.exceptions import HTTPException

from api.errors import invalid_parameter
from api.settings import Settings
from gis.cases import Actor

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


def _principal_cache(request: Request):
    from api.auth import PrincipalCache

    cache = getattr(request.app.state, "principal_cache", None)
    if cache is None:
        cache = request.app.state.principal_cache = PrincipalCache()
    return cache


async def get_actor(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <token> from POST /api/v1/auth/token")
    ] = None,
    x_api_key: Annotated[str | None, Header(description="a system's API key")] = None,
    x_wangge_role: Annotated[
        str | None,
        # Not in the published API: only a development server trusts them.
        Header(
            description="development only (dev_role_headers): the caller's role",
            include_in_schema=False,
        ),
    ] = None,
    x_wangge_user: Annotated[
        str | None,
        # Not in the published API: only a development server trusts them.
        Header(
            description="development only (dev_role_headers): the caller's name",
            include_in_schema=False,
        ),
    ] = None,
) -> Actor:
    """Who is calling: a bearer token, an API key, the browser login cookie, or
    anonymous (see `api.auth` and `api.login`).

    The cookie counts only on GET and HEAD when no header credential is sent, and then
    exactly as the same token in `Authorization: Bearer` would; a write with only the
    cookie is anonymous. A cookie that does not check out answers 401 like a bad
    token, except that a map page sends the browser to log in again and the login
    page itself opens as anonymous.

    Credentials that need the store are checked in the thread pool; a request with
    none answers at once as anonymous.
    """
    from api.auth import ANONYMOUS, resolve_actor
    from api.login import LOGIN_PATH, TOKEN_COOKIE, LoginRequired, wants_login_page

    settings: Settings = request.app.state.settings
    cookie = None
    if not (authorization or x_api_key) and request.method in ("GET", "HEAD"):
        cookie = request.cookies.get(TOKEN_COOKIE) or None
        if cookie:
            authorization = f"Bearer {cookie}"
    if not (authorization or x_api_key or settings.dev_role_headers):
        actor = ANONYMOUS
    else:
        try:
            actor = await run_in_threadpool(
                lambda: resolve_actor(
                    settings=settings,
                    sessions=request.app.state.sessions,
                    cache=_principal_cache(request),
                    authorization=authorization,
                    api_key=x_api_key,
                    role_header=x_wangge_role,
                    user_header=x_wangge_user,
                )
            )
        except HTTPException as exc:
            if cookie is None or exc.status_code != 401:
                raise
            if wants_login_page(request):
                raise LoginRequired(request, clear_cookie=True) from None
            if request.url.path != LOGIN_PATH:
                raise
            actor = ANONYMOUS  # a stale cookie must not lock anyone out of the login form
    request.state.actor = actor
    return actor


ActorDep = Annotated[Actor, Depends(get_actor)]
