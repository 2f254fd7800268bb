"""The audit log, for admins: who did what to which object, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import PageDep, SessionDep
from api.errors import invalid_parameter
from api.geojson import paging_links
from api.schemas import error_responses
from gis.db import audit_repo

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", summary="The audit log (admins)", responses=error_responses(400))
def read_audit(
    request: Request,
    session: SessionDep,
    page: PageDep,
    action: Annotated[
        str | None, Query(max_length=40, description="an action or its prefix, e.g. case.")
    ] = None,
    object_type: Annotated[str | None, Query(max_length=20, description="case, user, …")] = None,
    object_id: Annotated[str | None, Query(max_length=100)] = None,
    actor: Annotated[
        str | None, Query(max_length=100, description="who acted, e.g. admin:alice")
    ] = None,
    role: Annotated[str | None, Query(max_length=20)] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
) -> dict[str, Any]:
    """Every write leaves a row: case intake and steps, imports, generation switches,
    plan applications, user and API key changes. Paged with `limit` and `offset`."""
    if since and until and since >= until:
        raise invalid_parameter("until", "must be after since", value=str(until))
    rows, total = audit_repo.entries_page(
        session,
        action=action,
        object_type=object_type,
        object_id=object_id,
        actor=actor,
        role=role,
        since=since,
        until=until,
        limit=page.limit,
        offset=page.offset,
    )
    return {
        "numberMatched": total,
        "numberReturned": len(rows),
        "links": paging_links(
            request.url,
            offset=page.offset,
            limit=page.limit,
            number_matched=total,
            media_type="application/json",
        ),
        "entries": rows,
    }
