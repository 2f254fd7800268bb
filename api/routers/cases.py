"""Cases (事件): intake with routing, the closed-loop workflow steps, queries and counts.

Who acts comes from `ActorDep` (a token, an API key, or anonymous); the repository
keeps each caller to their reach (a case outside it is a 404). Residents and
anonymous callers never see a reporter's contact details; staff do.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import sessionmaker

from api.deps import ActorDep, BBoxDep, PageDep, SessionDep, SessionmakerDep, SettingsDep
from api.errors import invalid_parameter
from api.geojson import GEOJSON_MEDIA_TYPE, GeoJSONResponse, paging_links
from api.protect import holds_idempotency_key
from api.routers.locate import _is_geographic, check_lon_lat
from api.schemas import error_responses
from gis import cases as rules
from gis.cases import Actor
from gis.crs import NAMED_CRS, parse_crs, point_to_storage
from gis.db import cases_repo
from gis.domain import CASE_SOURCES

router = APIRouter(prefix="/cases", tags=["cases"])

#: Intake transactions a worker process runs at once. On a small machine more only
#: adds contention (the GIL, database backends, context switches): a burst then
#: degrades every request instead of queueing the excess in arrival order.
INTAKE_THREADS = 4
_limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _intake_limiter() -> anyio.CapacityLimiter:
    """The intake limiter of the running event loop (tests run servers on several)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(INTAKE_THREADS)
    return limiter


#: Fields only staff may see: the reporter's contact details.
PRIVATE_FIELDS = ("reporter_name", "reporter_phone", "reporter_email")
STAFF_ROLES = ("worker", "dispatcher", "department", "admin")


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100)
    phone: str | None = Field(None, max_length=30)
    email: str | None = Field(None, max_length=200)


class CaseIn(BaseModel):
    """A report of a problem at a point."""

    model_config = ConfigDict(extra="forbid")

    category: str = Field(
        min_length=1, max_length=20, description="category subclass code", examples=["0101"]
    )
    lon: float = Field(allow_inf_nan=False, description="longitude", examples=[123.405])
    lat: float = Field(allow_inf_nan=False, description="latitude", examples=[41.807])
    crs: str = Field(
        "wgs84",
        description=f"coordinate system of lon/lat: {', '.join(NAMED_CRS)} or EPSG:<code>",
    )
    description: str | None = Field(None, max_length=rules.DESCRIPTION_MAX)
    source: Literal[CASE_SOURCES] = "resident"  # type: ignore[valid-type]
    contact: ContactIn | None = Field(None, description="reporter contact; never public")
    photo_url: str | None = Field(None, max_length=500)


class StepIn(BaseModel):
    """Parameters a step may need: dispatch → worker_code, evaluate → rating (1–5),
    duplicate → duplicate_of (id or code), reject → reason; any step takes a note."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=rules.DESCRIPTION_MAX)
    worker_code: str | None = Field(None, max_length=40)
    rating: int | None = None
    duplicate_of: int | str | None = None
    reason: str | None = Field(None, max_length=rules.DESCRIPTION_MAX)


def present(case: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """The case as this caller may see it: contact details only for staff."""
    if actor.role in STAFF_ROLES:
        return case
    return {k: v for k, v in case.items() if k not in PRIVATE_FIELDS}


@router.post(
    "",
    summary="Report a case",
    status_code=201,
    responses=error_responses(400, 404),
)
async def create_case(
    body: CaseIn, sessions: SessionmakerDep, settings: SettingsDep, actor: ActorDep
) -> JSONResponse:
    """File a problem at a point. It is routed at once to the grid covering it
    (lowest code on a shared edge or vertex; the nearest grid, flagged
    `near_outside`, when within `near_outside_m` of one; else the `unrouted` queue for
    a dispatcher), given the grid's worker and the category's deadline.

    The answer lists up to 5 `possible_duplicates`: open cases of the same category
    nearby and recent, which the reporter may follow instead. Bad input answers 400
    naming the field, and nothing is written.
    """
    input_crs = parse_crs(body.crs)
    check_lon_lat(body.lon, body.lat, bounded=_is_geographic(input_crs))
    x, y = point_to_storage(body.lon, body.lat, input_crs)
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        raise invalid_parameter(
            "lon", f"the point does not convert to a place on Earth from {input_crs}",
            location="body", value=body.lon,
        )  # fmt: skip
    contact = body.contact or ContactIn()

    def write() -> dict[str, Any]:
        return file_case(
            sessions,
            category_code=body.category,
            lon=x,
            lat=y,
            description=body.description,
            source=body.source,
            reporter_name=contact.name,
            reporter_phone=contact.phone,
            reporter_email=contact.email,
            photo_url=body.photo_url,
            actor=actor,
            # A signed-in reporter may follow the case later; anonymous ones cannot.
            reporter_user=actor.name if actor.role != "anonymous" and actor.name else None,
            near_outside_m=settings.near_outside_m,
            duplicate_radius_m=settings.duplicate_radius_m,
            duplicate_window_days=settings.duplicate_window_days,
            with_chain=True,
        )

    # At most INTAKE_THREADS intakes at once per process; the rest wait here, in order.
    case = await anyio.to_thread.run_sync(write, limiter=_intake_limiter())
    return JSONResponse(present(case, actor), status_code=201)


def file_case(sessions: sessionmaker, **fields: Any) -> dict[str, Any]:
    """One intake in a session of its own (`cases_repo.create_case`'s fields).

    Unkeyed on PostGIS it skips BEGIN/COMMIT: the intake's one write statement is its
    whole transaction, two round trips fewer. A request holding an Idempotency-Key
    keeps the transaction, so that the key's mark (a commit hook, api/protect.py)
    commits together with the case or not at all.
    """
    with sessions() as session, session.begin():
        if not holds_idempotency_key():
            cases_repo.intake_without_transaction(session)
        return cases_repo.create_case(session, **fields)


def _statuses(status: str | None) -> list[str] | None:
    if not status:
        return None
    wanted = [s.strip() for s in status.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in rules.STATUSES]
    if unknown:
        raise invalid_parameter(
            "status", f"must be among {', '.join(rules.STATUSES)}", value=status
        )
    return wanted


def _feature(case: dict[str, Any]) -> dict[str, Any]:
    props = {k: v for k, v in case.items() if k not in ("lon", "lat")}
    return {
        "type": "Feature",
        "id": case["code"],
        "geometry": {"type": "Point", "coordinates": [case["lon"], case["lat"]]},
        "properties": props,
    }


@router.get(
    "",
    summary="List cases",
    responses={
        200: {"content": {GEOJSON_MEDIA_TYPE: {}}, "description": "cases, JSON or GeoJSON"},
        **error_responses(400),
    },
)
def list_cases(
    request: Request,
    session: SessionDep,
    page: PageDep,
    bbox: BBoxDep,
    actor: ActorDep,
    grid: Annotated[str | None, Query(description="grid code")] = None,
    community: Annotated[str | None, Query(description="community code")] = None,
    street: Annotated[str | None, Query(description="street code")] = None,
    status: Annotated[
        str | None, Query(description="a status, or several separated by commas")
    ] = None,
    category: Annotated[str | None, Query(description="category subclass code")] = None,
    since: Annotated[datetime | None, Query(description="reported at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="reported before (ISO 8601)")] = None,
    overdue: Annotated[
        bool | None, Query(description="true: past the deadline and still open")
    ] = None,
    route_flag: Annotated[
        Literal["inside", "edge_rule", "near_outside", "unrouted"] | None,
        Query(description="how the case was routed; unrouted: the dispatcher's queue"),
    ] = None,
    format: Annotated[Literal["json", "geojson"], Query(description="answer format")] = "json",
) -> JSONResponse:
    """Cases matching every filter, newest first, paged (`numberMatched`, `links`).

    `format=geojson` answers a FeatureCollection of points."""
    if since and until and since >= until:
        raise invalid_parameter("until", "must be after since", value=str(until))
    found, total = cases_repo.list_cases(
        session,
        actor=actor,
        grid_code=grid,
        community_code=community,
        street_code=street,
        statuses=_statuses(status),
        category_code=category,
        since=since,
        until=until,
        bbox=bbox,
        overdue=overdue,
        route_flag=route_flag,
        limit=page.limit,
        offset=page.offset,
    )
    shown = [present(c, actor) for c in found]
    media = GEOJSON_MEDIA_TYPE if format == "geojson" else "application/json"
    paging = {
        "numberMatched": total,
        "numberReturned": len(shown),
        "links": paging_links(
            request.url,
            offset=page.offset,
            limit=page.limit,
            number_matched=total,
            media_type=media,
        ),
    }
    if format == "geojson":
        return GeoJSONResponse(
            {"type": "FeatureCollection", **paging, "features": [_feature(c) for c in shown]}
        )
    return JSONResponse({**paging, "cases": shown})


@router.get("/stats", summary="Case counts per area", responses=error_responses(400))
def case_stats(
    session: SessionDep,
    actor: ActorDep,
    level: Annotated[
        Literal["grid", "community", "street"], Query(description="count per area of this level")
    ] = "grid",
    parent: Annotated[
        str | None,
        Query(description="only the areas under this code (a community for level=grid, …)"),
    ] = None,
) -> dict[str, Any]:
    """For dashboards: per area, the number of cases in total, by status and by category,
    counting only the cases within the caller's reach. Unrouted cases count under code
    null."""
    return {"level": level, "parent": parent, "areas": cases_repo.case_stats(
        session, level=level, parent=parent, actor=actor
    )}  # fmt: skip


@router.get("/{ref}", summary="One case with its history", responses=error_responses(404))
def get_case(ref: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """A case by id or code, with its grid chain, its event history (who, when, from,
    to, note) and the actions its status allows."""
    case = cases_repo.get_case(session, ref, actor)
    case["chain"] = cases_repo.case_chain(session, case)
    case["history"] = cases_repo.case_history(session, case["id"])
    case["allowed_actions"] = rules.allowed_actions(case["status"], case["escalation_level"])
    return present(case, actor)


@router.post(
    "/{ref}/{action}",
    summary="Take a workflow step",
    responses=error_responses(400, 403, 404, 409),
)
def take_step(
    ref: str,
    action: str,
    sessions: SessionmakerDep,
    actor: ActorDep,
    body: StepIn | None = None,
) -> dict[str, Any]:
    """One step of the closed loop: dispatch, accept, start, resolve, evaluate, close,
    return, escalate, duplicate or reject.

    An action the case's status does not allow answers 409 with `allowed`; a role
    that may not take it answers 403. Each step is appended to the case's history.
    """
    body = body or StepIn()
    with sessions() as session, session.begin():
        case = cases_repo.transition(
            session,
            ref,
            action,
            actor,
            note=body.note,
            worker_code=body.worker_code,
            rating=body.rating,
            duplicate_of=body.duplicate_of,
            reason=body.reason,
        )
        case["allowed_actions"] = rules.allowed_actions(case["status"], case["escalation_level"])
    return present(case, actor)
