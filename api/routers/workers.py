"""Grid workers (网格员) and other staff, with the grids they own."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from api.deps import ActorDep, PageDep, SessionDep
from api.geojson import paging_links
from api.schemas import WorkerOut, WorkerPage, error_responses
from gis.db import repo
from gis.db.models import WORKER_ROLES

router = APIRouter(prefix="/workers", tags=["workers"])

# Built from the models' tuple so the OpenAPI enum cannot drift from the store.
Role = Literal[WORKER_ROLES]  # type: ignore[valid-type]


@router.get(
    "",
    summary="List workers",
    response_model=WorkerPage,
    responses=error_responses(400),
)
def list_workers(
    request: Request,
    session: SessionDep,
    page: PageDep,
    actor: ActorDep,
    grid: Annotated[str | None, Query(description="keep the workers of this grid code")] = None,
    role: Annotated[Role | None, Query(description="keep one role")] = None,
) -> WorkerPage:
    """Workers ordered by code, with paging counts and links (workers have no geometry).
    A worker sees only themself; dispatchers and planners the workers of their area."""
    workers, total = repo.list_workers(
        session, grid_code=grid, role=role, limit=page.limit, offset=page.offset, actor=actor
    )
    return WorkerPage(
        numberMatched=total,
        numberReturned=len(workers),
        links=paging_links(
            request.url,
            offset=page.offset,
            limit=page.limit,
            number_matched=total,
            media_type="application/json",
        ),
        workers=[WorkerOut(**w) for w in workers],
    )
